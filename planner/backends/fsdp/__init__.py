"""PyTorch FSDP (FSDP2 fully_shard per block, as torchtitan applies it; FSDP1 FULL_SHARD, as
llm-foundry does) as the planner sees it: plan-only.  Its rules (rules.py), its memory mechanisms
and moments (memory.py) and its host bookkeeping (timing.py: FSDP1's per wrapped unit, FSDP2's per
parameter) are its own.  The rest of its step time is priced with DeepSpeed ZeRO-3's terms
(planner/backends/deepspeed/timing.py) under block-granular gathers: its all-gathers and
reduce-scatters per block and micro-batch, overlapped with compute.  FSDP's fp32 reduce-scatter
is not yet priced (docs/time-model.md)."""
from dataclasses import replace

from planner.backends.deepspeed import DEEPSPEED
from planner.backends.fsdp import memory, rules, timing

FSDP = replace(
    DEEPSPEED,
    name="fsdp",
    rules=rules.RULES,
    executor_rules=rules.EXECUTOR_RULES,
    stage_moments=memory.stage_moments,
    host_offload_bytes=memory.host_offload_bytes,
    host_us_per_micro_batch=timing.host_us_per_micro_batch,
)
