"""Fits of a lab's own runs: Hoffmann et al. 2022's approach 2 (IsoFLOP profiles) and bootstrap
intervals for it and for approach 3 (``planner.capacity.lawfit.fit_law``).

Approach 2 (section 3.2): the runs of one compute level C trace loss against model size; a
parabola in log N through them has its minimum at N_opt(C).  Across levels, log N_opt and
log D_opt = log(C / 6 N_opt) are straight lines in log C:  N_opt = k_N C^a,  D_opt = k_D C^b,
with a + b = 1.  Hoffmann et al. found a = 0.49, b = 0.51; Kaplan et al. 2020 a = 0.73.

Bootstrap (Efron 1979; Besiroglu et al. 2024 bootstrap approach 3 the same way): refit on runs
drawn with replacement (within each compute level for approach 2, so every level keeps a
parabola), and report the 2.5th and 97.5th percentiles of each quantity.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from planner.capacity.lawfit import fit_law
from planner.capacity.scaling import SIX

#: runs of a compute level needed for its parabola (three determine it; more average noise)
MIN_RUNS_PER_LEVEL = 3


@dataclass(frozen=True)
class Run:
    """One trained point: its compute (6·N·D unless the lab counts otherwise), size, tokens and
    final loss (nats/token)."""

    flops: float
    params: float
    tokens: float
    loss: float


@dataclass(frozen=True)
class Interval:
    value: float  #: the fit on all runs
    low: float  #: 2.5th percentile of the bootstrap fits
    high: float  #: 97.5th percentile

    def __contains__(self, x: float) -> bool:
        return self.low <= x <= self.high


@dataclass(frozen=True)
class IsoFlopFit:
    """Approach 2: each level's minimum and the power laws through them."""

    minima: tuple[tuple[float, float, float], ...]  #: (C, N_opt, L_min) per compute level
    a: float  #: N_opt ∝ C^a
    log_k_n: float

    @property
    def b(self) -> float:
        """D_opt ∝ C^b; with D = C / (6 N), b = 1 - a."""
        return 1.0 - self.a

    def optimal_params(self, flops: float) -> float:
        return float(np.exp(self.log_k_n + self.a * np.log(flops)))

    def optimal_tokens(self, flops: float) -> float:
        return flops / SIX / self.optimal_params(flops)

    def tokens_per_param(self, flops: float) -> float:
        return self.optimal_tokens(flops) / self.optimal_params(flops)


def _levels(runs: Sequence[Run]) -> dict[float, list[Run]]:
    """Runs grouped by compute level (levels equal to 6 significant digits are one level)."""
    levels: dict[float, list[Run]] = defaultdict(list)
    for r in runs:
        levels[float(f"{r.flops:.6g}")].append(r)
    return dict(sorted(levels.items()))


def level_minimum(runs: Sequence[Run]) -> tuple[float, float]:
    """(N_opt, L_min) of one compute level: the vertex of the least-squares parabola in log N.
    Lowest loss at the smallest or largest size, a parabola that opens downwards, or a vertex
    outside the sizes trained: the level's sizes do not bracket the optimum (widen them)."""
    x = np.log([r.params for r in runs])
    y = np.array([r.loss for r in runs])
    if len(set(x.tolist())) < MIN_RUNS_PER_LEVEL:
        raise ValueError(f"the runs at {runs[0].flops:.3g} FLOPs have fewer than "
                         f"{MIN_RUNS_PER_LEVEL} distinct sizes: a parabola needs three")
    c2, c1, c0 = np.polyfit(x, y, 2)
    if c2 <= 0:
        raise ValueError(f"the runs at {runs[0].flops:.3g} FLOPs have no loss minimum "
                         f"(their losses fall or rise across all sizes): widen the sizes")
    if int(np.argmin(y)) in (int(np.argmin(x)), int(np.argmax(x))):
        end = "smallest" if int(np.argmin(y)) == int(np.argmin(x)) else "largest"
        raise ValueError(f"the runs at {runs[0].flops:.3g} FLOPs have their lowest loss at the "
                         f"{end} size: the sizes do not bracket the minimum: widen the sizes")
    vertex = -c1 / (2 * c2)
    if not x.min() <= vertex <= x.max():
        raise ValueError(f"the loss minimum at {runs[0].flops:.3g} FLOPs lies outside the sizes "
                         f"trained ({np.exp(vertex):.3g} parameters): widen the sizes")
    return float(np.exp(vertex)), float(c0 + c1 * vertex + c2 * vertex**2)


