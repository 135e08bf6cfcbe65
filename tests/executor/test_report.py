"""loss.png: the loss, the learning rate and tokens/s against the plan's prediction, drawn from a
synthetic metrics.jsonl (no launch) and read back as an image."""
from __future__ import annotations

import json
import math

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("matplotlib")

from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.image import imread  # noqa: E402

from executor import report  # noqa: E402
from executor.report import (loss_figure, plot_loss, predicted, read_metrics,  # noqa: E402
                             write_report)
from executor.run import make_options, prepare_run_dir  # noqa: E402
from executor.rundir import RunDir  # noqa: E402
from planner.plan.strategy import Plan  # noqa: E402
from planner.spec.loading import spec_from_dict  # noqa: E402
from planner.spec.units import Offload, Precision, Recompute, ZeroStage  # noqa: E402

STEPS, EVAL_EVERY, PEAK_LR = 40, 10, 1e-3
PLAN = Plan(2, 1, 1, ZeroStage.GRADIENTS, Precision.FP32, 2, 2, Recompute.NONE, Offload.NONE)
PLANNED_COLOUR = "tab:red"  #: report.loss_figure's planned tokens/s line


def write_metrics(run: RunDir) -> None:
    """What executor.train writes: a falling loss, warmup then cosine decay, tokens/s slow at
    the first step then steady with some noise, and an eval every EVAL_EVERY steps."""
    lines = []
    for step in range(1, STEPS + 1):
        lr = PEAK_LR * min(1.0, step / 4) * (0.55 + 0.45 * math.cos(math.pi * step / STEPS))
        tokens_per_s = 2_000.0 if step == 1 else 9_000.0 + 400 * math.sin(step)
        lines.append({"kind": "train", "step": step, "loss": 8 - 2 * math.log(step), "lr": lr,
                      "grad_norm": 1.0, "step_time_s": 1024 / tokens_per_s,
                      "tokens": 1024 * step, "tokens_per_s": tokens_per_s})
        if step % EVAL_EVERY == 0:
            lines.append({"kind": "eval", "step": step, "eval_loss": 8.1 - 2 * math.log(step)})
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in lines))


@pytest.fixture
def run(tmp_path) -> RunDir:
    spec = spec_from_dict({
        "model": {"arch": "gpt2", "n_layers": 2, "d_model": 64, "n_heads": 4, "vocab_size": 512,
                  "seq_len": 64},
        "cluster": {"gpu": {"name": "cpu", "memory_gib": 8, "peak_tflops": {"fp32": 0.2},
                            "hbm_gbps": 20, "intra_node_link": "pcie", "intra_node_gbps": 10,
                            "accelerator": "cpu"}, "nodes": 1, "gpus_per_node": 2},
        "training": {"tokens": 40 * 8 * 64, "global_batch_sequences": 8}})
    r = prepare_run_dir(spec, PLAN, tmp_path / "run", make_options(spec, PLAN), with_data=False)
    write_metrics(r)
    return r


def pixels_of(image, colour: str) -> int:
    """How many pixels are ``colour`` (to within PNG rounding)."""
    return int((np.abs(image[..., :3] - np.array(to_rgb(colour))).max(axis=-1) < 1.5 / 255).sum())


@pytest.mark.parametrize("planned", [20_000.0, None], ids=["planned", "not-predicted"])
def test_loss_png_is_a_picture_of_the_run(run, planned):
    """700 x 800 pixels (7 x 8 in at 100 dpi), not blank, the planned line there only when the
    plan predicts a speed."""
    plot_loss(run, planned, 9_000.0)
    image = imread(run.loss_png)
    assert image.shape == (800, 700, 4)
    rgb = image[..., :3].reshape(-1, 3)
    assert rgb.var() > 0 and len(np.unique(rgb, axis=0)) > 50
    assert (pixels_of(image, PLANNED_COLOUR) > 300) is (planned is not None)


def test_the_panels_say_what_they_show(run):
    """Loss, learning rate and tokens/s over the step, with units; the lr and tokens/s curves are
    the metrics' own; the planned and measured speeds are horizontal lines at their values."""
    train, evals = read_metrics(run)
    fig = loss_figure(train, evals, "run", planned_tokens_per_s=20_000.0,
                      measured_tokens_per_s=9_000.0)
    loss, lr, speed = fig.axes
    assert [ax.get_ylabel() for ax in fig.axes] == ["cross-entropy (nats/token)",
                                                    "learning rate", "tokens/s"]
    assert speed.get_xlabel() == "optimizer step"
    assert [line.get_label() for line in loss.lines] == ["train loss", "eval loss"]
    assert list(lr.lines[0].get_ydata()) == [r["lr"] for r in train]
    assert list(speed.lines[0].get_ydata()) == [r["tokens_per_s"] for r in train]
    flat = {line.get_label(): set(line.get_ydata()) for line in speed.lines[1:]}
    assert flat == {"measured, median (9,000)": {9_000.0}, "planned (20,000)": {20_000.0}}
    assert speed.get_ylim()[1] > 20_000.0  # the planned line is inside the panel


def test_the_report_draws_the_plans_prediction(run, monkeypatch):
    """write_report hands loss.png the planner's tokens/s for this plan and the median it
    measured, and the line is in the picture."""
    seen = {}

    def spy(train, evals, title, planned_tokens_per_s=None, measured_tokens_per_s=None):
        seen.update(planned=planned_tokens_per_s, measured=measured_tokens_per_s)
        return loss_figure(train, evals, title, planned_tokens_per_s, measured_tokens_per_s)

    monkeypatch.setattr(report, "loss_figure", spy)
    spec, plan, _ = run.load()
    write_report(spec, plan, run)
    assert seen["planned"] == predicted(spec, plan)["tokens_per_s"] > 0
    assert seen["measured"] == json.loads(run.report_json.read_text())["measured"]["tokens_per_s"]
    assert pixels_of(imread(run.loss_png), PLANNED_COLOUR) > 300
