"""DeepSpeed 0.19.8 as the planner sees it: its rules (rules.py), its memory mechanisms and the
moments of its step (memory.py), its data-parallel traffic, host bookkeeping and optimizer
(timing.py)."""
from planner.backends.base import Backend
from planner.backends.deepspeed import memory, rules, timing

DEEPSPEED = Backend(
    name="deepspeed",
    rules=rules.RULES,
    executor_rules=rules.EXECUTOR_RULES,
    stage_moments=memory.stage_moments,
    host_offload_bytes=memory.host_offload_bytes,
    dp_traffic_seconds=timing.dp_traffic_seconds,
    overlaps_dp=timing.overlap_on,
    host_us_per_micro_batch=timing.host_us_per_micro_batch,
    optimizer_seconds=timing.optimizer_seconds,
    offload_seconds=timing.offload_seconds,
)