def fit_isoflop(runs: Sequence[Run]) -> IsoFlopFit:
    """Approach 2 on runs of at least two compute levels of three or more sizes each."""
    levels = {c: rs for c, rs in _levels(runs).items() if len(rs) >= MIN_RUNS_PER_LEVEL}
    if len(levels) < 2:
        raise ValueError(f"approach 2 needs at least 2 compute levels of {MIN_RUNS_PER_LEVEL} "
                         f"or more runs each (got {len(levels)})")
    minima = []
    for c, rs in levels.items():
        n_opt, l_min = level_minimum(rs)
        minima.append((c, n_opt, l_min))
    log_c = np.log([m[0] for m in minima])
    log_n = np.log([m[1] for m in minima])
    a, log_k = np.polyfit(log_c, log_n, 1)
    return IsoFlopFit(tuple(minima), float(a), float(log_k))


def _interval(value: float, samples: list[float]) -> Interval:
    low, high = np.percentile(samples, [2.5, 97.5])
    return Interval(value, float(low), float(high))


def bootstrap_isoflop(runs: Sequence[Run], flops: float, samples: int = 200,
                      seed: int = 0) -> dict[str, Interval]:
    """Intervals of approach 2's exponents and of N_opt, D_opt and tokens/param at ``flops``,
    resampling within each compute level (resamples without a minimum are skipped)."""
    fit = fit_isoflop(runs)
    rng = np.random.default_rng(seed)
    levels = list(_levels(runs).values())
    draws: dict[str, list[float]] = defaultdict(list)
    for _ in range(samples):
        resampled = [r for rs in levels for r in rng.choice(rs, size=len(rs), replace=True)]
        try:
            f = fit_isoflop(resampled)
        except (ValueError, np.linalg.LinAlgError):
            continue
        for key, value in _summary(f, flops).items():
            draws[key].append(value)
    return {key: _interval(value, draws[key]) for key, value in _summary(fit, flops).items()}


def _summary(f, flops: float) -> dict[str, float]:
    """The quantities a fit answers at ``flops`` (an IsoFlopFit or a ScalingLaw)."""
    n = f.optimal_params(flops)
    d = flops / SIX / n
    out = {"optimal_params": n, "optimal_tokens": d, "tokens_per_param": d / n}
    if isinstance(f, IsoFlopFit):
        out.update(a=f.a, b=f.b)
    else:
        out.update(E=f.E, A=f.A, B=f.B, alpha=f.alpha, beta=f.beta,
                   a=f.beta / (f.alpha + f.beta), b=f.alpha / (f.alpha + f.beta))
    return out


def bootstrap_law(runs: Sequence[Run], flops: float, samples: int = 100, seed: int = 0,
                  fit: Callable = fit_law) -> dict[str, Interval]:
    """Intervals of approach 3's constants, its exponents a = β/(α+β), b = α/(α+β), and its
    compute-optimal split at ``flops``, resampling runs."""
    arrays = [np.array([getattr(r, k) for r in runs]) for k in ("params", "tokens", "loss")]
    law = fit(*arrays)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = defaultdict(list)
    for _ in range(samples):
        pick = rng.integers(0, len(runs), len(runs))
        for key, value in _summary(fit(*(a[pick] for a in arrays)), flops).items():
            draws[key].append(value)
    return {key: _interval(value, draws[key]) for key, value in _summary(law, flops).items()}


__all__ = ["Run", "Interval", "IsoFlopFit", "fit_isoflop", "level_minimum", "bootstrap_isoflop",
           "bootstrap_law"]
