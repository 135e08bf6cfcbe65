"""The capacity questions' reports: budget mode's trade-off table, an inverse question's answer,
a sweep's rows, the scaling-law lab's grid and a calibration's fit, as aligned text or one JSON
object.  The plan report and the number formats they share are planner/report.py.  Nothing here
computes an estimate; it only formats."""
from __future__ import annotations

from typing import Any, Optional

from tabulate import tabulate

from planner.capacity.budget import BudgetResult, Candidate, budget_seconds
from planner.capacity.lab import LabGrid, lab_learning_rate
from planner.capacity.scaling import law_mapping, law_of, loss_warning
from planner.capacity.whatif import SweepRow
from planner.estimate.predict import SECONDS_PER_DAY
from planner.model.shape import param_counts
from planner.report import (count, cost_words, duration, estimate_json, money, plan_label, sig,
                            to_json)
from planner.spec.spec import Spec
from planner.spec.units import GiB


def _hours(seconds: Optional[float]) -> str:
    return "" if seconds is None else f"{seconds / 3600:,.2f}"


# --------------------------------------------------------------------------------- budget mode

def _budget_words(spec: Spec) -> str:
    b, c = spec.training.budget, spec.cluster
    where = f"{c.world_size} x {c.gpu.name}"
    seconds = budget_seconds(b, c.world_size)
    if seconds is None:
        return f"{b.flops:.3g} model FLOPs on {where}"
    if b.kind == "days":
        stated = f"{b.days:g} days"
    elif b.kind == "gpu_hours":
        stated = f"{b.gpu_hours:,.0f} GPU-hours"
    else:
        stated = f"${b.dollars:,.0f} at ${b.price_per_gpu_hour:g}/GPU-hour"
    return (f"{stated} on {where}: {seconds / SECONDS_PER_DAY:,.1f} days wall-clock, "
            f"{seconds * c.world_size / 3600:,.0f} GPU-hours")


def _loss_warning(law, c: Candidate):
    return loss_warning(law, c.loss, c.model.vocab_size) if c.feasible else None


def _candidate_row(c: Candidate, is_pick: bool, law) -> list:
    m, b = c.model, c.best
    shape = f"{m.n_layers} x {m.d_model}"
    if not c.feasible:
        return ["", m.name, shape, sig(c.params / 1e9), "", "", "", "", "", c.reason]
    return ["<- pick" if is_pick else ("+" if c.refined else ""), m.name, shape,
            sig(c.params / 1e9), f"{c.tokens:.2e}", sig(c.tokens_per_param), sig(c.days),
            f"{b.mfu:.1%}",
            f"{c.loss:.4f}" + (" !" if _loss_warning(law, c) else ""), plan_label(b)]


def budget_text(result: BudgetResult, source: str = "") -> str:
    """The trade-off table of budget mode (docs/capacity-planning.md), the pick marked."""
    spec, law, pick = result.spec, result.law, result.pick
    m = spec.model
    title = f" ({spec.name})" if spec.name else ""
    lines = [f"pretrain-planner: {source}{title}, budget mode"]
    if spec.description:
        lines.append(spec.description)
    lines += [
        f"budget   {_budget_words(spec)}",
        f"law      {law.describe()} (nats/token)",
        f"family   {m.arch.value}-style shapes from {m.name}: heads of 128, d_model/n_layers 64 "
        f"to 128, d_ff {'8/3 d (multiple of 256)' if m.activation.value == 'swiglu' else '4 d'}, "
        f"vocab {m.vocab_size}, seq {m.seq_len}, global batch {spec.global_batch_sequences} "
        f"sequences",
        "",
    ]
    rows = [_candidate_row(c, c is pick, law) for c in result.candidates]
    lines.append(tabulate(rows, headers=["", "model", "layers x d", "N (B)", "D tokens", "D/N",
                                         "days", "MFU", "loss", "best plan / why not"],
                          colalign=("left", "left", "right", "right", "right", "right", "right",
                                    "right", "right", "left"), maxcolwidths=[None] * 9 + [70],
                          disable_numparse=True))
    if any(c.refined for c in result.candidates):
        lines.append("+ widths between the ladder's, searched around the lowest predicted loss "
                     "(multiples of 256)")
    warned = [c for c in result.candidates if _loss_warning(law, c)]
    if warned:
        lines.append(f"! {_loss_warning(law, warned[0])}")
    lines.append("")
    if pick is None:
        lines.append("NO CANDIDATE can train within the budget on this cluster.")
        return "\n".join(lines)
    opt = law.compute_optimal(6.0 * law.params(param_counts(pick.model)) * pick.tokens)
    lines += [
        f"pick     {pick.model.name}: {pick.params / 1e9:.3g}B parameters, "
        f"{pick.tokens:.3g} tokens ({pick.tokens_per_param:.1f}/param), predicted loss "
        f"{pick.loss:.4f}; "
        f"{pick.days:,.1f} days at MFU {pick.best.mfu:.1%} with {plan_label(pick.best)}",
        f"         {cost_words(pick.result.spec, pick.best, pick.tokens)}",
        f"         the law's compute-optimal split of the pick's 6ND = {opt.flops:.3g} FLOPs: "
        f"{opt.params / 1e9:.3g}B parameters x {opt.tokens:.3g} tokens "
        f"({opt.tokens_per_param:.1f}/param); the family's sizes are discrete",
    ]
    return "\n".join(lines)


