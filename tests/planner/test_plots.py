"""`plan SPEC --plot DIR` (planner/plots.py): the PNGs are written, one line each, at their figure
size and not blank; every bar is the sum of the terms the text report prints, so its top is the
report's total; a sweep marks the values with no feasible plan; without matplotlib, one line."""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from planner.capacity.compare import compare, parse_compare
from planner.capacity.whatif import sweep
from planner.plots import (DPI, compare_figure, memory_figure, memory_stack, sweep_figure,
                           time_figure, time_stack)
from planner.report import to_text
from planner.search.engine import search
from planner.spec.loading import load_spec
from planner.spec.units import GiB
from tests.conftest import invoke

ROOT = Path(__file__).resolve().parents[2]
SPEC_7B = ROOT / "specs" / "7b_on_64xA100.yaml"
SPEC_TINY = ROOT / "specs" / "tiny_cpu.yaml"




def assert_picture(path: Path, width: int, height: int) -> None:
    """A PNG of this many pixels with something drawn on it: many colours, not one flat fill."""
    from matplotlib.image import imread
    img = imread(path)
    assert img.shape[:2] == (height, width), (path.name, img.shape)
    colours = np.unique(img.reshape(-1, img.shape[2]), axis=0)
    assert len(colours) > 20, (path.name, len(colours))
    assert img[..., :3].std() > 0.05, path.name


def wrote(stdout: str) -> list[str]:
    return [line[len("wrote "):] for line in stdout.splitlines() if line.startswith("wrote ")]


# ---------------------------------------------------------------------------- plan report

@pytest.mark.parametrize("spec_path, plans, width", [(SPEC_7B, 8, 1936), (SPEC_TINY, 1, 770)],
                         ids=["7b", "tiny"])
def test_report_plots(tmp_path, spec_path, plans, width):
    """The report is printed as without --plot, then one line per file; a bar per top plan (the
    figure widens with them); 5.5 in high at 110 dpi."""
    out = tmp_path / "plots"
    result = invoke(spec_path, "--plot", out)
    assert result.exit_code == 0, result.stderr
    plain = invoke(spec_path)
    assert result.stdout.startswith(plain.stdout)
    assert wrote(result.stdout) == [str(out / "memory.png"), str(out / "step_time.png")]
    assert sorted(p.name for p in out.iterdir()) == ["memory.png", "step_time.png"]
    for name in ("memory.png", "step_time.png"):
        assert_picture(out / name, width, round(5.5 * DPI))
    spec = load_spec(spec_path)
    top = search(spec).feasible[:spec.search.top]
    assert len(top) == plans
    fig = memory_figure(top, spec, "t")
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert [t.split(" ", 1)[0] for t in ticks] == [f"#{i + 1}" for i in range(plans)]
    assert top[0].plan.label.split(" ")[0] in ticks[0]


def _bar_tops(ax, n: int) -> list[float]:
    """The top of each stacked bar as drawn: the sum of its segments' heights."""
    tops = [0.0] * n
    for container in ax.containers:
        for i, patch in enumerate(container.patches):
            tops[i] += patch.get_height()
    return tops


def _printed(text: str, label: str) -> str:
    """The number the report prints on the row with this label ('= required' and 'required'
    alike: the rows that are sums may carry a '= ')."""
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 2 and cells[0].lstrip("=+ ") == label:
            return cells[1]
    raise AssertionError(f"no {label!r} row in the report")


def _agrees(printed: str, value: float) -> bool:
    """A printed number is ``value`` rounded to the places it shows."""
    number = printed.replace(",", "")
    places = len(number.partition(".")[2])
    return abs(float(number) - value) <= 0.5 * 10 ** -places + 1e-12


@pytest.mark.parametrize("spec_path", [SPEC_7B, SPEC_TINY], ids=["7b", "tiny"])
def test_bars_add_up_to_the_text_reports_totals(spec_path):
    """Memory: the terms at the peak add up to the report's 'peak allocated', and with the
    fragmentation and the CUDA context to its 'required'.  Time: the terms add up to its 'step'.
    The top-plans table's step time and allocated peak agree for every plan, and the drawn bars
    are those sums."""
    spec = load_spec(spec_path)
    result = search(spec)
    text = to_text(result, [], str(spec_path))
    top = list(result.feasible[:spec.search.top])
    memory, time = memory_stack(top[0]), time_stack(top[0])
    assert [label for label, _ in memory[-2:]] == ["allocator fragmentation", "CUDA context"]
    assert _agrees(_printed(text, "peak allocated"), sum(b for _, b in memory[:-2]) / GiB)
    assert _agrees(_printed(text, "required"), sum(b for _, b in memory) / GiB)
    assert _agrees(_printed(text, "step"), sum(s for _, s in time))
    lines = text[text.index("top plans"):].splitlines()
    spans = [m.span() for m in re.finditer(r"-+", lines[2])]  # the columns, by the rule line

    def cells(line: str) -> list[str]:
        return [line[a:b].strip() for a, b in spans]
    headers = cells(lines[1])
    peak = next(h for h in ("alloc", "peak GiB") if h in headers)  # the table's name for it
    for e, line in zip(top, lines[3:3 + len(top)]):
        row = dict(zip(headers, cells(line)))
        assert _agrees(row["step s"], sum(s for _, s in time_stack(e))), row
        assert _agrees(row[peak], sum(b for _, b in memory_stack(e)[:-2]) / GiB), row
        assert sum(b for _, b in memory_stack(e)) == pytest.approx(e.required_bytes)
    drawn = _bar_tops(memory_figure(top, spec, "t").axes[0], len(top))
    assert drawn == pytest.approx([e.required_bytes / GiB for e in top])
    drawn = _bar_tops(time_figure(top, "t").axes[0], len(top))
    assert drawn == pytest.approx([e.step_time_s for e in top])


