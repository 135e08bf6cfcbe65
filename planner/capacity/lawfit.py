"""Fit L(N, D) = E + A/N^α + B/D^β to a lab's own (N, D, loss) runs, as Hoffmann et al. 2022 did
for approach 3 (section 3.3, appendix D.2): minimise the Huber loss (δ = 1e-3) of

    r_i = LSE(a − α log N_i, b − β log D_i, e) − log L_i,      A = e^a, B = e^b, E = e^e,

from a grid of starting points.  Hoffmann et al. ran L-BFGS; here the best starts of the grid are
refined by Levenberg-Marquardt on the Huber loss written as iteratively re-weighted least squares
(weights 1 inside δ, δ/|r| outside), which needs only numpy.  The Jacobian is analytic: with
s = softmax of the three LSE terms, ∂r/∂(a, b, e, α, β) = (s₁, s₂, s₃, −s₁ log N, −s₂ log D).
"""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from planner.capacity.scaling import ScalingLaw

HUBER_DELTA = 1e-3
#: Hoffmann et al.'s initialisation grid (appendix D.2)
GRID = dict(a=np.arange(0, 30, 5.0), b=np.arange(0, 30, 5.0), e=np.arange(-1, 1.5, 0.5),
            alpha=np.arange(0, 2.5, 0.5), beta=np.arange(0, 2.5, 0.5))
REFINED_STARTS = 8
MAX_ITER = 200


def _terms(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """The three LSE arguments, shape (..., points, 3), for parameters theta (..., 5)."""
    a, b, e, alpha, beta = (theta[..., i, None] for i in range(5))
    return np.stack([a - alpha * log_n, b - beta * log_d, e + 0 * log_n], axis=-1)


def _residuals(theta, log_n, log_d, log_l):
    """(r, softmax weights s) for every point; LSE computed stably."""
    t = _terms(theta, log_n, log_d)
    top = t.max(axis=-1, keepdims=True)
    exp = np.exp(t - top)
    total = exp.sum(axis=-1, keepdims=True)
    return (top + np.log(total))[..., 0] - log_l, exp / total


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    absr = np.abs(r)
    return np.where(absr <= delta, 0.5 * r**2, delta * (absr - 0.5 * delta)).sum(axis=-1)


def _refine(theta, log_n, log_d, log_l, delta):
    lam = 1e-3
    r, s = _residuals(theta, log_n, log_d, log_l)
    cost = _huber(r, delta)
    for _ in range(MAX_ITER):
        jac = np.column_stack([s[:, 0], s[:, 1], s[:, 2], -s[:, 0] * log_n, -s[:, 1] * log_d])
        w = np.where(np.abs(r) <= delta, 1.0, delta / np.maximum(np.abs(r), 1e-300))
        jtw = jac.T * w
        h = jtw @ jac
        try:
            step = np.linalg.solve(h + lam * np.diag(np.diag(h) + 1e-12), -jtw @ r)
        except np.linalg.LinAlgError:  # a flat direction (a term that no run constrains)
            lam *= 4
            if lam > 1e12:
                break
            continue
        trial = theta + step
        r_t, s_t = _residuals(trial, log_n, log_d, log_l)
        cost_t = _huber(r_t, delta)
        if cost_t < cost:
            theta, r, s, lam = trial, r_t, s_t, lam / 3
            done = cost - cost_t < 1e-16 * max(cost, 1e-30)
            cost = cost_t
            if done or np.abs(step).max() < 1e-12:
                break
        else:
            lam *= 4
            if lam > 1e12:
                break
    return theta, cost


def fit_law(params: Sequence[float], tokens: Sequence[float], losses: Sequence[float],
            delta: float = HUBER_DELTA, name: str = "lab fit") -> ScalingLaw:
    """The law that best explains the runs (Huber loss in log space, grid of starts)."""
    log_n, log_d, log_l = (np.log(np.asarray(x, dtype=float)) for x in (params, tokens, losses))
    if not len(log_n) == len(log_d) == len(log_l) >= 5:
        raise ValueError("fit_law needs at least 5 runs, each with params, tokens and loss")
    grid = np.array(list(itertools.product(*GRID.values())))
    r, _ = _residuals(grid, log_n, log_d, log_l)
    starts = grid[np.argsort(_huber(r, delta))[:REFINED_STARTS]]
    fits = [_refine(theta, log_n, log_d, log_l, delta) for theta in starts]
    theta, _ = min(fits, key=lambda f: f[1])
    a, b, e, alpha, beta = (float(v) for v in theta)
    return ScalingLaw(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=alpha,
                      beta=beta, name=name,
                      source=f"Huber (delta={delta:g}) fit of {len(log_n)} runs, LSE form of "
                             f"Hoffmann et al. 2022 approach 3")
