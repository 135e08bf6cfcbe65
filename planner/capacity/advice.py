"""The nearest fix for a spec with no feasible plan: which relaxation of the search space makes
something fit, and the fewest GPUs on which the spec's own search space does (one algorithm:
planner/capacity/inverse.py's fewest_gpus)."""
from __future__ import annotations

from planner.capacity.inverse import fewest_gpus
from planner.search.engine import SearchResult, search
from planner.spec.spec import Spec

#: search axes a user can open up, in the order a fix is worth suggesting
RELAXABLE = ("recompute", "zero", "micro_batch", "tp", "pp", "offload", "precision",
             "sequence_parallel")


def _with_search(spec: Spec, **update) -> Spec:
    return spec.model_copy(update={"search": spec.search.model_copy(update=update)})


def _describe(spec: Spec, result: SearchResult) -> str:
    p = result.best.plan
    parts = []
    for axis in RELAXABLE:
        fixed = getattr(spec.search, axis)
        value = getattr(p, axis)
        if fixed != "auto" and value not in fixed:
            if axis == "zero":
                parts.append(f"ZeRO-{int(value)}")
            elif axis == "recompute":
                parts.append(f"{value.value} recompute")
            elif axis == "offload":
                parts.append(f"offload={value.value}")
            elif axis == "precision":
                parts.append(value.value)
            else:
                parts.append(f"{axis}={value}")
    return "fits with " + " and ".join(parts) + f" ({p.label})"


def nearest_fix(spec: Spec, *, executable: bool = False) -> list[str]:
    """Relaxations of pinned search axes that make a plan fit (with ``executable``, one the
    backend's executor can run), or failing those every axis opened; then the fewest GPUs."""
    fixes: list[str] = []
    for axis in RELAXABLE:
        if getattr(spec.search, axis) == "auto":
            continue
        result = search(_with_search(spec, **{axis: "auto"}), executable=executable)
        if result.best is not None:
            fixes.append(_describe(spec, result))
    if not fixes:
        opened = _with_search(spec, **{a: "auto" for a in RELAXABLE})
        result = search(opened, executable=executable)
        if result.best is not None:
            fixes.append(_describe(spec, result))
    gpus = fewest_gpus(spec, executable=executable)
    if gpus.value is not None:
        fixes.append(f"needs at least {gpus.value} GPUs ({gpus.label})")
    return fixes
