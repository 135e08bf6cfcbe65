"""What Megatron-Core runs, as this planner models it, and what this project's executor cannot
run with it (everything: the executor drives DeepSpeed).  Same form as planner/search/rules.py."""
from __future__ import annotations

from planner.backends.base import plan_only
from planner.plan.rule import Rule
from planner.spec.units import ZeroStage


def _zero(spec, p):
    """Megatron-Core shards the optimizer (its distributed optimizer, zero 1) or nothing (zero 0);
    ZeRO-2 and ZeRO-3 are DeepSpeed's stages (Megatron FSDP is not modelled)."""
    return p.zero >= ZeroStage.GRADIENTS


def _offload(spec, p):
    """Megatron-Core's optimizer CPU offload is not modelled."""
    return p.optimizer_off_gpu | p.params_off_gpu


RULES: tuple[Rule, ...] = (
    Rule("megatron ZeRO stage", _zero, lambda s, p: (
        f"zero {int(p.zero)} under runtime.backend megatron: Megatron-Core runs zero 0 (plain "
        f"DDP) or 1 (its distributed optimizer); stages 2-3 are DeepSpeed's")),
    Rule("megatron offload", _offload, lambda s, p: (
        f"offload ({p.offload.value}) under runtime.backend megatron: Megatron-Core's optimizer "
        f"offload is not modelled")),
)

EXECUTOR_RULES: tuple[Rule, ...] = plan_only("megatron")
