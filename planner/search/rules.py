"""The rules every plan must pass whatever runs it (degrees against the model and the cluster, the
GPU's precisions, the batch arithmetic), and how they combine with a backend's own
(planner/backends/): a plan passes or gets a Rejected value naming the rule and the operands.

A rule is a pair (planner/plan/rule.py): ``fails(spec, p)``, which takes a Plan or a PlanBatch
(then it returns a mask), and ``why(spec, p)``, the one-line reason for one plan.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from planner.backends.base import Backend
from planner.backends.deepspeed import DEEPSPEED
from planner.backends.registry import backend_for
from planner.plan.rule import Rejected, Rule, check_rules, first_failing
from planner.plan.strategy import PRECISIONS, Plan, PlanBatch, where
from planner.spec.spec import Spec
from planner.spec.units import AttentionKernel, ContextParallel


def _tp_heads(spec, p):
    """Megatron-style tensor parallelism shards whole heads, kv-heads and the MLP: tp divides
    them."""
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


def _world_size(spec, p):
    return p.world_size != spec.cluster.world_size


def _ep(spec, p):
    """Expert parallelism splits each MoE layer's experts over ep of the dp ranks: ep divides the
    experts and dp (DeepSpeed-MoE asserts both); a dense model has ep 1."""
    m = spec.model
    if not m.moe_layers:
        return p.ep != 1
    return (m.moe.experts % p.ep != 0) | (p.dp % p.ep != 0)


def _ep_why(spec, p):
    m = spec.model
    if not m.moe_layers:
        return f"ep ({p.ep}) needs a mixture-of-experts model (model.moe)"
    return f"ep ({p.ep}) must divide the experts ({m.moe.experts}) and dp ({p.dp})"


def _cp_sequence(spec, p):
    """Each cp rank holds an equal slice of every sequence; ring attention balances causality
    over 2·cp chunks (Megatron-Core / Transformer Engine: rank i holds chunks i and
    2·cp - 1 - i), so its sequence divides by 2·cp."""
    chunks = p.cp * where(p.is_cp_kind(ContextParallel.RING), 2, 1)
    return (p.cp > 1) & (spec.model.seq_len % chunks != 0)


def _cp_sequence_why(spec, p):
    ring = p.cp_kind is ContextParallel.RING
    need = f"2·cp ({2 * p.cp}; ring attention balances 2·cp chunks)" if ring else f"cp ({p.cp})"
    return f"seq_len ({spec.model.seq_len}) is not divisible by {need}"


def _ulysses_heads(spec, p):
    """DeepSpeed-Ulysses turns the sequence split into a head split: the heads and kv-heads a
    tp rank holds divide by cp (deepspeed/sequence/layer.py scatters the head dimension)."""
    m = spec.model
    heads, kv = m.n_heads // p.tp, m.n_kv_heads // p.tp
    return (p.cp > 1) & p.is_cp_kind(ContextParallel.ULYSSES) & ((heads % p.cp != 0)
                                                               | (kv % p.cp != 0))


def _ulysses_heads_why(spec, p):
    m = spec.model
    return (f"Ulysses cp ({p.cp}) must divide the heads ({m.n_heads // p.tp}) and kv-heads "
            f"({m.n_kv_heads // p.tp}) of a tp rank; ring attention does not need it")


def _ring_eager(spec, p):
    """Ring attention is blockwise online softmax (fused kernels); eager attention's
    materialised s x s softmax has no ring form."""
    return (p.cp > 1) & p.is_cp_kind(ContextParallel.RING) & (
        spec.model.attention is AttentionKernel.EAGER)


def _cp_moe(spec, p):
    return (p.cp > 1) & bool(spec.model.moe_layers)


#: degrees against the model and the cluster: checked first
DEGREE_RULES: tuple[Rule, ...] = (
    Rule("world size", _world_size, lambda s, p: p.degrees.mismatch(s.cluster.world_size)),
    Rule("tp vs heads", _tp_heads, _tp_heads_why),
    Rule("tp beyond node", _tp_node, lambda s, p: (
        f"tp ({p.tp}) does not fit inside a node of {s.cluster.gpus_per_node} GPUs")),
    Rule("pp vs layers", lambda s, p: p.pp > s.model.n_layers, lambda s, p: (
        f"pp ({p.pp}) exceeds n_layers ({s.model.n_layers})")),
    Rule("ep vs experts", _ep, _ep_why),
    Rule("cp vs sequence", _cp_sequence, _cp_sequence_why),
    Rule("Ulysses vs heads", _ulysses_heads, _ulysses_heads_why),
    Rule("ring needs fused attention", _ring_eager, lambda s, p: (
        "model.attention: ring attention needs a fused kernel (flash), not eager")),
    Rule("cp with experts", _cp_moe, lambda s, p: (
        f"cp ({p.cp}) with mixture-of-experts layers is not modelled (tokens per rank, "
        f"all-to-alls of both)")),
)

#: the hardware's precisions and the batch arithmetic: checked after the backend's rules
RESOURCE_RULES: tuple[Rule, ...] = (
    Rule("precision unsupported", _precision, lambda s, p: (
        f"{s.cluster.gpu.name} has no {p.precision.value} support")),
    Rule("batch not divisible", _batch, lambda s, p: (
        f"global batch ({s.global_batch_sequences} sequences) is not divisible by dp ({p.dp}) * "
        f"micro_batch ({p.micro_batch})")),
    Rule("sequence parallel without tp", _sequence_parallel,
         lambda s, p: "sequence parallelism needs tp > 1"),
)


def rules_for(backend: Backend = DEEPSPEED, *, executable: bool = False) -> tuple[Rule, ...]:
    """Every rule a plan must pass, in the order the first failure is reported; with
    ``executable`` the backend's executor rules too (what ``plan --execute`` may pick)."""
    return (DEGREE_RULES + backend.rules + RESOURCE_RULES
            + (backend.executor_rules if executable else ()))


#: the rules of the default backend, for plain planning
RULES = rules_for()


def check(spec: Spec, plan: Plan, backend: Optional[Backend] = None, *,
          executable: bool = False) -> Optional[Rejected]:
    """The first rule ``plan`` fails under ``backend`` (default: the spec's runtime.backend)."""
    return check_rules(rules_for(backend or backend_for(spec), executable=executable), spec,
                       plan)


def first_failure(spec: Spec, plans: PlanBatch, rules: tuple[Rule, ...] = RULES) -> np.ndarray:
    """Index into ``rules`` of the first rule each plan fails, -1 where it passes them all."""
    return first_failing(rules, spec, plans)