def _candidate_json(c: Candidate, law) -> dict[str, Any]:
    m, b = c.model, c.best
    return {"model": m.name, "n_layers": m.n_layers, "d_model": m.d_model, "n_heads": m.n_heads,
            "n_kv_heads": m.n_kv_heads, "d_ff": m.d_ff, "params": c.params,
            "tokens": c.tokens if c.feasible else None,
            "tokens_per_param": c.tokens_per_param if c.feasible else None,
            "days": c.days, "mfu": b.mfu if c.feasible else None,
            "predicted_loss": c.loss, "searched": c.result is not None,
            "plan": b.plan.label if c.feasible else None, "reason": c.reason or None,
            "loss_warning": _loss_warning(law, c)}


def budget_json(result: BudgetResult, source: str = "") -> dict[str, Any]:
    spec, law, pick = result.spec, result.law, result.pick
    b = spec.training.budget
    seconds = budget_seconds(b, spec.cluster.world_size)
    gpu_hours = None if seconds is None else seconds * spec.cluster.world_size / 3600
    return {
        "mode": "budget", "spec": source, "name": spec.name,
        "budget": {**b.model_dump(), "kind": b.kind, "seconds": seconds, "gpu_hours": gpu_hours},
        "law": law_mapping(law),
        "candidates": [_candidate_json(c, law) for c in result.candidates],
        "pick": None if pick is None else result.candidates.index(pick),
        "plan": None if pick is None else to_json(pick.result, [], source),
    }


# ------------------------------------------------------------------------- inverse questions

def answer_text(answer, spec: Spec, source: str = "") -> str:
    """One inverse question's answer (planner/capacity/inverse.py): the value, the plan that
    achieves it with its time and cost, what binds and how it was found."""
    title = f" ({spec.name})" if spec.name else ""
    lines = [f"pretrain-planner: {source}{title}", f"question {answer.question}"]
    if answer.value is None:
        lines.append("answer   none")
    else:
        what = f" ({answer.label})" if answer.label else ""
        lines.append(f"answer   {answer.value:,}{what}")
    e = answer.estimate
    if e is not None:
        lines.append(f"plan     {e.plan.label}: {e.required_bytes / GiB:.1f} of "
                     f"{e.usable_bytes / GiB:.1f} GiB usable per GPU ({e.verdict})")
        if e.time is not None and answer.tokens:
            lines.append(f"speed    {e.step_time_s:.3g} s/step, MFU {e.mfu:.1%}; "
                         f"{duration(e.days_to_train(answer.tokens) * SECONDS_PER_DAY)} for "
                         f"{answer.tokens:.3g} tokens on {e.plan.world_size:,} GPU"
                         f"{'s' if e.plan.world_size != 1 else ''}")
            lines.append(f"cost     {cost_words(spec, e, answer.tokens)}")
    lines.append(f"binding  {answer.binding}")
    if answer.expression:
        lines.append(f"memory   required(x) = {answer.expression}; = usable at x = "
                     f"{answer.memory_limit:.4g}")
    lines.append(f"method   {answer.method}")
    return "\n".join(lines)


