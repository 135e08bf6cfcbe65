"""The Python API; the CLI is a thin layer over these."""
from __future__ import annotations

from .advice import nearest_fix
from .estimate import Estimate, estimate
from .plan import Plan
from .search import SearchResult, search
from .spec import Spec, load_spec


def plan(spec: Spec) -> SearchResult:
    """Every strategy the spec allows, checked, estimated and ranked (best first)."""
    return search(spec)


__all__ = ["load_spec", "plan", "estimate", "nearest_fix", "Plan", "Estimate", "SearchResult",
           "Spec"]
