"""The seam between the planner and an execution backend.

A backend states, as data the search applies (planner/search/rules.py):
- ``rules``: plans the framework itself refuses (DeepSpeed raises on pipeline + ZeRO-2); always
  rejected, counted by reason like any other rule;
- ``executor_rules``: plans this project's executor cannot yet run with the backend (a layout it
  does not build); rejected for ``plan --execute``, marked in the plain report;
and names the mechanisms the estimators price:
- ``stage_moments``: the moments of a step on one pipeline stage, each a MemoryBreakdown of the
  backend's own buffers (its optimizer wrapper, gradient buckets, gathered-parameter window);
- ``host_offload_bytes``: host RAM per rank for its offload;
- ``dp_traffic_seconds`` and ``overlaps_dp``: the data-parallel collectives it issues and whether
  they overlap backward by default;
- ``host_us_per_micro_batch``: its host bookkeeping (hooks, fetch/release);
- ``optimizer_seconds`` and ``offload_seconds``.

Adding a backend (FSDP2, say) is one package beside ``deepspeed/`` that builds a Backend, plus its
entry in ``BACKENDS`` (planner/backends/registry.py); the estimators take it as an argument.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from planner.plan.rule import Rule


@dataclass(frozen=True)
class Backend:
    name: str
    rules: tuple[Rule, ...]
    executor_rules: tuple[Rule, ...]
    stage_moments: Callable  #: (spec, plan, stage) -> [(MemoryBreakdown, happens)]
    host_offload_bytes: Callable  #: (spec, plan) -> bytes of host RAM per rank
    dp_traffic_seconds: Callable  #: (spec, plan, stage, order) -> (per step, per micro-batch)
    overlaps_dp: Callable  #: (spec, plan) -> bool (mask): per-micro-batch traffic overlaps
    host_us_per_micro_batch: Callable  #: (spec, plan, stage) -> microseconds
    optimizer_seconds: Callable  #: (spec, plan, params, tensors, held params) -> seconds
    offload_seconds: Callable  #: (spec, plan, params) -> seconds

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


def plan_only(name: str) -> tuple[Rule, ...]:
    """The executor rules of a backend this project's executor does not drive: every plan."""
    return (Rule("plan-only backend", lambda s, p: p.dp > 0, lambda s, p: (
        f"runtime.backend {name} is plan-only: the executor runs DeepSpeed (runtime.backend: "
        f"deepspeed)")),)
