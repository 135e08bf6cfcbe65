"""What the scaling-law lab shows when its sweep is done: the fit's summary beside the published
laws (text), and four plots (matplotlib PNGs):

- ``loss_curves.png``: every point's eval loss against the compute it had spent, coloured by
  model size (Hoffmann et al. 2022, figure 2 left);
- ``isoflop.png``: final loss against N at each compute level, the fitted parabola and its
  minimum (figure 3 left);
- ``frontier.png``: N_opt(C) from the lab's minima and fits beside Chinchilla's, Epoch's and
  Kaplan's, extrapolated to large compute (figure 3 centre / figure 1);
- ``residuals.png``: measured minus approach-3-predicted loss for every point.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
from tabulate import tabulate

from planner.capacity.isoflop import Interval
from planner.capacity.labfit import LabFit, LabPointResult
from planner.capacity.scaling import SIX, preset_law
from planner.spec.spec import Spec

#: the published laws the lab is set beside (planner/spec/data/scaling_laws.yaml)
PUBLISHED = ("hoffmann2022", "epoch2024", "kaplan2020")
PLOTS = ("loss_curves.png", "isoflop.png", "frontier.png", "residuals.png")


def _iv(i: Interval | None, fmt: str = ".3g") -> str:
    if i is None:
        return "-"
    return f"{i.value:{fmt}} [{i.low:{fmt}}, {i.high:{fmt}}]"


def fit_rows(fit: LabFit) -> list[list[str]]:
    """One row per fit and per published law: exponent a (N_opt ∝ C^a), N_opt and tokens per
    parameter at the reference compute, with 95 % bootstrap intervals."""
    rows = []
    for approach, fits in (("approach 2", fit.approach2), ("approach 3", fit.approach3)):
        for count, f in fits.items():
            label = f"lab, {approach}, N {count.replace('_', '-')}"
            if f.error:
                rows.append([label, f"no fit: {f.error}", "", ""])
                continue
            iv = f.intervals
            rows.append([label, _iv(iv.get("a"), ".2f"), _iv(iv.get("optimal_params")),
                         _iv(iv.get("tokens_per_param"))])
    for name in PUBLISHED:
        law = preset_law(name)
        n = law.optimal_params(fit.at)
        a = (law.beta / (law.alpha + law.beta) if law.form == "chinchilla"
             else law.alpha_D / (law.alpha_N + law.alpha_D))
        count = "total" if law.form == "chinchilla" else "non-embedding"
        rows.append([f"{name}, N {count}", f"{a:.2f}", f"{n:.3g}",
                     f"{fit.at / SIX / n / n:.3g}"])
    return rows


def fit_text(spec: Spec, points: Sequence[LabPointResult], fit: LabFit, lab_dir: Path) -> str:
    levels = sorted({p.flops for p in points})
    lines = [f"scaling-law lab: {len(points)} points at {len(levels)} compute levels "
             f"({levels[0]:.3g} to {levels[-1]:.3g} FLOPs), {lab_dir}",
             f"compute-optimal split at C = {fit.at:.3g} FLOPs (95 % bootstrap intervals):", "",
             tabulate(fit_rows(fit), headers=["", "a (N_opt ∝ C^a)", "N_opt",
                                              "tokens/param"]), ""]
    a3 = fit.approach3["total"]
    if a3.law is not None:
        iv = a3.intervals
        res = np.array(a3.residuals)
        lines += [f"approach 3, N total: L = E + A/N^alpha + B/D^beta with E {_iv(iv['E'])}, "
                  f"A {_iv(iv['A'])}, B {_iv(iv['B'])}, alpha {_iv(iv['alpha'], '.3f')}, "
                  f"beta {_iv(iv['beta'], '.3f')}",
                  f"residuals (measured - fitted loss): rms {np.sqrt(np.mean(res**2)):.4f}, "
                  f"largest {np.abs(res).max():.4f} nats/token (in-sample)",
                  f"plan with it: training.scaling_law: {{file: {lab_dir / 'law.yaml'}}}"]
    lines.append(f"plots: {', '.join(str(lab_dir / 'plots' / p) for p in PLOTS)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- plots

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _finish(plt, fig, ax, out: Path, title: str, legend: bool = False) -> None:
    """Title, legend, grid; write the PNG and free the figure."""
    ax.set_title(title)
    if legend:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _count_axis(axis) -> None:
    """Log-scale parameter counts labelled 20K, 100K, 1M (no overlapping minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def label(x, _pos):
        for suffix, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if x >= size:
                return f"{x / size:g}{suffix}"
        return f"{x:g}"
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(label))
    axis.set_minor_formatter(NullFormatter())


def _size_colours(params: Sequence[float]):
    from matplotlib import cm, colors
    norm = colors.LogNorm(vmin=min(params), vmax=max(params) * 1.0001)
    return (lambda n: cm.viridis(norm(n))), cm.ScalarMappable(norm=norm, cmap=cm.viridis)


