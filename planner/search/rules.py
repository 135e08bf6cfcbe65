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
from planner.plan.rule import Rejected, Rule, check_rules, first_failing
from planner.plan.strategy import PRECISIONS, Plan, PlanBatch
from planner.spec.spec import Spec


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


#: degrees against the model and the cluster: checked first
DEGREE_RULES: tuple[Rule, ...] = (
    Rule("world size", _world_size, lambda s, p: p.degrees.mismatch(s.cluster.world_size)),
    Rule("tp vs heads", _tp_heads, _tp_heads_why),
    Rule("tp beyond node", _tp_node, lambda s, p: (
        f"tp ({p.tp}) does not fit inside a node of {s.cluster.gpus_per_node} GPUs")),
    Rule("pp vs layers", lambda s, p: p.pp > s.model.n_layers, lambda s, p: (
        f"pp ({p.pp}) exceeds n_layers ({s.model.n_layers})")),
    Rule("ep vs experts", _ep, _ep_why),
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


def check(spec: Spec, plan: Plan, backend: Backend = DEEPSPEED, *,
          executable: bool = False) -> Optional[Rejected]:
    return check_rules(rules_for(backend, executable=executable), spec, plan)


def first_failure(spec: Spec, plans: PlanBatch, rules: tuple[Rule, ...] = RULES) -> np.ndarray:
    """Index into ``rules`` of the first rule each plan fails, -1 where it passes them all."""
    return first_failing(rules, spec, plans)