def test_capacity_and_usable_are_horizontal_lines():
    spec = load_spec(SPEC_7B)
    top = search(spec).feasible[:3]
    ax = memory_figure(top, spec, "t").axes[0]
    levels = sorted(line.get_ydata()[0] for line in ax.get_lines())
    assert levels == pytest.approx(sorted([spec.cluster.gpu.memory_gib,
                                           top[0].usable_bytes / GiB]))


# ---------------------------------------------------------------------------------- sweep

def test_sweep_plot_marks_infeasible_values(tmp_path):
    """tiny needs 2.3 GiB per GPU: at 0.5 and 1 GiB nothing fits, and each panel says so."""
    result = invoke(SPEC_TINY, "--sweep", "cluster.gpu.memory_gib=0.5,1,2,8", "--plot", tmp_path)
    assert result.exit_code == 0, result.stderr
    png = tmp_path / "sweep_cluster.gpu.memory_gib.png"
    assert wrote(result.stdout) == [str(png)]
    assert_picture(png, round(13 * DPI), round(7.5 * DPI))
    spec = load_spec(SPEC_TINY)
    rows = sweep(spec, "cluster.gpu.memory_gib", [0.5, 1, 2, 8])
    fig = sweep_figure(rows, "cluster.gpu.memory_gib", "t")
    assert len(fig.axes) == 6
    for ax in fig.axes:
        crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
        assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [0.5, 1.0], ax.get_title()
    step = [line for line in fig.axes[0].get_lines() if line.get_marker() == "o"][0]
    assert list(step.get_xdata()) == [2.0, 8.0]
    assert list(step.get_ydata()) == pytest.approx([r.best.step_time_s for r in rows[2:]])


def test_sweep_plot_7b(tmp_path):
    result = invoke(SPEC_7B, "--sweep", "cluster.nodes=4,8,16", "--plot", tmp_path)
    assert result.exit_code == 0, result.stderr
    assert_picture(tmp_path / "sweep_cluster.nodes.png", round(13 * DPI), round(7.5 * DPI))


# -------------------------------------------------------------------------------- compare

@pytest.mark.parametrize("spec_path, arg", [(SPEC_7B, "tp=1,2,3"), (SPEC_TINY, "zero=2,3")],
                         ids=["7b", "tiny"])
def test_compare_plot(tmp_path, spec_path, arg):
    result = invoke(spec_path, "--compare", arg, "--plot", tmp_path)
    assert result.exit_code == 0, result.stderr
    axis = arg.split("=")[0]
    png = tmp_path / f"compare_{axis}.png"
    assert wrote(result.stdout) == [str(png)]
    n = len(arg.split(","))
    assert_picture(png, round(2 * (1.6 * n + 4.8) * DPI), round(5.5 * DPI))
    c = compare(load_spec(spec_path), *parse_compare(arg))
    memory_ax, time_ax = compare_figure(c).axes[:2]
    drawn = [v.estimate for v in c.variants]
    assert _bar_tops(memory_ax, n) == pytest.approx(
        [0.0 if e is None else e.required_bytes / GiB for e in drawn])
    assert _bar_tops(time_ax, n) == pytest.approx(
        [0.0 if e is None else e.step_time_s for e in drawn])
    if arg.startswith("tp"):  # tp=3 does not divide 64 GPUs: its slot says why
        notes = [t.get_text() for t in memory_ax.texts if t.get_text().startswith("rejected")]
        assert len(notes) == 1 and "world size" in notes[0].replace("\n", " ")


# ------------------------------------------------------------------------------- failures

def test_json_keeps_stdout_one_object(tmp_path):
    result = invoke(SPEC_TINY, "--json", "--plot", tmp_path)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["best"] is not None
    assert wrote(result.stderr) == [str(tmp_path / "memory.png"), str(tmp_path / "step_time.png")]


def test_without_matplotlib_one_line_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    result = invoke(SPEC_7B, "--plot", tmp_path / "plots")
    assert result.exit_code == 1
    assert result.stderr == "error: --plot needs matplotlib (pip install matplotlib)\n"
    assert result.stdout == ""
    assert not (tmp_path / "plots").exists()


def test_an_unwritable_directory_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = invoke(SPEC_TINY, "--plot", blocker / "plots")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --plot {blocker / 'plots'}: "), lines


def test_a_budget_spec_plots_only_a_sweep(tmp_path):
    result = invoke(ROOT / "specs" / "budget_64xA100_30days.yaml", "--plot", tmp_path)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --plot draws the plan report, a --sweep or a "
                                    "--compare")
    assert not list(tmp_path.iterdir())


def test_a_question_has_no_plot(tmp_path):
    result = invoke(SPEC_7B, "--min", "gpus", "--days", "60", "--plot", tmp_path / "plots")
    assert result.exit_code == 1
    assert result.stderr == ("error: --plot draws the plan report, a --sweep or a --compare, not "
                             "the answer to --max or --min\n")
    assert not (tmp_path / "plots").exists()
