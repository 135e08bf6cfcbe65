"""What PyTorch FSDP runs, as this planner models it, and what this project's executor cannot run
with it (everything: the executor drives DeepSpeed).  Same form as planner/search/rules.py."""
from __future__ import annotations

from planner.backends.base import plan_only
from planner.plan.rule import Rule
from planner.spec.units import ZeroStage


def _zero(spec, p):
    """FULL_SHARD (fully_shard) is ZeRO-3's role; DDP, SHARD_GRAD_OP and hybrid sharding are not
    modelled under this backend."""
    return p.zero != ZeroStage.PARAMETERS


def _offload(spec, p):
    """FSDP's CPUOffloadPolicy is not modelled."""
    return p.optimizer_off_gpu | p.params_off_gpu


def _moe(spec, p):
    """Expert parallelism under FSDP is not modelled."""
    return bool(spec.model.moe_layers) & (p.dp > 0)


RULES: tuple[Rule, ...] = (
    Rule("fsdp ZeRO stage", _zero, lambda s, p: (
        f"zero {int(p.zero)} under runtime.backend fsdp: FSDP is modelled as FULL_SHARD "
        f"(fully_shard), zero 3")),
    Rule("fsdp offload", _offload, lambda s, p: (
        f"offload ({p.offload.value}) under runtime.backend fsdp: FSDP's CPU offload is not "
        f"modelled")),
    Rule("fsdp mixture-of-experts", _moe, lambda s, p: (
        "mixture-of-experts under runtime.backend fsdp: expert parallelism with FSDP is not "
        "modelled")),
)

EXECUTOR_RULES: tuple[Rule, ...] = plan_only("fsdp")
