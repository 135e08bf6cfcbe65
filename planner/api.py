"""The Python API; the CLI is a thin layer over these."""
from __future__ import annotations

from planner.capacity.advice import nearest_fix
from planner.capacity.budget import BudgetResult, plan_budget
from planner.capacity.compare import Comparison, compare
from planner.capacity.inverse import Answer, largest_micro_batch, largest_seq_len
from planner.capacity.sizing import fewest_gpus, largest_model
from planner.capacity.lawfit import fit_law
from planner.capacity.scaling import ScalingLaw, law_of, preset_law
from planner.capacity.whatif import SweepRow, edit, sweep, what_if
from planner.estimate.predict import Estimate, estimate
from planner.plan.strategy import Plan
from planner.search.engine import SearchResult, search
from planner.spec.loading import load_spec, spec_from_dict
from planner.spec.spec import Spec


def plan(spec: Spec, *, executable: bool = False) -> SearchResult:
    """Every strategy the spec allows, checked, estimated and ranked (best first); with
    ``executable``, only those the backend's executor can run (what ``plan --execute`` picks)."""
    return search(spec, executable=executable)


__all__ = ["load_spec", "spec_from_dict", "plan", "estimate", "nearest_fix", "what_if", "edit",
           "sweep", "compare", "Comparison", "plan_budget", "largest_micro_batch", "largest_seq_len", "fewest_gpus",
           "largest_model", "law_of", "preset_law", "fit_law", "Plan", "Estimate",
           "SearchResult", "SweepRow", "BudgetResult", "Answer", "ScalingLaw", "Spec"]