def answer_json(answer, spec: Spec, source: str = "") -> dict[str, Any]:
    e = answer.estimate
    return {"mode": "question", "spec": source, "name": spec.name,
            "question": answer.question, "value": answer.value, "label": answer.label or None,
            "binding": answer.binding, "method": answer.method,
            "memory_limit": answer.memory_limit, "expression": answer.expression,
            "tokens": answer.tokens,
            "plan": None if e is None else estimate_json(e, answer.tokens, spec)}


# --------------------------------------------------------------------------------------- sweep

def sweep_text(rows: list[SweepRow], path: str) -> str:
    """One row per value; in budget mode each row is the pick for that value.  A line below says
    from which value on the global batch leaves one micro-batch per data-parallel rank."""
    picked = any(r.picked for r in rows)
    ok = [r for r in rows if r.best is not None]
    table = []
    for r in rows:
        b = r.best
        name = f"{r.spec.model.name} ({r.params / 1e9:.3g}B)" if r.best else ""
        model = [name] if picked else []
        if b is None:
            table.append([r.value, f"{r.gpus:,}", *model, "", "", "", "", "", "", "", "",
                          r.reason])
            continue
        table.append([r.value, f"{r.gpus:,}", *model, sig(b.step_time_s),
                      f"{b.tokens_per_s:,.0f}", f"{b.mfu:.1%}", sig(r.days),
                      "" if r.gpu_hours is None else count(r.gpu_hours),
                      "" if r.cost_usd is None else money(r.cost_usd),
                      f"{r.peak_gib:.1f}", "" if r.loss is None else f"{r.loss:.4f}",
                      plan_label(b)])
    headers = [path, "GPUs", *(["pick"] if picked else []), "step s", "tokens/s", "MFU", "days",
               "GPU-h", "cost", "peak GiB", "loss", "best plan / why not"]
    text = tabulate(table, headers=headers, maxcolwidths=[None] * (len(headers) - 1) + [80],
                    disable_numparse=True, colalign=("right", "right") + ("left",) * picked
                    + ("right",) * 8 + ("left",))
    capped = next((r for r in ok if r.best.plan.grad_accum == 1), None)
    if capped is not None:
        p = capped.best.plan
        text += (f"\nfrom {path}={capped.value} on, the global batch "
                 f"({capped.spec.global_batch_sequences:,} sequences) leaves one micro-batch per "
                 f"data-parallel rank (mb{p.micro_batch}×ga1 at dp {p.dp}): more GPUs shrink "
                 f"micro-batches and expose communication; plan SPEC (no sweep) says what batch "
                 f"would restore the MFU")
    return text


def sweep_json(rows: list[SweepRow], path: str) -> dict[str, Any]:
    return {"mode": "sweep", "path": path, "rows": [r.as_dict() for r in rows]}


# ------------------------------------------------------------------------------- the lab

def _lab_lr(lab) -> str:
    if lab.learning_rate == "width":
        return "6e-4 x 768 / d_model (1/width from GPT-3 Small, muP)"
    return f"{lab.learning_rate:g} for every point"


