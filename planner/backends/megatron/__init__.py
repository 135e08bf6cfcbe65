"""Megatron-Core (with its distributed optimizer and Transformer Engine) as the planner sees it:
plan-only, for runs made with Megatron-LM, NeMo or Megatron-Bridge.  Its rules (rules.py), memory
mechanisms and moments (memory.py), data-parallel traffic and optimizer (timing.py)."""
from planner.backends.base import Backend
from planner.backends.megatron import memory, rules, timing

MEGATRON = Backend(
    name="megatron",
    rules=rules.RULES,
    executor_rules=rules.EXECUTOR_RULES,
    stage_moments=memory.stage_moments,
    host_offload_bytes=memory.host_offload_bytes,
    dp_traffic_seconds=timing.dp_traffic_seconds,
    overlaps_dp=timing.overlaps_dp,
    host_us_per_micro_batch=timing.host_us_per_micro_batch,
    optimizer_seconds=timing.optimizer_seconds,
    offload_seconds=timing.offload_seconds,
)
