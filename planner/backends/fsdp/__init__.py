"""PyTorch FSDP (FSDP2 fully_shard per block, as torchtitan applies it; FSDP1 FULL_SHARD, as
llm-foundry does) as the planner sees it: plan-only.  Its rules (rules.py) and its memory
mechanisms and moments (memory.py) are its own.  Its step time is priced with DeepSpeed ZeRO-3's
terms (planner/backends/deepspeed/timing.py) under block-granular gathers, the mapping the
published FSDP runs were fitted with: its all-gathers and reduce-scatters per block and micro-batch
overlapped with compute.  FSDP's own host costs and fp32 reduce-scatter are not yet priced
(docs/time-model.md)."""
from dataclasses import replace

from planner.backends.deepspeed import DEEPSPEED
from planner.backends.fsdp import memory, rules

FSDP = replace(
    DEEPSPEED,
    name="fsdp",
    rules=rules.RULES,
    executor_rules=rules.EXECUTOR_RULES,
    stage_moments=memory.stage_moments,
    host_offload_bytes=memory.host_offload_bytes,
)