def _read(results: Path) -> list[dict]:
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def plot_loss_curves(records: list[dict], out: Path) -> None:
    plt = _plt()
    evals = defaultdict(list)
    for r in records:
        if r["kind"] == "eval":
            evals[(r["point"], r["params"])].append((SIX * r["params"] * r["tokens_seen"],
                                                     r["eval_loss"]))
    colour, mappable = _size_colours([n for _, n in evals])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (_, n), curve in sorted(evals.items()):
        c, loss = zip(*curve)
        ax.plot(c, loss, "-", lw=1.2, color=colour(n))
    ax.set_xscale("log")
    ax.set_xlabel("compute spent, 6·N·tokens (FLOPs)")
    ax.set_ylabel("eval loss (nats/token)")
    fig.colorbar(mappable, ax=ax, label="parameters N (all)")
    _finish(plt, fig, ax, out, "training curves, coloured by model size")


def plot_isoflop(points: Sequence[LabPointResult], fit: LabFit, out: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    levels = sorted({p.flops for p in points})
    cmap = plt.get_cmap("plasma")
    a2 = fit.approach2["total"]
    for i, c in enumerate(levels):
        colour = cmap(0.15 + 0.7 * i / max(1, len(levels) - 1))
        level = sorted((p for p in points if p.flops == c), key=lambda p: p.params)
        n = np.array([p.params for p in level])
        loss = np.array([p.loss for p in level])
        ax.plot(n, loss, "o", color=colour, label=f"C = {c:.2g}")
        if len(set(n)) >= 3:
            coef = np.polyfit(np.log(n), loss, 2)
            x = np.linspace(np.log(n.min()) - 0.2, np.log(n.max()) + 0.2, 100)
            ax.plot(np.exp(x), np.polyval(coef, x), "-", color=colour, lw=1)
    if a2.fit is not None:
        ax.plot([m[1] for m in a2.fit.minima], [m[2] for m in a2.fit.minima], "k*", ms=12,
                label="minimum of each profile")
    ax.set_xscale("log")
    _count_axis(ax.xaxis)
    ax.set_xlabel("parameters N (all)")
    ax.set_ylabel("final eval loss (nats/token)")
    _finish(plt, fig, ax, out, "IsoFLOP profiles (approach 2)", legend=True)


def plot_frontier(fit: LabFit, out: Path, top: float = 1e24) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    a2 = fit.approach2["total"]
    lo = min((m[0] for m in a2.fit.minima), default=fit.at) if a2.fit else fit.at
    c = np.logspace(math.log10(lo) - 0.5, math.log10(top), 60)
    if a2.fit is not None:
        ax.plot([m[0] for m in a2.fit.minima], [m[1] for m in a2.fit.minima], "k*", ms=11,
                label="lab: IsoFLOP minima")
        ax.plot(c, [a2.fit.optimal_params(x) for x in c], "k-", lw=2,
                label=f"lab approach 2: a = {a2.fit.a:.2f}")
    a3 = fit.approach3["total"]
    if a3.law is not None:
        ax.plot(c, [a3.law.optimal_params(x) for x in c], "k--", lw=1.5,
                label=f"lab approach 3: a = {a3.law.beta / (a3.law.alpha + a3.law.beta):.2f}")
    styles = {"hoffmann2022": "tab:blue", "epoch2024": "tab:green", "kaplan2020": "tab:red"}
    for name, colour in styles.items():
        law = preset_law(name)
        note = " (non-embedding N)" if law.form == "kaplan" else ""
        ax.plot(c, [law.optimal_params(x) for x in c], "-", color=colour, lw=1.2,
                label=f"{name}{note}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute C = 6ND (FLOPs)")
    ax.set_ylabel("compute-optimal parameters N_opt")
    _finish(plt, fig, ax, out, "compute-optimal frontier: the lab beside published laws",
            legend=True)


def plot_residuals(points: Sequence[LabPointResult], fit: LabFit, out: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    a3 = fit.approach3["total"]
    levels = sorted({p.flops for p in points})
    markers = "osD^v<>p"
    if a3.law is not None:
        for i, c in enumerate(levels):
            idx = [j for j, p in enumerate(points) if p.flops == c]
            ax.plot([points[j].params for j in idx], [a3.residuals[j] for j in idx],
                    markers[i % len(markers)], label=f"C = {c:.2g}")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no approach-3 fit: {a3.error}", ha="center", transform=ax.transAxes)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    _count_axis(ax.xaxis)
    ax.set_xlabel("parameters N (all)")
    ax.set_ylabel("measured - fitted loss (nats)")
    _finish(plt, fig, ax, out, "residuals of the approach-3 fit (in-sample)")


def plot_lab(spec: Spec, results: Path, fit: LabFit, out_dir: Path,
             points: Sequence[LabPointResult] | None = None) -> list[Path]:
    """The four plots from results.jsonl and the fit; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = _read(results)
    if points is None:
        points = [LabPointResult(r["flops"], r["params"], r["params_non_embedding"], r["tokens"],
                                 r["eval_loss"]) for r in records if r["kind"] == "final"]
    plot_loss_curves(records, out_dir / PLOTS[0])
    plot_isoflop(points, fit, out_dir / PLOTS[1])
    plot_frontier(fit, out_dir / PLOTS[2])
    plot_residuals(points, fit, out_dir / PLOTS[3])
    return [out_dir / p for p in PLOTS]


__all__ = ["fit_text", "fit_rows", "plot_lab", "PLOTS", "PUBLISHED"]
