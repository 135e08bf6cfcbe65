"""Plan vs actual: the planner's predictions for (spec, plan) beside what the run measured, as a
table (report.txt), JSON (report.json) and curves of loss, learning rate and tokens/s against the
plan (loss.png), in the run directory."""
from __future__ import annotations

import json
import statistics
from typing import Any, Optional

from tabulate import tabulate

from planner.estimate.predict import estimate
from planner.model.flops import step_flops, utilisation
from planner.plan.strategy import Plan
from planner.spec.spec import Spec
from planner.spec.units import TERA, GiB

from .ds_config import tokens_per_step
from .rundir import RunDir

NOT_PREDICTED = "not predicted yet"
NOT_MEASURED = "not measured"
WARMUP_STEP_FRACTION = 0.1  #: the first steps (allocations, lazy init) are left out of timings

PREDICTIONS = ("step_time_s", "tokens_per_s", "mfu")  #: Estimate properties; None when untimed


def predicted(spec: Spec, plan: Plan) -> dict[str, Optional[float]]:
    est = estimate(spec, plan)
    out: dict[str, Optional[float]] = {"peak_memory_bytes": est.peak_bytes,
                                       "reserved_memory_bytes": est.reserved_bytes}
    for key in PREDICTIONS:
        try:
            out[key] = float(getattr(est, key))
        except (AttributeError, TypeError):  # an estimate without the step-time model
            out[key] = None
    return out


def read_metrics(run: RunDir) -> tuple[list[dict], list[dict]]:
    records = [json.loads(line) for line in run.metrics.read_text().splitlines() if line.strip()]
    return ([r for r in records if r["kind"] == "train"], [r for r in records if r["kind"] == "eval"])


def measured(spec: Spec, plan: Plan, run: RunDir) -> dict[str, Any]:
    train, evals = read_metrics(run)
    actual = json.loads(run.actual.read_text()) if run.actual.exists() else {}
    timed = train[max(1, int(len(train) * WARMUP_STEP_FRACTION)):] or train
    step_s = statistics.median(r["step_time_s"] for r in timed) if timed else None
    tokens = tokens_per_step(spec, plan)
    out: dict[str, Any] = {"steps": len(train), "step_time_s": step_s,
                           "tokens_per_s": tokens / step_s if step_s else None, "mfu": None,
                           "peak_memory_bytes": None, "peak_memory_per_rank": None,
                           "first_loss": train[0]["loss"] if train else None,
                           "last_loss": train[-1]["loss"] if train else None,
                           "first_eval_loss": evals[0]["eval_loss"] if evals else None,
                           "last_eval_loss": evals[-1]["eval_loss"] if evals else None,
                           "device": actual.get("device")}
    peak_tflops = spec.cluster.gpu.peak_tflops.get(plan.precision.value)
    if step_s and peak_tflops:
        model_flops = step_flops(spec.model, plan, spec.global_batch_sequences).model
        out["mfu"] = utilisation(model_flops, step_s, plan.world_size, peak_tflops * TERA)
    memory = actual.get("peak_memory")
    if memory:
        out["peak_memory_per_rank"] = [m["max_allocated"] for m in memory]
        out["peak_memory_bytes"] = max(out["peak_memory_per_rank"])
    return out


def measured_run(run_dir):
    """A finished run directory as a measured run for ``plan calibrate``: its spec and plan, the
    median step time after warm-up, and on a GPU the peak allocated and reserved bytes."""
    from planner.validate.calibrate import MeasuredRun

    from .errors import ExecutorError
    run = RunDir(run_dir)
    spec, plan, _ = run.load()
    if not run.metrics.is_file():
        raise ExecutorError(f"{run.path}: no metrics.jsonl (the run has not trained a step)")
    meas = measured(spec, plan, run)
    actual = json.loads(run.actual.read_text()) if run.actual.exists() else {}
    memory = actual.get("peak_memory") or []
    reserved = max((m["max_reserved"] for m in memory), default=None)
    return MeasuredRun(run.path.name, spec, plan, meas["step_time_s"],
                       meas["peak_memory_bytes"], reserved, source=str(run.path.parent))


def _fmt(key: str, value: Optional[float], missing: str) -> str:
    if value is None:
        return missing
    if key.endswith("bytes"):
        return f"{value / GiB:.3f} GiB"
    if key == "mfu":
        return f"{100 * value:.1f} %"
    if key == "step_time_s":
        return f"{value:.4f} s"
    return f"{value:,.0f}"


def comparison_rows(pred: dict, meas: dict) -> list[list[str]]:
    rows = []
    labels = {"peak_memory_bytes": "peak memory per GPU (allocated, most-loaded rank)",
              "step_time_s": "step time (median)", "tokens_per_s": "tokens/s", "mfu": "MFU"}
    for key, label in labels.items():
        p, m = pred.get(key), meas.get(key)
        ratio = f"{m / p:.3f}" if p and m else ""
        rows.append([label, _fmt(key, p, NOT_PREDICTED), _fmt(key, m, NOT_MEASURED), ratio])
    return rows


