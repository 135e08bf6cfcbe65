"""The backends by name: the one list a new backend joins."""
from __future__ import annotations

from planner.backends.base import Backend
from planner.backends.deepspeed import DEEPSPEED
from planner.backends.fsdp import FSDP
from planner.backends.megatron import MEGATRON
from planner.errors import PlannerError

BACKENDS: dict[str, Backend] = {b.name: b for b in (DEEPSPEED, MEGATRON, FSDP)}
DEFAULT_BACKEND = DEEPSPEED


def backend_named(name: str) -> Backend:
    """The backend called ``name``; a PlannerError naming the known ones otherwise."""
    try:
        return BACKENDS[name.strip().lower()]
    except KeyError:
        raise PlannerError(f"unknown backend {name!r}; known backends: "
                           f"{', '.join(BACKENDS)}") from None


def backend_for(spec) -> Backend:
    """The backend the spec names (runtime.backend)."""
    return BACKENDS[spec.runtime.backend]
