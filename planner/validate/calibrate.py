"""Fit the named constants of the time and memory models (planner/spec/profile.py) to measured
runs: ``calibrate(runs)`` -> a Profile that ``cluster.profile`` applies.

Step time.  Each run's residual is r = log(predicted / measured step time).  Which constants are
fitted: the ones the runs can tell apart.  The sensitivities S[i, c] = d log t_i / d log c (finite
differences at the current values) are ranked by a column-pivoted Gram-Schmidt: the constant that
moves the runs' times most first, then the one that moves them most in a direction the first does
not, and so on, while a new column keeps at least ``MIN_INDEPENDENT`` of its norm, up to one
constant per run.  They are then fitted in log space by Levenberg-Marquardt on a soft-L1 robust
loss (iteratively re-weighted, scale ``ROBUST_SCALE``: a run 5 % off counts fully, one 50 % off
is down-weighted), each kept within its physical bounds.  Numpy only.

Memory.  The caching allocator's ``allocator_fragmentation`` is the median of measured
reserved / allocated - 1 over the runs that record both.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from planner.estimate.timing import step_time
from planner.plan.strategy import Plan
from planner.spec.profile import (CONSTANTS, Profile, constant_value, gpu_figures,
                                  with_constants)
from planner.spec.catalog import find_gpu
from planner.spec.cluster import EfficiencySpec
from planner.spec.spec import HOST_SYNC_DEFAULT, RuntimeSpec, Spec

#: constants a step-time fit may choose from (fragmentation is fitted from memory separately)
TIME_CONSTANTS = tuple(k for k in CONSTANTS if k != "allocator_fragmentation")
RELATIVE_STEP = 0.02  #: finite-difference step in log space
MIN_SENSITIVITY = 0.02  #: d log t / d log c below this on every run: the runs cannot see c
MIN_INDEPENDENT = 0.2  #: share of a column's norm left after removing the chosen ones
ROBUST_SCALE = 0.1  #: soft-L1 scale of the log-residuals
MAX_ITER = 100
MAX_DEFAULT_CONSTANTS = 3


@dataclass(frozen=True)
class MeasuredRun:
    """A real run: what it was (spec, plan) and what it measured."""

    name: str
    spec: Spec
    plan: Plan
    step_s: Optional[float] = None
    peak_alloc_bytes: Optional[float] = None
    peak_reserved_bytes: Optional[float] = None
    source: str = ""  #: where it comes from (a paper, a cluster): the unit of cross-validation


@dataclass(frozen=True)
class RunFit:
    name: str
    measured_s: float
    before_s: float  #: predicted with the spec's own constants
    after_s: float  #: predicted with the fitted ones

    @property
    def error_before(self) -> float:
        return self.before_s / self.measured_s - 1

    @property
    def error_after(self) -> float:
        return self.after_s / self.measured_s - 1


@dataclass(frozen=True)
class Calibration:
    profile: Profile
    fitted: tuple[str, ...]  #: the time constants chosen, most influential first
    runs: tuple[RunFit, ...]
    before: dict[str, float]  #: the constants' values before the fit


def default_constant(spec, name: str) -> float:
    """A constant's value without any profile or spec override: the GPU catalog's efficiency
    (the schema's default for a GPU outside the catalog) or the runtime default."""
    if name == "host_sync_fraction":  # the backend's default
        return HOST_SYNC_DEFAULT[spec.runtime.backend]
    if CONSTANTS[name].section == "runtime":
        return float(RuntimeSpec.model_fields[name].default)
    found = find_gpu(spec.cluster.gpu.name)
    catalog = (found[1].get("efficiency") or {}) if found else {}
    return float(catalog.get(name, EfficiencySpec.model_fields[name].default))


def without_profile(spec):
    """The spec as its catalog and defaults would predict, before the profile's constants."""
    p = spec.cluster.profile
    if p is None or not p.constants:
        return spec
    return with_constants(spec, {n: default_constant(spec, n) for n in p.constants})


def predicted_step_s(spec: Spec, plan: Plan, values: Optional[dict[str, float]] = None) -> float:
    s = with_constants(spec, values) if values else spec
    return float(step_time(s, plan).total)


def _log_residuals(runs: Sequence[MeasuredRun], values: dict[str, float]) -> np.ndarray:
    """log(predicted / measured) of every run with ``values`` over its own constants."""
    return np.array([math.log(predicted_step_s(r.spec, r.plan, values) / r.step_s)
                     for r in runs])


def sensitivities(runs: Sequence[MeasuredRun], names: Sequence[str],
                  values: Optional[dict[str, float]] = None) -> np.ndarray:
    """d log t_i / d log c for every run and constant, at ``values`` over each run's own
    constants (a step inward at an upper bound)."""
    values = values or {}
    out = np.zeros((len(runs), len(names)))
    for i, r in enumerate(runs):
        base = math.log(predicted_step_s(r.spec, r.plan, values))
        for j, name in enumerate(names):
            now = values.get(name, constant_value(r.spec, name))
            step = RELATIVE_STEP if now * math.exp(RELATIVE_STEP) <= CONSTANTS[name].high \
                else -RELATIVE_STEP
            moved = dict(values, **{name: now * math.exp(step)})
            out[i, j] = (math.log(predicted_step_s(r.spec, r.plan, moved)) - base) / step
    return out


def choose_constants(sens: np.ndarray, names: Sequence[str], limit: int) -> list[str]:
    """Column-pivoted Gram-Schmidt on the sensitivities (module docstring)."""
    cols = {n: sens[:, j].copy() for j, n in enumerate(names)
            if np.abs(sens[:, j]).max() >= MIN_SENSITIVITY}
    norms = {n: float(np.linalg.norm(v)) for n, v in cols.items()}
    chosen: list[str] = []
    while cols and len(chosen) < limit:
        name = max(cols, key=lambda n: np.linalg.norm(cols[n]))
        v = cols.pop(name)
        if np.linalg.norm(v) < MIN_INDEPENDENT * norms[name]:
            break
        chosen.append(name)
        u = v / np.linalg.norm(v)
        for n in cols:
            cols[n] = cols[n] - (cols[n] @ u) * u
    return chosen


def default_limit(n_runs: int) -> int:
    """Constants fitted by default: one per run up to two runs, then one fewer than the runs
    (a residual left to judge the fit by), at most ``MAX_DEFAULT_CONSTANTS``."""
    return min(MAX_DEFAULT_CONSTANTS, n_runs if n_runs <= 2 else n_runs - 1)


def _bounded(name: str, log_value: float) -> float:
    c = CONSTANTS[name]
    return float(np.clip(log_value, math.log(max(c.low, 1e-12)), math.log(c.high)))


def fit_constants(runs: Sequence[MeasuredRun], names: Sequence[str],
                  start: dict[str, float], prior: Optional[dict[str, float]] = None,
                  prior_sigma: float = 0.3) -> dict[str, float]:
    """Levenberg-Marquardt on the soft-L1 loss of the log-residuals, in log-constant space.
    With a ``prior``, each constant also pays ((log c - log prior) / prior_sigma)^2: a weak pull
    toward values known without these runs (a constant the runs cannot see stays there).  The
    runs' residuals are counted in units of ``ROBUST_SCALE`` (the scatter a run has about the
    model), so a constant prior_sigma from its prior costs what one run ROBUST_SCALE off does."""
    theta = np.array([math.log(max(start[n], 1e-12)) for n in names])
    anchor = None if prior is None else np.array([math.log(prior[n]) for n in names])

    def values_of(t):
        return {n: math.exp(_bounded(n, x)) for n, x in zip(names, t)}

    def cost(r, t):
        data = float(np.sum(2 * (np.sqrt(1 + (r / ROBUST_SCALE) ** 2) - 1)))
        return data + (0.0 if anchor is None else float(np.sum(((t - anchor) / prior_sigma)**2)))

    values = values_of(theta)
    r = _log_residuals(runs, values)
    c, lam = cost(r, theta), 1e-2
    for _ in range(MAX_ITER):
        jac = sensitivities(runs, names, values)
        w = 1 / np.sqrt(1 + (r / ROBUST_SCALE) ** 2)
        h = (jac.T * w) @ jac / ROBUST_SCALE**2
        g = (jac.T * w) @ r / ROBUST_SCALE**2
        if anchor is not None:
            h = h + np.eye(len(names)) / prior_sigma**2
            g = g + (theta - anchor) / prior_sigma**2
        try:
            step = -np.linalg.solve(h + lam * (np.diag(np.diag(h)) + 1e-9 * np.eye(len(names))),
                                    g)
        except np.linalg.LinAlgError:
            lam *= 10
            continue
        trial = np.array([_bounded(n, x) for n, x in zip(names, theta + step)])
        values_t = values_of(trial)
        r_t = _log_residuals(runs, values_t)
        c_t = cost(r_t, trial)
        if c_t < c:
            done = c - c_t < 1e-12 or np.abs(trial - theta).max() < 1e-6
            theta, values, r, c, lam = trial, values_t, r_t, c_t, lam / 3
            if done:
                break
        else:
            lam *= 5
            if lam > 1e8:
                break
    return {n: values[n] for n in names}


def at_bound(name: str, value: float) -> bool:
    c = CONSTANTS[name]
    return value <= c.low * (1 + 1e-6) + 1e-9 * c.high or value >= c.high * (1 - 1e-6)


def _fit_identified(runs: Sequence[MeasuredRun], limit: int,
                    start: dict[str, float]) -> tuple[list[str], dict[str, float]]:
    """Choose, fit, and drop a constant the fit pushed to a bound (the runs do not pin it: a
    fraction of peak above 1, a host cost below nothing), then choose again without it; the
    first fit with every constant inside its bounds, else the one with the smallest residual."""
    excluded: list[str] = []
    best: Optional[tuple[float, list[str], dict[str, float]]] = None
    for _ in range(len(TIME_CONSTANTS)):
        names = [n for n in TIME_CONSTANTS if n in start and n not in excluded]
        chosen = choose_constants(sensitivities(runs, names), names, limit)
        if not chosen:
            break
        fitted = fit_constants(runs, chosen, start)
        cost = float(np.sum(_log_residuals(runs, fitted) ** 2))
        if best is None or cost < best[0] - 1e-12:
            best = (cost, chosen, fitted)
        pinned = [n for n in chosen if at_bound(n, fitted[n])]
        if not pinned:
            return chosen, fitted
        excluded += pinned
    return (best[1], best[2]) if best else ([], {})


def _rms(x: Sequence[float]) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if len(x) else float("nan")


def calibrate(runs: Sequence[MeasuredRun], constants: Optional[Sequence[str]] = None,
              max_constants: Optional[int] = None, source: str = "") -> Calibration:
    """Fit the profile; ``constants`` names them (default: chosen from the runs)."""
    if not runs:
        raise ValueError("no measured runs to calibrate on")
    gpus = sorted({r.spec.cluster.gpu.name for r in runs})
    figures = {json.dumps(gpu_figures(r.spec.cluster.gpu), sort_keys=True) for r in runs}
    if len(gpus) > 1 or len(figures) > 1:
        raise ValueError(f"the runs were measured on several GPUs ({', '.join(gpus)}, or one name "
                         f"with different stated peaks): calibrate each GPU's runs on their own")
    unknown = set(constants or ()) - set(TIME_CONSTANTS)
    if unknown:
        raise ValueError(f"constants: unknown or not a step-time constant: {sorted(unknown)} "
                         f"(known: {', '.join(TIME_CONSTANTS)})")
    timed = [r for r in runs if r.step_s]
    first = timed[0].spec if timed else runs[0].spec
    start = {n: v for n in TIME_CONSTANTS if (v := constant_value(first, n)) is not None}
    unset = set(constants or ()) - set(start)
    if unset:
        raise ValueError(f"constants: {sorted(unset)} have no value on the "
                         f"{first.cluster.gpu.name} to start a fit from (the runs do not use them)")
    fitted: dict[str, float] = {}
    chosen: list[str] = []
    if timed and constants:
        chosen = list(constants)
        fitted = fit_constants(timed, chosen, start)
    elif timed:
        chosen, fitted = _fit_identified(timed, max_constants or default_limit(len(timed)),
                                         start)
    fits = tuple(RunFit(r.name, r.step_s, predicted_step_s(r.spec, r.plan),
                        predicted_step_s(r.spec, r.plan, fitted)) for r in timed)
    memory = [r.peak_reserved_bytes / r.peak_alloc_bytes - 1 for r in runs
              if r.peak_reserved_bytes and r.peak_alloc_bytes]
    values = dict(fitted)
    if memory:
        values["allocator_fragmentation"] = float(np.clip(np.median(memory), 0.0, 2.0))
    profile = Profile(
        values, gpu=gpus[0], runs=len(runs), gpu_figures=gpu_figures(runs[0].spec.cluster.gpu),
        residual_before=_rms([math.log(f.before_s / f.measured_s) for f in fits]),
        residual_after=_rms([math.log(f.after_s / f.measured_s) for f in fits]),
        fitted_on=tuple(r.name for r in runs), source=source)
    before = {n: constant_value(runs[0].spec, n) for n in values}
    return Calibration(profile, tuple(chosen), fits, before)


INT_COLUMNS = ("dp", "tp", "pp", "zero", "micro_batch", "grad_accum")
CSV_COLUMNS = ("name", "spec", "dp", "tp", "pp", "zero", "precision", "micro_batch",
               "grad_accum", "recompute", "offload", "tokens_per_s", "peak_gib")


def load_csv(path) -> list[MeasuredRun]:
    """Runs made elsewhere, one per row: ``name, spec`` (a spec YAML, relative to the CSV),
    the plan's fields (``dp, tp, pp, zero, precision, micro_batch, grad_accum, recompute,
    offload``; optional ``sequence_parallel``), and what was measured: ``tokens_per_s`` (the
    whole job's) and/or ``peak_gib`` (torch.cuda.max_memory_allocated, GiB), optionally
    ``reserved_gib`` and ``source``."""
    import csv
    from pathlib import Path

    from planner.spec.loading import load_spec
    from planner.spec.units import GiB

    path = Path(path)
    out = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS[:11] if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} (needs {', '.join(CSV_COLUMNS)})")
        for i, row in enumerate(reader, start=2):
            try:
                spec = load_spec(path.parent / row["spec"])
                fields = {k: int(row[k]) if k in INT_COLUMNS else row[k].strip()
                          for k in CSV_COLUMNS[2:11]}
                if row.get("sequence_parallel"):
                    fields["sequence_parallel"] = row["sequence_parallel"].strip().lower() in (
                        "1", "true", "yes")
                plan = Plan.from_dict(fields)
                tps = float(row["tokens_per_s"]) if row.get("tokens_per_s") else None
                step = (spec.global_batch_sequences * spec.model.seq_len / tps) if tps else None

                def gib(key):
                    return float(row[key]) * GiB if row.get(key) else None
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}, line {i}: {exc}") from None
            out.append(MeasuredRun(row["name"] or f"{path.stem}:{i}", spec, plan, step,
                                   gib("peak_gib"), gib("reserved_gib"),
                                   row.get("source") or path.stem))
    return out


__all__ = ["default_constant", "without_profile", "load_csv", "MeasuredRun", "RunFit", "Calibration", "calibrate", "predicted_step_s",
           "sensitivities", "choose_constants", "fit_constants", "TIME_CONSTANTS"]
