"""Everything the scaling-law lab fits on its own runs, in one value: ``fit_lab(points, at)``.

- Approach 2 (Hoffmann et al. 2022, section 3.2; planner/capacity/isoflop.py): the minimum of each
  IsoFLOP curve, and N_opt ∝ C^a through them, with bootstrap intervals.
- Approach 3 (section 3.3; planner/capacity/lawfit.py): L = E + A/N^α + B/D^β, Huber on log-loss
  from a grid of starts, with bootstrap intervals, its compute-optimal exponent a = β/(α+β) and
  its tokens per parameter at the reference compute.
- Both with N counted two ways: every parameter (Hoffmann et al.'s convention) and non-embedding
  parameters (Kaplan et al. 2020's).  At small sizes the embedding table is a large share of N,
  so the two counts move the fitted exponent apart (Pearce & Song 2024): the lab shows by how much
  on its own runs.  Compute stays C = 6 N_total D for both (what the grid spent).

A fit that the runs cannot support (a level whose sizes do not bracket its minimum, fewer runs
than constants) is reported with its reason instead of a number: a lab of tiny models on a CPU
says honestly what it could not measure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from planner.capacity.isoflop import (Interval, IsoFlopFit, Run, bootstrap_isoflop,
                                      bootstrap_law, fit_isoflop)
from planner.capacity.lawfit import fit_law
from planner.capacity.scaling import ScalingLaw

COUNTS = ("total", "non_embedding")
#: bootstrap resamples: approach 2 refits parabolas (cheap), approach 3 refits the Huber law
ISOFLOP_SAMPLES, LAW_SAMPLES = 400, 100


@dataclass(frozen=True)
class LabPointResult:
    """One trained point of the lab: its compute, both parameter counts, tokens and final
    evaluation loss (nats/token)."""

    flops: float
    params: float  #: every parameter
    params_non_embedding: float
    tokens: float
    loss: float

    def run(self, count: str) -> Run:
        n = self.params if count == "total" else self.params_non_embedding
        return Run(self.flops, n, self.tokens, self.loss)


@dataclass(frozen=True)
class Approach2:
    fit: Optional[IsoFlopFit]
    intervals: dict[str, Interval] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True)
class Approach3:
    law: Optional[ScalingLaw]
    intervals: dict[str, Interval] = field(default_factory=dict)
    residuals: tuple[float, ...] = ()  #: measured − predicted loss per point, nats/token
    error: str = ""


@dataclass(frozen=True)
class LabFit:
    at: float  #: the reference compute for tokens/param and N_opt (the largest level)
    approach2: dict[str, Approach2]  #: by count: "total", "non_embedding"
    approach3: dict[str, Approach3]


def _approach2(runs: Sequence[Run], at: float, samples: int, seed: int) -> Approach2:
    try:
        fit = fit_isoflop(runs)
        return Approach2(fit, bootstrap_isoflop(runs, at, samples=samples, seed=seed))
    except (ValueError, np.linalg.LinAlgError) as exc:
        return Approach2(None, error=str(exc))


def _approach3(runs: Sequence[Run], at: float, samples: int, seed: int, name: str) -> Approach3:
    arrays = [np.array([getattr(r, k) for r in runs], dtype=float)
              for k in ("params", "tokens", "loss")]
    try:
        law = fit_law(*arrays, name=name)
        intervals = bootstrap_law(runs, at, samples=samples, seed=seed,
                                  fit=lambda n, d, l: fit_law(n, d, l, name=name))
    except (ValueError, np.linalg.LinAlgError) as exc:
        return Approach3(None, error=str(exc))
    residuals = tuple(float(r.loss - law.loss(r.params, r.tokens)) for r in runs)
    return Approach3(law, intervals, residuals)


def fit_lab(points: Sequence[LabPointResult], at: Optional[float] = None, *,
            isoflop_samples: int = ISOFLOP_SAMPLES, law_samples: int = LAW_SAMPLES,
            seed: int = 0, name: str = "lab fit") -> LabFit:
    """Approaches 2 and 3 under both parameter counts; ``at`` defaults to the largest compute
    level trained."""
    at = max(p.flops for p in points) if at is None else at
    a2, a3 = {}, {}
    for count in COUNTS:
        runs = [p.run(count) for p in points]
        a2[count] = _approach2(runs, at, isoflop_samples, seed)
        a3[count] = _approach3(runs, at, law_samples, seed,
                               name if count == "total" else f"{name} (non-embedding N)")
    return LabFit(at, a2, a3)


def interval_json(i: Interval) -> dict:
    return {"value": i.value, "low": i.low, "high": i.high}


def lab_fit_json(f: LabFit) -> dict:
    """fit.json: every number the lab fitted, with its 95 % interval."""
    out: dict = {"reference_flops": f.at, "approach2": {}, "approach3": {}}
    for count, a in f.approach2.items():
        out["approach2"][count] = {"error": a.error} if a.fit is None else {
            "minima": [{"flops": c, "optimal_params": n, "loss": l} for c, n, l in a.fit.minima],
            **{k: interval_json(v) for k, v in a.intervals.items()}}
    for count, a in f.approach3.items():
        out["approach3"][count] = {"error": a.error} if a.law is None else {
            **{k: interval_json(v) for k, v in a.intervals.items()},
            "residuals": list(a.residuals)}
    return out


__all__ = ["LabPointResult", "LabFit", "Approach2", "Approach3", "fit_lab", "lab_fit_json",
           "COUNTS"]
