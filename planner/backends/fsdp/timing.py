"""PyTorch FSDP's own share of the step time: its host bookkeeping per micro-batch, which differs
between its two APIs.  Its traffic, optimizer and (refused) offload are DeepSpeed ZeRO-3's terms
(planner/backends/fsdp/__init__.py)."""
from __future__ import annotations

from planner.backends.deepspeed.timing import zero3_fetch_units
from planner.model.shape import Stage, tensor_stats
from planner.plan.strategy import Plan
from planner.spec.spec import Spec


def host_us_per_micro_batch(spec: Spec, plan: Plan, stage: Stage):
    """FSDP's host work per micro-batch, microseconds, each step of it priced as one DeepSpeed
    ZeRO-3 fetch/release (runtime.zero3_module_us) per pass.

    FSDP1 (FullyShardedDataParallel) flattens each wrapped unit's parameters into one
    FlatParameter: its pre-forward unshard, post-forward reshard, pre-backward unshard and
    post-backward reduce-scatter run once per unit (a block, plus the root: embedding, final
    norm, head), whatever the unit holds.  FSDP2 (fully_shard) keeps every parameter a DTensor:
    its all-gather copies each parameter's shard in and views each out, and its reduce-scatter
    copies each gradient in, so the host works per parameter tensor, through DTensor's own
    dispatch (FSDP2's author on pytorch/pytorch#134191; FSDP2's pre-forward at about 1 ms per
    module in pytorch/pytorch#173680; its forward slower than FSDP1's in pytorch/torchtitan#735).
    bench/cv_alternatives.py scores both counts and the alternatives on the published runs."""
    if (spec.runtime.fsdp_version or 2) == 1:
        steps = zero3_fetch_units(spec, stage, 0)
    else:
        steps = tensor_stats(spec.model, stage, plan.tp, 0).count
    return steps * 2 * spec.runtime.zero3_module_us
