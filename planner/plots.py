"""Pictures where a picture says more than the text report (``plan SPEC --plot DIR``): the memory
at the peak moment and the step time of the top plans as stacked bars, a sweep's curves, a
comparison's bars side by side.  Each bar is the sum of the same terms the text report prints,
so a bar's top is the report's total: ``memory_stack`` and ``time_stack`` are the one place a
bar's segments come from.

matplotlib is optional for the planner (it is in the executor extra): it is imported inside the
functions, with the Agg backend, and its absence is one line, ``MissingMatplotlib``.  Nothing here
computes an estimate; it only draws."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Sequence, Union

from planner.capacity.compare import Comparison
from planner.capacity.whatif import SweepRow
from planner.compare_report import TIME_LABELS, TIME_TERMS
from planner.errors import PlannerError
from planner.estimate.predict import Estimate, usable_bytes
from planner.model.memory_terms import TERMS
from planner.report import TERM_LABELS
from planner.search.engine import SearchResult
from planner.spec.spec import Spec
from planner.spec.units import GiB

DPI = 110
#: the segments above the allocated peak, up to what the plan requires of the GPU
FRAGMENTATION, CONTEXT = "allocator fragmentation", "CUDA context"
#: one colour per segment, the same in every chart; time terms from another palette (Dark2) so
#: the compare chart's two panels never give one colour two meanings
_DARK2 = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
COLOURS = {**{TERM_LABELS[t]: f"C{i}" for i, t in enumerate(TERMS)},
           FRAGMENTATION: "0.75", CONTEXT: "0.45",
           **{TIME_LABELS[k]: _DARK2[i % len(_DARK2)] for i, k in enumerate(TIME_TERMS)}}
HATCHES = {FRAGMENTATION: "//", CONTEXT: "xx"}

PathLike = Union[str, Path]


class MissingMatplotlib(PlannerError):
    """--plot without matplotlib installed."""

    def __init__(self):
        super().__init__("--plot needs matplotlib (pip install matplotlib)")


def require_matplotlib() -> None:
    """Fail before any work is done when the plots could not be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingMatplotlib() from None


