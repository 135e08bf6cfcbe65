"""DeepSpeed's rules (and the arithmetic ones) as predicates: a plan passes or gets a Rejected
value naming the rule and the operands.  Each rule cites where DeepSpeed enforces it.

A rule is a pair: ``fails(spec, p)``, which takes a Plan or a PlanBatch (then it returns a mask),
and ``why(spec, p)``, the one-line reason for one plan.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from planner.plan.strategy import PRECISIONS, Plan, PlanBatch
from planner.spec.spec import Spec
from planner.spec.units import Optimizer, ZeroStage

CPU_OPTIMIZERS = (Optimizer.ADAM, Optimizer.ADAMW)


@dataclass(frozen=True)
class Rejected:
    plan: Plan
    rule: str  #: short, stable key used to count rejections by reason
    reason: str  #: one line with the operands


@dataclass(frozen=True)
class Rule:
    key: str
    fails: Callable  #: (spec, Plan | PlanBatch) -> bool | mask
    why: Callable[[Spec, Plan], str]


def _world_size(spec, p):
    return p.world_size != spec.cluster.world_size


def _tp_heads(spec, p):
    """Megatron / AutoTP shard whole heads (and the MLP): tp divides them."""
    m = spec.model
    return (m.n_heads % p.tp != 0) | (m.n_kv_heads % p.tp != 0) | (m.d_ff % p.tp != 0)


def _tp_heads_why(spec, p):
    m = spec.model
    return (f"tp ({p.tp}) does not divide n_heads ({m.n_heads}), n_kv_heads ({m.n_kv_heads}) "
            f"and d_ff ({m.d_ff})")


def _tp_node(spec, p):
    """Tensor parallelism all-reduces twice per layer: it is kept inside one NVLink domain."""
    g = spec.cluster.gpus_per_node
    return (p.tp > g) | (g % p.tp != 0)


def _pipeline_zero(spec, p):
    """deepspeed/runtime/pipe/engine.py:76: 'ZeRO-2 and ZeRO-3 are incompatible with pipeline
    parallelism'."""
    return (p.pp > 1) & (p.zero >= ZeroStage.GRADIENTS)


def _pipeline_offload(spec, p):
    """The pipeline engine runs ZeRO-1 at most and nothing in it drives offload (pipe/engine.py
    has no offload path); we do not emit the combination."""
    return (p.pp > 1) & p.optimizer_off_gpu


def _offload_stage(spec, p):
    """offload_optimizer needs ZeRO >= 1; parameter and NVMe offload exist only in ZeRO-3
    (zero/config.py; stage_1_and_2.py:220 silently turns NVMe into CPU offload)."""
    zero0 = p.optimizer_off_gpu & (p.zero == ZeroStage.NONE)
    needs3 = (p.params_off_gpu | p.uses_nvme) & (p.zero != ZeroStage.PARAMETERS)
    return zero0 | needs3


def _offload_stage_why(spec, p):
    if p.zero == ZeroStage.NONE and not (p.params_off_gpu or p.uses_nvme):
        return f"offload ({p.offload.value}) needs ZeRO 1-3, not 0"
    return f"offload ({p.offload.value}) needs ZeRO-3, not {int(p.zero)}"


def _offload_optimizer(spec, p):
    """engine.py:2384-2399: offload swaps in DeepSpeed's CPU optimizers (Adam, AdamW, Adagrad,
    Lion); another optimizer with offload raises ZeRORuntimeException."""
    return p.optimizer_off_gpu & (spec.training.optimizer not in CPU_OPTIMIZERS)


def _precision(spec, p):
    supported = np.array([spec.cluster.gpu.supports(p) for p in PRECISIONS])
    if isinstance(p, PlanBatch):
        return ~supported[p.precision]
    return not spec.cluster.gpu.supports(p.precision)


def _batch(spec, p):
    """DeepSpeed: train_batch_size = micro_batch * gradient_accumulation_steps * dp."""
    return spec.global_batch_sequences % (p.dp * p.micro_batch) != 0


def _sequence_parallel(spec, p):
    return p.sequence_parallel & (p.tp == 1)


#: checked in this order; the first failing rule is the reason
RULES: tuple[Rule, ...] = (
    Rule("world size", _world_size, lambda s, p: (
        f"dp({p.dp}) * tp({p.tp}) * pp({p.pp}) != world size ({s.cluster.world_size})")),
    Rule("tp vs heads", _tp_heads, _tp_heads_why),
    Rule("tp beyond node", _tp_node, lambda s, p: (
        f"tp ({p.tp}) does not fit inside a node of {s.cluster.gpus_per_node} GPUs")),
    Rule("pp vs layers", lambda s, p: p.pp > s.model.n_layers, lambda s, p: (
        f"pp ({p.pp}) exceeds n_layers ({s.model.n_layers})")),
    Rule("pipeline needs ZeRO 0/1", _pipeline_zero, lambda s, p: (
        f"pipeline parallelism (pp={p.pp}) needs ZeRO 0 or 1, not {int(p.zero)}")),
    Rule("pipeline with offload", _pipeline_offload, lambda s, p: (
        f"pipeline parallelism (pp={p.pp}) does not combine with offload ({p.offload.value})")),
    Rule("offload vs ZeRO stage", _offload_stage, _offload_stage_why),
    Rule("offload vs optimizer", _offload_optimizer, lambda s, p: (
        f"offload ({p.offload.value}) needs a DeepSpeed CPU optimizer (adam, adamw), not "
        f"{s.training.optimizer.value}")),
    Rule("precision unsupported", _precision, lambda s, p: (
        f"{s.cluster.gpu.name} has no {p.precision.value} support")),
    Rule("batch not divisible", _batch, lambda s, p: (
        f"global batch ({s.global_batch_sequences} sequences) is not divisible by dp ({p.dp}) * "
        f"micro_batch ({p.micro_batch})")),
    Rule("sequence parallel without tp", _sequence_parallel,
         lambda s, p: "sequence parallelism needs tp > 1"),
)


def check(spec: Spec, plan: Plan) -> Optional[Rejected]:
    for rule in RULES:
        if rule.fails(spec, plan):
            return Rejected(plan, rule.key, rule.why(spec, plan))
    return None


def first_failure(spec: Spec, plans: PlanBatch) -> np.ndarray:
    """Index into RULES of the first rule each plan fails, -1 where it passes them all."""
    out = np.full(len(plans), -1)
    for i, rule in enumerate(RULES):
        fails = np.broadcast_to(rule.fails(spec, plans), out.shape)
        out = np.where((out < 0) & fails, i, out)
    return out
