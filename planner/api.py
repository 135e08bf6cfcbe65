"""The Python API; the CLI is a thin layer over these."""
from __future__ import annotations

from .advice import nearest_fix
from .budget import BudgetResult, plan_budget
from .estimate import Estimate, estimate
from .inverse import Answer, fewest_gpus, largest_micro_batch, largest_model, largest_seq_len
from .lawfit import fit_law
from .plan import Plan
from .scaling import ScalingLaw, law_of, preset_law
from .search import SearchResult, search
from .spec import Spec, load_spec, spec_from_dict
from .whatif import SweepRow, edit, sweep, what_if


def plan(spec: Spec) -> SearchResult:
    """Every strategy the spec allows, checked, estimated and ranked (best first)."""
    return search(spec)


__all__ = ["load_spec", "spec_from_dict", "plan", "estimate", "nearest_fix", "what_if", "edit",
           "sweep", "plan_budget", "largest_micro_batch", "largest_seq_len", "fewest_gpus",
           "largest_model", "law_of", "preset_law", "fit_law", "Plan", "Estimate",
           "SearchResult", "SweepRow", "BudgetResult", "Answer", "ScalingLaw", "Spec"]
