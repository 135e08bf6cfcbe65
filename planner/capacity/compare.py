"""One field of the best plan, changed: the search's best plan with ZeRO stage, tp, precision,
recompute, micro-batch (or another Plan field) set to each of a few values, each checked by the
same rules as the search and estimated by the same estimator, so the columns differ only by what
that one field costs and saves, term by term.

Pure: it returns data.  ``planner/compare_report.py`` prints it and ``planner/plots.py`` draws
it.  The fields that follow from the others are derived again, as the search derives them
(``candidate_batch``): dp from the world size when tp or pp changes, grad_accum from the global
batch when dp or the micro-batch changes.  So ``tp=1,2`` compares dp64·tp1 with dp32·tp2 on
the same 64 GPUs and the same global batch, not an impossible dp64·tp2.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

from planner.backends.base import Backend
from planner.backends.registry import backend_for
from planner.capacity.scaling import training_tokens
from planner.capacity.whatif import parse_value
from planner.errors import InfeasibleError, PlannerError
from planner.estimate.predict import Estimate, estimate
from planner.plan.rule import Rejected, check_rules
from planner.plan.strategy import Plan
from planner.search.engine import grad_accum, search, why_infeasible
from planner.search.rules import check
from planner.spec.spec import Spec
from planner.spec.units import ContextParallel, Offload, Precision, Recompute, ZeroStage

#: the Plan fields a comparison may set, with what a written value must be; dp and grad_accum
#: are left out: they follow from the others (the world size, the global batch)
AXES: dict[str, tuple[type, str]] = {
    "zero": (ZeroStage, "a ZeRO stage (one of " + ", ".join(str(int(z)) for z in ZeroStage)
             + ")"),
    "tp": (int, "a positive integer"),
    "pp": (int, "a positive integer"),
    "micro_batch": (int, "a positive integer"),
    "precision": (Precision, "one of " + ", ".join(p.value for p in Precision)),
    "recompute": (Recompute, "one of " + ", ".join(r.value for r in Recompute)),
    "offload": (Offload, "one of " + ", ".join(o.value for o in Offload)),
    "sequence_parallel": (bool, "true or false"),
    "cp": (int, "a positive integer"),
    "cp_kind": (ContextParallel, "one of " + ", ".join(k.value for k in ContextParallel)),
}
#: Plan fields that exist but are not set directly, and why
DERIVED = {"dp": "dp follows from the world size / (tp * pp * cp): compare tp, pp or cp",
           "grad_accum": "grad_accum follows from the global batch / (dp * micro_batch): compare "
                         "micro_batch"}


@dataclass(frozen=True)
class Variant:
    """One column: the best plan with the field at one value; estimated, or rejected by a rule."""

    value: Any  #: the field's value (its enum member for enum fields)
    text: str  #: the value as the user writes it (``2``, ``bf16``, ``true``)
    plan: Plan
    estimate: Optional[Estimate]  #: None when a rule rejects the plan
    rejected: Optional[Rejected] = None
    is_best: bool = False  #: the value the best plan already has


def _written(value: Any) -> str:
    """A Plan field's plain value (``Plan.to_dict``) as a YAML scalar: ``true``, not ``True``."""
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Comparison:
    spec: Spec
    axis: str
    best: Estimate  #: the search's best plan, the one every variant changes
    variants: tuple[Variant, ...]
    tokens: Optional[float]  #: training tokens, for days to train (None in budget mode)

    @property
    def difference(self) -> Optional[tuple[Estimate, Estimate]]:
        """(first, second) when exactly two values were compared and both were estimated: the
        report shows second - first."""
        if len(self.variants) != 2 or any(v.estimate is None for v in self.variants):
            return None
        return self.variants[0].estimate, self.variants[1].estimate