def lab_text(grid: LabGrid, source: str = "") -> str:
    """The scaling-law lab's IsoFLOP grid: every point's size, tokens, steps, plan and
    predicted time on the spec's cluster."""
    spec = grid.spec
    lab, law = spec.training.lab, law_of(spec)
    title = f" ({spec.name})" if spec.name else ""
    budget = (f"{lab.flops:.3g} FLOPs" if lab.flops is not None
              else f"{lab.hours:g} hours on {spec.cluster.world_size} x {spec.cluster.gpu.name}")
    lines = [f"pretrain-planner: {source}{title}, scaling-law lab", *(
        [spec.description] if spec.description else []),
        f"budget   {budget}: {lab.levels} compute levels x {lab.level_ratio:g}, {lab.sizes} sizes "
        f"from 1/{lab.spread:g} to {lab.spread:g} x the optimum of {law.name}",
        f"family   {spec.model.arch.value}-style shapes from {spec.model.name}: vocab "
        f"{spec.model.vocab_size}, seq {spec.model.seq_len}, global batch "
        f"{spec.global_batch_sequences} sequences; each point trains D = C / (6N) tokens",
        f"schedule peak lr {_lab_lr(lab)}, warmup {lab.warmup_fraction:.0%} of each point's "
        f"steps, cosine to 10% of peak at the point's last step", ""]
    rows = [[p.level, f"{p.flops:.3g}", p.model.name, f"{p.model.n_layers} x {p.model.d_model}",
             count(p.params), count(p.tokens), sig(p.tokens / p.params),
             f"{p.steps:,}", f"{lab_learning_rate(lab, p.model):.2g}",
             plan_label(p.best) if p.best else p.reason, duration(p.seconds)]
            for p in grid.points]
    lines.append(tabulate(rows, headers=["level", "C (6ND)", "model", "layers x d", "N",
                                         "D tokens", "D/N", "steps", "peak lr",
                                         "plan / why not", "predicted"],
                          colalign=("right", "right", "left", "right", "right", "right",
                                    "right", "right", "right", "left", "right"),
                          maxcolwidths=[None] * 9 + [60, None], disable_numparse=True))
    lines += ["", f"total    {len(grid.points)} runs, {grid.flops:.3g} FLOPs, "
                  f"{duration(grid.seconds)} predicted on this cluster"]
    return "\n".join(lines)


def lab_json(grid: LabGrid, source: str = "") -> dict[str, Any]:
    spec = grid.spec
    return {"mode": "lab", "spec": source, "name": spec.name,
            "lab": spec.training.lab.model_dump(), "law": law_of(spec).name,
            "flops": grid.flops, "hours": grid.seconds / 3600,
            "points": [{"level": p.level, "flops": p.flops, "model": p.model.name,
                        "n_layers": p.model.n_layers, "d_model": p.model.d_model,
                        "params": p.params, "tokens": p.tokens, "steps": p.steps,
                        "peak_lr": lab_learning_rate(spec.training.lab, p.model),
                        "plan": p.best.plan.label if p.best else None,
                        "hours": None if p.seconds is None else p.seconds / 3600,
                        "reason": p.reason or None} for p in grid.points]}


# ------------------------------------------------------------------------- calibration

def calibration_text(result, output: str) -> str:
    """What ``plan calibrate`` fitted: the constants before and after, every run's step time
    before and after (in-sample), and how to use the profile."""
    p = result.profile
    lines = [f"calibration: {p.runs} run(s) on {p.gpu}, profile written to {output}"]
    for name, value in p.constants.items():
        how = ("median reserved/allocated of the runs that measured both"
               if name == "allocator_fragmentation" else "fitted to the step times")
        lines.append(f"  {name:<24} {result.before[name]:>10.4g} -> {value:<10.4g} ({how})")
    if not p.constants:
        lines.append("  nothing fitted: no run measured a step time the constants change, nor "
                     "reserved and allocated memory")
    if result.runs:
        rows = [[f.name, f"{f.measured_s:.4g}", f"{f.before_s:.4g}", f"{f.error_before:+.1%}",
                 f"{f.after_s:.4g}", f"{f.error_after:+.1%}"] for f in result.runs]
        lines += ["", tabulate(rows, headers=["run", "measured s", "before s", "error",
                                              "after s", "error"],
                               colalign=("left",) + ("right",) * 5, disable_numparse=True),
                  "", f"rms log error of the step time: before {p.residual_before:.3f}, after "
                      f"{p.residual_after:.3f} (in-sample: measured on the runs it was fitted "
                      f"on)"]
    lines.append(f"use it: cluster: {{profile: {output}}} in a spec (relative to the spec)")
    return "\n".join(lines)


def calibration_json(result, output: str) -> dict[str, Any]:
    return {"mode": "calibrate", "profile": output, **result.profile.to_dict(),
            "fitted": list(result.fitted), "before": result.before,
            "per_run": [{"name": f.name, "measured_s": f.measured_s, "before_s": f.before_s,
                         "after_s": f.after_s} for f in result.runs]}
