"""The nearest fix for a spec with no feasible plan: which relaxation of the search space, or how
many more GPUs, makes something fit."""
from __future__ import annotations

from typing import Optional

from planner.search.engine import SearchResult, search
from planner.spec.spec import Spec

#: search axes a user can open up, in the order a fix is worth suggesting
RELAXABLE = ("recompute", "zero", "micro_batch", "tp", "pp", "offload", "precision")
MAX_SCALE = 64


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


def why_infeasible(result: SearchResult) -> str:
    """One line: how many candidates each rule (or memory) rejected, most common first."""
    reasons = ", ".join(f"{key}: {n}" for key, n in result.by_reason.most_common(3))
    return f"no feasible plan among {result.evaluated} candidates ({reasons})"


def nearest_fix(spec: Spec) -> list[str]:
    fixes: list[str] = []
    for axis in RELAXABLE:
        if getattr(spec.search, axis) == "auto":
            continue
        relaxed = _with_search(spec, **{axis: "auto"})
        result = search(relaxed)
        if result.best is not None:
            fixes.append(_describe(spec, result))
    if not fixes:
        opened = _with_search(spec, **{a: "auto" for a in RELAXABLE})
        result = search(opened)
        if result.best is not None:
            fixes.append(_describe(spec, result))
    gpus = min_gpus(spec)
    if gpus is not None:
        fixes.append(f"needs at least {gpus} GPUs ({gpus // spec.cluster.gpus_per_node} nodes "
                     f"of {spec.cluster.gpus_per_node})")
    return fixes


def _fits_on(spec: Spec, nodes: int) -> bool:
    bigger = spec.model_copy(update={"cluster": spec.cluster.model_copy(update={"nodes": nodes})})
    return search(_with_search(bigger, dp="auto")).best is not None


def min_gpus(spec: Spec) -> Optional[int]:
    """Fewest GPUs, in whole nodes, at which the spec's search space (dp free) has a plan:
    doubling until something fits, then bisecting."""
    low, high = spec.cluster.nodes, spec.cluster.nodes * 2
    while not _fits_on(spec, high):
        low, high = high, high * 2
        if high > spec.cluster.nodes * MAX_SCALE:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if _fits_on(spec, mid) else (mid, high)
    return high * spec.cluster.gpus_per_node