def parse_compare(text: str) -> tuple[str, list[Any]]:
    """``'zero=2,3'`` -> ``('zero', [ZeroStage.GRADIENTS, ZeroStage.PARAMETERS])``; an unknown
    axis, an empty or a wrong value is a PlannerError naming it."""
    axis, sep, rest = text.partition("=")
    axis = axis.strip()
    if not sep or not axis:
        raise PlannerError(f"compare: expected AXIS=V1,V2,... (e.g. zero=2,3), got {text!r}")
    if axis in DERIVED:
        raise PlannerError(f"compare {axis}: {DERIVED[axis]}")
    if axis not in AXES:
        raise PlannerError(f"compare {axis!r}: not a plan field one can change; one of "
                           f"{', '.join(AXES)}")
    texts = [t.strip() for t in rest.split(",")]
    if not all(texts):
        raise PlannerError(f"compare {text!r}: an empty value (write the values between commas, "
                           f"e.g. {axis}=1,2)")
    values = [axis_value(axis, t) for t in texts]
    if len(set(values)) != len(values):
        raise PlannerError(f"compare {text!r}: a value is given twice")
    return axis, values


def axis_value(axis: str, text: str) -> Any:
    """A written value as the Plan field's type (``'3'`` -> ZeroStage.PARAMETERS)."""
    kind, allowed = AXES[axis]
    raw = parse_value(text)
    try:
        if kind is bool:
            if not isinstance(raw, bool):
                raise ValueError
            return raw
        if kind is int or kind is ZeroStage:
            if isinstance(raw, bool) or not isinstance(raw, int) or raw < (0 if kind is
                                                                           ZeroStage else 1):
                raise ValueError
            return kind(raw)
        return kind(str(raw))
    except ValueError:
        raise PlannerError(f"compare {axis}={text}: {text!r} is not {allowed}") from None


def changed_plan(spec: Spec, plan: Plan, axis: str, value: Any) -> Plan:
    """The plan with one field set, and dp / grad_accum derived again as the search derives
    them.  When tp·pp·cp does not divide the world size dp is kept, so the world-size rule rejects
    the plan with its operands."""
    new = replace(plan, **{axis: value})
    world = spec.cluster.world_size
    model_ranks = new.tp * new.pp * new.cp
    if axis in ("tp", "pp", "cp") and world % model_ranks == 0:
        new = replace(new, dp=world // model_ranks)
    return replace(new, grad_accum=grad_accum(spec, new.dp, new.micro_batch))


def compare(spec: Spec, axis: str, values: Sequence[Any], *,
            backend: Optional[Backend] = None) -> Comparison:
    """The best plan of ``search(spec)`` with ``axis`` set to each value: rules first (a rejected
    value keeps its reason), then the estimate, marked like the search's when the backend's
    executor cannot run it."""
    if spec.training.budget is not None or spec.training.lab is not None:
        raise PlannerError("compare needs one model to plan: this spec is in budget or lab mode "
                           "(training.budget / training.lab)")
    if axis not in AXES:
        raise PlannerError(f"compare {axis!r}: not a plan field one can change; one of "
                           f"{', '.join(AXES)}")
    backend = backend or backend_for(spec)
    result = search(spec, backend=backend)
    best = result.best
    if best is None:
        raise InfeasibleError(why_infeasible(result))
    variants = []
    for value in values:
        plan = changed_plan(spec, best.plan, axis, value)
        text, is_best = _written(plan.to_dict()[axis]), plan == best.plan
        rejected = check(spec, plan, backend)
        if rejected is not None:
            variants.append(Variant(value, text, plan, None, rejected, is_best))
            continue
        est = estimate(spec, plan, backend=backend)
        blocked = check_rules(backend.executor_rules, spec, plan)
        if blocked is not None:
            est = replace(est, not_executable=blocked.reason)
        variants.append(Variant(value, text, plan, est, None, is_best))
    return Comparison(spec, axis, best, tuple(variants), training_tokens(spec))


__all__ = ["compare", "parse_compare", "changed_plan", "Comparison", "Variant", "AXES"]