def loss_figure(train: list[dict], evals: list[dict], title: str,
                planned_tokens_per_s: Optional[float] = None,
                measured_tokens_per_s: Optional[float] = None):
    """Three panels over the optimizer step: train and eval loss; the learning rate the
    scheduler set (warmup, then decay); the tokens/s of each step beside the plan's prediction
    and the report's measurement (the median after the first steps), as horizontal lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import StrMethodFormatter

    steps = [r["step"] for r in train]
    fig, (ax_loss, ax_lr, ax_speed) = plt.subplots(
        3, 1, figsize=(7, 8), sharex=True, gridspec_kw={"height_ratios": [2, 1, 1]})
    ax_loss.plot(steps, [r["loss"] for r in train], lw=1, label="train loss")
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-",
                     label="eval loss")
    ax_loss.set_ylabel("cross-entropy (nats/token)")
    ax_loss.set_title(title)
    ax_lr.plot(steps, [r["lr"] for r in train], lw=1, color="tab:green", label="learning rate")
    ax_lr.set_ylabel("learning rate")
    ax_speed.plot(steps, [r["tokens_per_s"] for r in train], lw=1, color="tab:purple",
                  label="measured, per step")
    if measured_tokens_per_s:
        ax_speed.axhline(measured_tokens_per_s, ls=":", color="tab:purple",
                         label=f"measured, median ({measured_tokens_per_s:,.0f})")
    if planned_tokens_per_s:
        ax_speed.axhline(planned_tokens_per_s, ls="--", color="tab:red",
                         label=f"planned ({planned_tokens_per_s:,.0f})")
    ax_speed.set_ylabel("tokens/s")
    ax_speed.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    shown = [r["tokens_per_s"] for r in train] + [planned_tokens_per_s or 0]
    ax_speed.set_ylim(0, 1.25 * max(shown))  # room for the legend above the lines
    ax_speed.set_xlabel("optimizer step")
    for ax in (ax_loss, ax_lr, ax_speed):
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_loss(run: RunDir, planned_tokens_per_s: Optional[float] = None,
              measured_tokens_per_s: Optional[float] = None) -> None:
    """loss.png: ``loss_figure`` of the run's metrics."""
    train, evals = read_metrics(run)
    fig = loss_figure(train, evals, run.path.name, planned_tokens_per_s, measured_tokens_per_s)
    fig.savefig(run.loss_png, dpi=100)
    import matplotlib.pyplot as plt
    plt.close(fig)


def calibration_rows(spec: Spec, plan: Plan, meas: dict) -> tuple[list[list[str]], dict]:
    """With a calibration profile: the step time before (catalog constants) and after (the
    profile's), each against the measurement."""
    from planner.validate.calibrate import without_profile
    p = spec.cluster.profile
    if p is None or not p.constants or not meas.get("step_time_s"):
        return [], {}
    before = predicted(without_profile(spec), plan)["step_time_s"]
    after = predicted(spec, plan)["step_time_s"]
    m = meas["step_time_s"]
    rows = [["step time, catalog constants", f"{before:.4f} s", f"{m:.4f} s", f"{m / before:.3f}"],
            [f"step time, profile {p.file}", f"{after:.4f} s", f"{m:.4f} s", f"{m / after:.3f}"]]
    return rows, {"profile": p.file, "step_time_s_before": before, "step_time_s_after": after}


def write_report(spec: Spec, plan: Plan, run: RunDir) -> str:
    """Writes report.json, report.txt and loss.png; returns the text."""
    pred, meas = predicted(spec, plan), measured(spec, plan, run)
    cal_rows, calibration = calibration_rows(spec, plan, meas)
    table = tabulate(comparison_rows(pred, meas) + cal_rows,
                     headers=["", "planned", "measured", "measured/planned"])
    losses = (f"loss {meas['first_loss']:.4f} -> {meas['last_loss']:.4f}; eval loss "
              f"{meas['first_eval_loss']:.4f} -> {meas['last_eval_loss']:.4f}"
              if meas["last_eval_loss"] is not None else "")
    memory_note = ("" if meas["peak_memory_bytes"] is not None else
                   "memory: not measured on CPU (the process's resident memory is not an "
                   "allocator peak)\n")
    text = (f"plan vs actual: {run.path}\nplan: {plan.label} on {meas['device']}\n"
            f"steps run: {meas['steps']}; {losses}\n{table}\n{memory_note}")
    run.report_txt.write_text(text)
    run.report_json.write_text(json.dumps({"plan": plan.to_dict(), "predicted": pred,
                                           "measured": meas,
                                           **({"calibration": calibration} if calibration
                                              else {})}, indent=1) + "\n")
    if meas["steps"]:
        plot_loss(run, pred["tokens_per_s"], meas["tokens_per_s"])
    return text


__all__ = ["write_report", "predicted", "measured"]
