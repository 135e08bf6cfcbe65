"""The form every rule takes, wherever it is stated (the arithmetic rules in
planner/search/rules.py, a backend's own in planner/backends/): a predicate over a Plan or a
PlanBatch, and the one-line reason, with its operands, for one plan.  A plan that fails is a
value, ``Rejected``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from planner.plan.strategy import Plan, PlanBatch


@dataclass(frozen=True)
class Rejected:
    plan: Plan
    rule: str  #: short, stable key used to count rejections by reason
    reason: str  #: one line with the operands


@dataclass(frozen=True)
class Rule:
    key: str
    fails: Callable  #: (spec, Plan | PlanBatch) -> bool | mask
    why: Callable  #: (spec, Plan) -> str


def check_rules(rules: Sequence[Rule], spec, plan: Plan) -> Optional[Rejected]:
    """The first rule the plan fails, as a Rejected, or None."""
    for rule in rules:
        if rule.fails(spec, plan):
            return Rejected(plan, rule.key, rule.why(spec, plan))
    return None


def first_failing(rules: Sequence[Rule], spec, plans: PlanBatch) -> np.ndarray:
    """Index into ``rules`` of the first rule each plan fails, -1 where it passes them all."""
    out = np.full(len(plans), -1)
    for i, rule in enumerate(rules):
        fails = np.broadcast_to(rule.fails(spec, plans), out.shape)
        out = np.where((out < 0) & fails, i, out)
    return out