def _plt():
    require_matplotlib()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out: Path) -> Path:
    """Write the PNG at its figure size (no tight bounding box: the size is predictable) and
    free the figure; an unwritable directory is one line naming it."""
    import matplotlib.pyplot as plt
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=DPI)
    except OSError as exc:
        raise PlannerError(f"--plot {out.parent}: cannot write {out.name}: "
                           f"{exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out


# ---------------------------------------------------------------------------- bar segments

def memory_stack(e: Estimate) -> list[tuple[str, float]]:
    """(label, bytes) segments of one memory bar: the terms at the peak moment (they add up to
    the peak allocated), then the allocator's fragmentation and the CUDA context, so the bar's
    top is what the plan requires (the report's 'required', compared with 'usable')."""
    return ([(TERM_LABELS[t], float(getattr(e.memory, t))) for t in TERMS]
            + [(FRAGMENTATION, float(e.reserved_bytes - e.memory.total)),
               (CONTEXT, float(e.cuda_context_bytes))])


def time_stack(e: Estimate) -> list[tuple[str, float]]:
    """(label, seconds) segments of one step-time bar: they add up to the step time."""
    return [(TIME_LABELS[k], float(getattr(e.time.step, k))) for k in TIME_TERMS]


def _plan_tick(e: Estimate, head: str = "") -> str:
    """A plan's label on two lines under its bar, marked as the text report marks it."""
    words = e.plan.label.split(" ")
    marks = (" *" if e.not_executable else "") + (" (tight)" if e.verdict == "tight" else "")
    return f"{head}{' '.join(words[:2])}\n{' '.join(words[2:])}{marks}"


def _stacked(ax, stacks: Sequence[Union[list, None]], scale: float) -> None:
    """Stacked bars, one per stack (None leaves its slot empty); a segment that is zero in every
    bar is left out of the bars and the legend."""
    drawn = [s for s in stacks if s is not None]
    if not drawn:
        return
    labels = [label for label, _ in drawn[0]]
    bottom = [0.0] * len(stacks)
    for j, label in enumerate(labels):
        heights = [0.0 if s is None else s[j][1] / scale for s in stacks]
        if not any(heights):
            continue
        ax.bar(range(len(stacks)), heights, bottom=bottom, width=0.6, label=label,
               color=COLOURS[label], hatch=HATCHES.get(label), edgecolor="white", linewidth=0.5)
        bottom = [b + h for b, h in zip(bottom, heights)]


def _bars_figure(plt, n: int, panels: int = 1):
    width = panels * (1.6 * n + 4.8)  # a slot per bar, and the legend on the right
    return plt.subplots(1, panels, figsize=(max(width, 7.0), 5.5), layout="constrained",
                        squeeze=False)


def _memory_axes(ax, estimates: Sequence[Union[Estimate, None]], spec: Spec) -> None:
    """Memory bars with the GPU's capacity and the usable limit as horizontal lines."""
    _stacked(ax, [None if e is None else memory_stack(e) for e in estimates], GiB)
    capacity, usable = spec.cluster.gpu.memory_bytes / GiB, usable_bytes(spec) / GiB
    ax.axhline(capacity, color="black", linewidth=1.2, label=f"capacity {capacity:.1f} GiB")
    ax.axhline(usable, color="crimson", linestyle="--", linewidth=1.2,
               label=f"usable {usable:.1f} GiB ({spec.search.memory_headroom:.0%} headroom)")
    tops = [e.required_bytes / GiB for e in estimates if e is not None]
    for i, e in enumerate(estimates):
        if e is not None:
            note = "" if e.verdict == "fits" else f"\n{e.verdict}"
            ax.annotate(f"{e.required_bytes / GiB:.1f}{note}", (i, e.required_bytes / GiB),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                        textcoords="offset points")
    ax.set_ylim(0, max(tops + [capacity]) * 1.15)
    ax.set_ylabel("GiB per GPU (most-loaded GPU, at the peak moment)")


def _time_axes(ax, estimates: Sequence[Union[Estimate, None]]) -> None:
    _stacked(ax, [None if e is None else time_stack(e) for e in estimates], 1.0)
    for i, e in enumerate(estimates):
        if e is not None:
            ax.annotate(f"{e.step_time_s:.3g} s\nMFU {e.mfu:.1%}", (i, e.step_time_s),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                        textcoords="offset points")
    tops = [e.step_time_s for e in estimates if e is not None]
    ax.set_ylim(0, max(tops, default=1.0) * 1.18)
    ax.set_ylabel("seconds per optimizer step")


def _title(fig, ax, text: str) -> None:
    """The title, wrapped to the figure's width (a one-bar figure is narrow)."""
    ax.set_title(textwrap.fill(text, int(fig.get_figwidth() * 10)), fontsize=10)


def _ticks(ax, labels: Sequence[str]) -> None:
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.grid(axis="y", alpha=0.3)


# ------------------------------------------------------------------------- the plan report

def memory_figure(estimates: Sequence[Estimate], spec: Spec, title: str):
    plt = _plt()
    fig, axes = _bars_figure(plt, len(estimates))
    ax = axes[0][0]
    _memory_axes(ax, estimates, spec)
    _ticks(ax, [_plan_tick(e, f"#{i + 1} ") for i, e in enumerate(estimates)])
    _title(fig, ax, title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig


def time_figure(estimates: Sequence[Estimate], title: str):
    plt = _plt()
    fig, axes = _bars_figure(plt, len(estimates))
    ax = axes[0][0]
    _time_axes(ax, estimates)
    _ticks(ax, [_plan_tick(e, f"#{i + 1} ") for i, e in enumerate(estimates)])
    _title(fig, ax, title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig


def _name(spec: Spec) -> str:
    return spec.name or spec.model.name


def plot_report(result: SearchResult, out_dir: PathLike) -> list[Path]:
    """memory.png and step_time.png for the report's top plans (``search.top``, the best
    first); returns the paths written.  Nothing is drawn when no plan is feasible."""
    spec = result.spec
    top = list(result.feasible[:spec.search.top])
    if not top:
        return []
    out = Path(out_dir)
    n = f"top {len(top)} plan{'s' if len(top) != 1 else ''}"
    memory = memory_figure(top, spec, f"{_name(spec)}: memory per GPU at the peak moment, {n} "
                                      f"(the bar's top is what the plan requires)")
    paths = [_save(memory, out / "memory.png")]
    time = time_figure(top, f"{_name(spec)}: step time by term, {n}")
    return paths + [_save(time, out / "step_time.png")]


# ---------------------------------------------------------------------------------- sweep

#: the sweep panels: title, the value of a row with a best plan, whether the axis starts at 0
#: (so a 2 % change does not fill the panel; a loss has no meaningful 0)
SWEEP_PANELS = (
    ("step time (s)", lambda r: r.best.step_time_s, True),
    ("tokens/s", lambda r: r.best.tokens_per_s, True),
    ("MFU (%)", lambda r: 100 * r.best.mfu, True),
    ("days to train", lambda r: r.days, True),
    ("peak allocated per GPU (GiB)", lambda r: r.peak_gib, True),
    ("predicted loss (nats/token)", lambda r: r.loss, False),
)


def _tick_number(x: float, _pos=None) -> str:
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def _numeric(values: Sequence) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def sweep_figure(rows: Sequence[SweepRow], path: str, title: str):
    """A panel per quantity of the best plan against the swept value; a value with no feasible
    plan is a red cross on the axis (and a shaded band), not a gap that reads as missing data."""
    plt = _plt()
    from matplotlib.ticker import FuncFormatter
    values = [r.value for r in rows]
    numeric = _numeric(values)
    xs = [float(v) for v in values] if numeric else list(range(len(values)))
    log = numeric and min(xs) > 0 and max(xs) / min(xs) >= 8
    fig, axes = plt.subplots(2, 3, figsize=(13.0, 7.5), layout="constrained")
    infeasible = [x for x, r in zip(xs, rows) if r.best is None]
    for ax, (name, value, from_zero) in zip(axes.flat, SWEEP_PANELS):
        points = [(x, value(r)) for x, r in zip(xs, rows) if r.best is not None
                  and value(r) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", color="C0")
        if name.startswith("peak"):
            # a mark per value, not a line: the usable memory of a GPU is not interpolated
            ax.plot(xs, [usable_bytes(r.spec) / GiB for r in rows], color="crimson",
                    linestyle="none", marker="_", markersize=18, markeredgewidth=2,
                    label="usable")
            ax.legend(fontsize=8)
        for x in infeasible:
            ax.axvline(x, color="crimson", alpha=0.2, linewidth=8)
        if infeasible:
            ax.plot(infeasible, [0.02] * len(infeasible), "x", color="crimson", markersize=10,
                    markeredgewidth=2, transform=ax.get_xaxis_transform(), clip_on=False,
                    label="no feasible plan")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.yaxis.set_major_formatter(FuncFormatter(_tick_number))
        if from_zero:
            ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.05)
        if log:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        long = not numeric and max(len(str(v)) for v in values) > 6
        ax.set_xticklabels([str(v) for v in values], fontsize=8, rotation=25 if long else 0,
                           ha="right" if long else "center")
        if log:
            ax.minorticks_off()
        ax.set_xlabel(path, fontsize=8)
    if infeasible:
        axes.flat[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig


def plot_sweep(rows: Sequence[SweepRow], path: str, out_dir: PathLike) -> list[Path]:
    """sweep_<path>.png: the best plan's step time, tokens/s, MFU, days, peak memory and
    predicted loss against the swept value; returns the path written."""
    spec = rows[0].spec
    infeasible = sum(r.best is None for r in rows)
    note = f" ({infeasible} value{'s' if infeasible != 1 else ''} with no feasible plan: x)" \
        if infeasible else ""
    fig = sweep_figure(rows, path, f"{_name(spec)}: the best plan for each {path}{note}")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", path)
    return [_save(fig, Path(out_dir) / f"sweep_{safe}.png")]


# -------------------------------------------------------------------------------- compare

def compare_figure(c: Comparison):
    """Memory and step time side by side, a bar per value; a rejected value's slot holds its
    rule's reason."""
    plt = _plt()
    fig, axes = _bars_figure(plt, len(c.variants), panels=2)
    memory_ax, time_ax = axes[0]
    estimates = [v.estimate for v in c.variants]
    _memory_axes(memory_ax, estimates, c.spec)
    _time_axes(time_ax, estimates)
    ticks = [f"{c.axis}={v.text}" + (" (best)" if v.is_best else "") + "\n"
             + (_plan_tick(v.estimate) if v.estimate is not None else "rejected")
             for v in c.variants]
    for ax, title in ((memory_ax, "memory per GPU at the peak moment"),
                      (time_ax, "step time by term")):
        _ticks(ax, ticks)
        ax.set_title(title, fontsize=10)
        for i, v in enumerate(c.variants):
            if v.rejected is not None:
                ax.text(i, 0.5, textwrap.fill(f"rejected: {v.rejected.reason}", 22),
                        transform=ax.get_xaxis_transform(), ha="center", va="center",
                        fontsize=7, color="crimson")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    fig.suptitle(f"{_name(c.spec)}: the best plan with {c.axis} set to "
                 f"{', '.join(v.text for v in c.variants)}", fontsize=11)
    return fig


def plot_compare(c: Comparison, out_dir: PathLike) -> list[Path]:
    """compare_<axis>.png; returns the path written."""
    return [_save(compare_figure(c), Path(out_dir) / f"compare_{c.axis}.png")]


__all__ = ["plot_report", "plot_sweep", "plot_compare", "memory_stack", "time_stack",
           "require_matplotlib", "MissingMatplotlib"]
