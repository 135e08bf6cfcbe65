"""The scaling-law lab's design: an IsoFLOP grid (Hoffmann et al. 2022, section 3.2) for the
spec's budget, on the spec's cluster.

Compute levels C_1, q·C_1, ..., q^(L-1)·C_1 (q = ``level_ratio``).  At each level the spec's law
gives the expected optimum N_opt(C); ``sizes`` targets spread log-evenly from N_opt/spread to
N_opt·spread become the nearest shapes of the budget-mode family (planner/capacity/budget.py
``family_shape``: the template's block style, vocabulary and sequence length), each trained on
D = C / (6N) tokens (N all parameters, the compute convention the laws were fitted under).  The
budget fixes C_1: in FLOPs directly (the points' 6ND sum to it), in hours through the planner's
own step-time model on the spec's cluster (each point's best plan, steps x seconds per step).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from planner.capacity.budget import family_shape
from planner.capacity.scaling import SIX, law_of
from planner.errors import SpecError
from planner.estimate.predict import Estimate
from planner.model.flops import tokens_per_step
from planner.model.shape import param_counts
from planner.search.engine import search, why_infeasible
from planner.spec.spec import LabSpec, ModelSpec, Spec

#: widths the lab draws its shapes from: below 128 in steps of 8 with one head of that width (a
#: CPU lab's tiny models), then heads of 128 (the family rule of budget mode)
LAB_WIDTHS = tuple(range(8, 128, 8)) + tuple(range(128, 8192 + 1, 128))
#: GPT-3 Small's peak learning rate and width (Brown et al. 2020, table 2.1), the anchor of the
#: lab's 1/width rule
ANCHOR_LR, ANCHOR_WIDTH = 6e-4, 768
#: fixed-point rounds that scale the first level until the predicted hours match the budget
HOURS_ROUNDS = 6


def lab_learning_rate(lab: LabSpec, model: ModelSpec) -> float:
    """Peak learning rate of a lab point.  'width': Adam's hidden-layer learning rate scales as
    1/width under the maximal-update parametrisation (Yang et al. 2022, table 3), anchored at
    GPT-3 Small's 6e-4 at d_model 768.  A fixed rate is wrong across a lab's sizes: on this
    project's CPU lab a 16-wide model reached eval loss 4.09 at 1e-3 and 2.41 at 3e-2, a 64-wide
    one 3.00 at 1.1e-2 and 1.92 at 7e-3 (docs/scaling-lab.md)."""
    if lab.learning_rate == "width":
        return ANCHOR_LR * ANCHOR_WIDTH / model.d_model
    return float(lab.learning_rate)


def lab_warmup_steps(lab: LabSpec, steps: int) -> int:
    return max(1, round(lab.warmup_fraction * steps))


@dataclass(frozen=True)
class LabPoint:
    level: int  #: 0 = the smallest compute level
    flops: float  #: this point's 6·N·D
    model: ModelSpec
    params: int  #: all parameters
    tokens: float  #: D = C / (6N)
    steps: int  #: optimizer steps at the spec's global batch
    best: Optional[Estimate]  #: its best plan on the cluster (None: nothing fits)
    reason: str = ""  #: why nothing fits ("" otherwise)

    @property
    def seconds(self) -> Optional[float]:
        return None if self.best is None else self.steps * self.best.step_time_s


@dataclass(frozen=True)
class LabGrid:
    spec: Spec
    points: tuple[LabPoint, ...]

    @property
    def flops(self) -> float:
        return sum(p.flops for p in self.points)

    @property
    def seconds(self) -> float:
        return sum(p.seconds or 0.0 for p in self.points)


def _lab(spec: Spec) -> LabSpec:
    lab = spec.training.lab
    if lab is None:
        raise SpecError("training.lab", "the scaling-law lab needs a lab section")
    return lab


@lru_cache(maxsize=64)
def _family(template: ModelSpec) -> tuple[tuple[int, ModelSpec], ...]:
    """(all parameters, shape) of the family at every lab width, smallest first, one per size."""
    seen, out = set(), []
    for width in LAB_WIDTHS:
        model = family_shape(template, width)
        n = param_counts(model).total
        if n not in seen:
            seen.add(n)
            out.append((n, model))
    return tuple(sorted(out, key=lambda x: x[0]))


def level_shapes(spec: Spec, flops: float) -> list[tuple[int, ModelSpec]]:
    """The family shapes nearest (in log size) to the level's targets, distinct, smallest
    first."""
    lab, law = _lab(spec), law_of(spec)
    family = _family(spec.model)
    sizes = np.array([n for n, _ in family], dtype=float)
    # the law's optimum is in its own count; the family's total count is close enough to place
    # the targets, which only need to bracket the minimum
    n_opt = law.optimal_params(flops)
    targets = n_opt * lab.spread ** np.linspace(-1, 1, lab.sizes)
    picked = {int(np.argmin(np.abs(np.log(sizes) - math.log(t)))) for t in targets}
    return [family[i] for i in sorted(picked)]


def _point(spec: Spec, level: int, flops: float, n: int, model: ModelSpec) -> LabPoint:
    tokens = flops / SIX / n
    steps = max(1, math.ceil(tokens / tokens_per_step(model, spec.global_batch_sequences)))
    # the plan --execute trains: only what the backend's executor can run is ranked
    result = search(point_spec(spec, model, tokens), executable=True)
    reason = "" if result.best is not None else why_infeasible(result)
    return LabPoint(level, flops, model, n, tokens, steps, result.best, reason)


def point_spec(spec: Spec, model: ModelSpec, tokens: float) -> Spec:
    """The plain spec that trains one point (the lab's own section removed)."""
    training = spec.training.model_copy(update={"tokens": tokens, "lab": None})
    return spec.model_copy(update={"model": model, "training": training})


def _grid(spec: Spec, first: float) -> LabGrid:
    lab = _lab(spec)
    points = []
    for level in range(lab.levels):
        flops = first * lab.level_ratio ** level
        for n, model in level_shapes(spec, flops):
            points.append(_point(spec, level, flops, n, model))
    return LabGrid(spec, tuple(points))


def lab_grid(spec: Spec) -> LabGrid:
    """The sweep for the spec's lab budget."""
    lab = _lab(spec)
    ratio_sum = sum(lab.level_ratio ** i for i in range(lab.levels))
    first = (lab.flops or 1e15) / (lab.sizes * ratio_sum)
    grid = _grid(spec, first)
    if lab.flops is not None:
        # distinct shapes can be fewer than lab.sizes: scale to the budget actually laid out
        return _grid(spec, first * lab.flops / grid.flops)
    for _ in range(HOURS_ROUNDS):  # time is close to proportional to compute: a fixed point
        if grid.seconds <= 0:
            raise SpecError("training.lab.hours", "no point of the grid has a feasible plan on "
                            "this cluster")
        first *= lab.hours * 3600 / grid.seconds
        grid = _grid(spec, first)
    return grid


__all__ = ["lab_learning_rate", "lab_warmup_steps", "LabPoint", "LabGrid", "lab_grid", "level_shapes", "point_spec", "LAB_WIDTHS"]
