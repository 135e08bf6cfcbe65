"""The plan report: a search result as aligned text tables or one JSON object
(docs/json-report.md), and the number formats every report shares (significant figures, money,
durations, counts).  The capacity questions' reports are planner/capacity_report.py.  Nothing here
computes an estimate; it only formats."""
from __future__ import annotations

import math
from typing import Any, Optional

from tabulate import tabulate

from planner.capacity.scaling import chinchilla_summary, training_tokens
from planner.estimate.predict import SECONDS_PER_DAY, Estimate
from planner.model.memory_terms import TERMS
from planner.model.shape import param_counts
from planner.search.engine import SearchResult
from planner.spec.spec import Spec
from planner.spec.units import GiB

TERM_LABELS = {
    "parameters": "parameters",
    "fp8_weights": "fp8 weight copies",
    "gradients": "gradients",
    "master_weights": "fp32 master weights",
    "optimizer_states": "optimizer states",
    "activations": "activations",
    "logits_loss": "logits / loss",
    "deepspeed_buffers": "framework buffers",
    "optimizer_step": "optimizer step transient",
    "cublas_workspace": "cuBLAS workspaces",
}


#: the step-time terms (planner/estimate/timing.py StepTime) as the reports name them
TIME_LABELS = {"compute": "compute (GEMMs, attention, element-wise, host)",
               "tp_comm": "tensor-parallel all-reduces",
               "ep_comm": "expert-parallel all-to-alls",
               "cp_comm": "context-parallel exchanges", "pp_comm": "pipeline transfers",
               "bubble": "pipeline bubble", "dp_comm": "data-parallel traffic (exposed)",
               "optimizer": "optimizer step", "offload": "offload (PCIe + host Adam)"}


def _gib(x: float) -> float:
    return round(x / GiB, 3)


def decimals(values: list[Optional[float]], sig: int = 3) -> int:
    """Decimals that give the largest value ``sig`` significant figures."""
    top = max((abs(v) for v in values if v is not None), default=0.0)
    if top == 0 or not math.isfinite(top):
        return 0
    return max(0, sig - 1 - math.floor(math.log10(top)))


def sig(v: Optional[float], figures: int = 3) -> str:
    """A number at ``figures`` significant figures, never in exponent form (153, 18.0, 2.16,
    0.00118), with thousands separators; None is blank."""
    if v is None:
        return ""
    return f"{v:,.{decimals([v], figures)}f}"


def column(values: list[Optional[float]], sig: int = 3, places: Optional[int] = None) -> list[str]:
    """A table column at one precision, so that its numbers line up and add up (17.8, 0.8, 0.0
    rather than 17.8, 0.821, 0.00194): ``places`` decimals, by default those that give its
    largest value ``sig`` significant figures; None is blank."""
    places = decimals(values, sig) if places is None else places
    return ["" if v is None else f"{v:,.{places}f}" for v in values]


def money(x: float) -> str:
    """$1,234; $12.3K; $4.56M: three significant figures above ten thousand dollars."""
    for suffix, size in (("B", 1e9), ("M", 1e6), ("K", 1e4)):
        if x >= size:
            size = 1e3 if suffix == "K" else size
            return f"${sig(x / size)}{suffix}"
    return f"${x:,.0f}"


def cost(spec: Spec, e: Estimate, tokens: float) -> dict[str, Any]:
    """GPU-hours and money to train ``tokens`` with this plan; the price's source says whether it
    is the spec's own or the catalog's default."""
    price, source = spec.cluster.price
    hours = e.gpu_hours(tokens)
    return {"gpu_hours": hours, "price_per_gpu_hour": price, "price_source": source or None,
            "cost_usd": None if price is None else hours * price}


def cost_words(spec: Spec, e: Estimate, tokens: float) -> str:
    c = cost(spec, e, tokens)
    hours = f"{c['gpu_hours']:,.0f} GPU-hours"
    if c["cost_usd"] is None:
        return (f"{hours}; no price for {spec.cluster.gpu.name} in the catalog (set "
                f"cluster.price_per_gpu_hour)")
    return (f"{hours}, {money(c['cost_usd'])} at ${c['price_per_gpu_hour']:.2f}/GPU-hour "
            f"({c['price_source']})")


def plan_label(e: Estimate) -> str:
    """A plan's label, marked when it fits only with less fragmentation than assumed."""
    return e.plan.label + (" (tight)" if e.verdict == "tight" else "")


def duration(seconds: Optional[float]) -> str:
    """Seconds as a person reads them: 45 s, 12.5 min, 3.2 h, 4.1 days."""
    if seconds is None:
        return ""
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.0f} s"


def count(n: float) -> str:
    """A parameter or token count with a suffix: 35.2K, 1.25M, 6.74B."""
    for suffix, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{sig(n / size)}{suffix}"
    return sig(n)


def _tokens(spec: Spec) -> tuple[Optional[float], str]:
    tokens = training_tokens(spec)
    if tokens is None:
        from planner.errors import PlannerError
        raise PlannerError("the plan report needs training.tokens: a budget spec's report is "
                           "budget_text, a lab spec's lab_text")
    if spec.training.tokens == "chinchilla":
        n = param_counts(spec.model).total
        return tokens, (f"{tokens:.3g} tokens (chinchilla: compute-optimal for this model under "
                        f"{spec.training.scaling_law.name}, {tokens / n:.1f} tokens/param)")
    return tokens, f"{tokens:.3g} tokens"


def _scaling_line(spec: Spec, tokens: float) -> str:
    s = chinchilla_summary(spec, tokens)
    loss = "no number" if s["predicted_loss"] is None else f"{s['predicted_loss']:.4f} nats/token"
    optimal = ("no number" if s["compute_optimal_tokens"] is None else
               f"{s['compute_optimal_tokens']:.3g} tokens, "
               f"{s['compute_optimal_tokens_per_param']:.1f}/param")
    line = (f"loss     {loss} predicted by {s['law']} at {s['tokens_per_param']:.1f} tokens/param "
            f"(compute-optimal for this model: {optimal})")
    return line + (f"\n         warning: {s['warning']}" if s["warning"] else "")


def estimate_json(e: Estimate, tokens: Optional[float] = None,
                  spec: Optional[Spec] = None) -> dict[str, Any]:
    t = e.time
    priced = cost(spec, e, tokens) if (t is not None and tokens and spec is not None) else {}
    timing = {} if t is None else {
        "step_time_s": t.step.total,
        "tokens_per_s": t.tokens_per_s,
        "mfu": t.mfu,
        "hfu": t.hfu,
        "days_to_train": e.days_to_train(tokens) if tokens else None,
        "gpus": e.plan.world_size,
        **priced,
        "step_time_breakdown_s": t.step.as_dict(),
        "placement": t.step.placement,
    }
    return {**timing,
        "strategy": e.plan.to_dict(),
        "label": e.plan.label,
        "executable": not e.not_executable,
        "not_executable_reason": e.not_executable or None,
        "memory_gib": {k: round(v, 4) for k, v in e.memory.as_gib().items()},
        "peak_moment": e.memory.moment,
        "peak_stage": e.memory.stage,
        "reserved_gib": _gib(e.reserved_bytes),
        "cuda_context_gib": _gib(e.cuda_context_bytes),
        "required_gib": _gib(e.required_bytes),
        "usable_gib": _gib(e.usable_bytes),
        "free_gib": _gib(e.free_bytes),
        "verdict": e.verdict,
        "margin_gib": _gib(e.margin_bytes),
        "floor_gib": _gib(e.floor_bytes),
        "host_offload_gib_per_node": _gib(e.host_bytes_per_node),
        "flops_per_step": e.flops.hardware,
        "model_flops_per_step": e.flops.model,
        "six_nd_per_step": e.flops.six_nd,
        "tokens_per_step": e.flops.tokens,
    }


def to_json(result: SearchResult, fixes: list[str], source: str = "",
            notes: tuple[str, ...] = ()) -> dict[str, Any]:
    spec = result.spec
    tokens, _ = _tokens(spec)
    best = result.best
    return {
        "spec": source,
        "name": spec.name,
        "description": spec.description,
        "model": {"name": spec.model.name, "params": param_counts(spec.model).total,
                  "active_params": param_counts(spec.model).active,
                  "hf_config": spec.model.hf_config},
        "cluster": {"gpu": spec.cluster.gpu.name, "gpus": spec.cluster.world_size,
                    "gpu_memory_gib": spec.cluster.gpu.memory_gib,
                    "profile": (spec.cluster.profile.model_dump(mode="json")
                                if spec.cluster.profile else None)},
        "training": {"tokens": tokens, "global_batch_sequences": spec.global_batch_sequences,
                     "steps": tokens / best.flops.tokens if best else None},
        "scaling": chinchilla_summary(spec, tokens),
        "runtime": spec.runtime.model_dump(),
        "backend": result.backend.name,
        "executable_only": result.executable,
        "execute_pick_rank": result.first_executable if best else None,
        "evaluated": result.evaluated,
        "feasible": len(result.feasible),
        "best": estimate_json(best, tokens, spec) if best else None,
        "alternatives": [estimate_json(e, tokens, spec) for e in
                         result.feasible[1:spec.search.top]],
        "rejected": {"total": len(result.rejected), "by_reason": dict(result.by_reason.most_common()),
                     "examples": result.examples},
        "nearest_fix": fixes,
        "notes": list(notes),
    }


def _header(spec: Spec, source: str) -> list[str]:
    m, c = spec.model, spec.cluster
    counts = param_counts(m)
    n = counts.total
    moe = (f"; {counts.active / 1e9:.3f} B active: {m.moe_layers} of {m.n_layers} layers route "
           f"to {m.moe.top_k} of {m.moe.experts} experts of width {m.moe.expert_d_ff}"
           + (f" + a shared one of {m.moe.shared_d_ff}" if m.moe.shared_d_ff else "")
           if m.moe_layers else "")
    tokens, tokens_text = _tokens(spec)
    inter = c.inter_node
    title = f" ({spec.name})" if spec.name else ""
    lines = [f"pretrain-planner: {source}{title}"]
    if spec.description:
        lines.append(spec.description)
    return lines + [
        f"model    {m.name}: {n / 1e9:.3f} B parameters{moe} ({m.n_layers} layers, d_model {m.d_model}, "
        f"{m.n_heads} heads / {m.n_kv_heads} kv, d_ff {m.d_ff} {m.activation.value}, vocab "
        f"{m.vocab_size}, seq {m.seq_len}, {m.attention.value} attention)"
        + (f", from {m.hf_config}" if m.hf_config else ""),
        f"cluster  {c.nodes} node(s) x {c.gpus_per_node} {c.gpu.name} ({c.gpu.memory_gib} GiB), "
        f"{c.intra_node.link} {c.intra_node.gbps:g} GB/s, {inter.nics_per_node} x "
        f"{inter.nic_gbit:g} Gb/s {inter.network}",
        *_profile_lines(spec),
        f"training {tokens_text}, global batch {spec.global_batch_sequences} sequences "
        f"({spec.global_batch_sequences * m.seq_len:,} tokens), {spec.training.optimizer.value}",
        _scaling_line(spec, tokens),
    ]


def _profile_lines(spec: Spec) -> list[str]:
    """Which constants came from a calibration profile, from how many runs, and its residual."""
    p = spec.cluster.profile
    if p is None:
        return []
    values = ", ".join(f"{k} {v:.4g}" for k, v in p.constants.items()) or "none"
    fit = (f" (rms log residual {p.residual_after:.3f} on its runs, in-sample)"
           if p.residual_after is not None else "")
    kept = (f"; the spec's own {', '.join(p.kept)} kept over the profile's" if p.kept else "")
    return [f"profile  {p.file}: {values} from {p.runs} measured run(s){fit}{kept}"]


def _memory_table(e: Estimate, spec: Spec) -> str:
    """Every term, then the arithmetic from allocated to free, all in GiB on one GPU."""
    frag = spec.runtime.allocator_fragmentation
    headroom = spec.search.memory_headroom
    cap = spec.cluster.gpu.memory_bytes
    rows = [(TERM_LABELS[t], getattr(e.memory, t)) for t in TERMS] + [
        ("= peak allocated", e.memory.total),
        (f"+ allocator fragmentation ({frag:.0%} of allocated)", e.reserved_bytes - e.memory.total),
        ("= reserved by the caching allocator", e.reserved_bytes),
        ("+ CUDA context (outside the allocator)", e.cuda_context_bytes),
        ("= required", e.required_bytes),
        ("capacity", cap),
        (f"- headroom kept free ({headroom:.0%})", cap - e.usable_bytes),
        ("= usable", e.usable_bytes),
        ("free (usable - required)", e.free_bytes)]
    values = column([v / GiB for _, v in rows], places=2)
    table = tabulate([[label, v] for (label, _), v in zip(rows, values)],
                     headers=["per-GPU memory", "GiB"], colalign=("left", "right"),
                     disable_numparse=True)
    return table + "\n" + verdict_line(e, spec)


def verdict_line(e: Estimate, spec: Spec) -> str:
    """The graded fit verdict with its margin (docs/memory-model.md)."""
    frag = spec.runtime.allocator_fragmentation
    if e.verdict == "fits":
        return (f"verdict: fits, {e.margin_bytes / GiB:.1f} GiB to spare at +{frag:.0%} "
                f"allocator fragmentation")
    if e.verdict == "tight":
        return (f"verdict: tight, {-e.margin_bytes / GiB:.1f} GiB short at +{frag:.0%} "
                f"fragmentation; fits if the allocator reserves at most "
                f"{e.tight_fragmentation:.1%} over what is allocated (the calibration runs "
                f"show 6-45 %); plan --execute sets PYTORCH_CUDA_ALLOC_CONF="
                f"expandable_segments:True for it")
    return (f"verdict: does not fit, {(e.floor_bytes - e.usable_bytes) / GiB:.1f} GiB short "
            f"even if the allocator reserved only what is allocated")


def _alternatives_table(result: SearchResult, tokens: float) -> str:
    spec = result.spec
    shown = result.feasible[:spec.search.top]
    steps = [e.time.step for e in shown]
    places = decimals([st.total for st in steps])  # the time columns add up to the step's
    cols = {
        "step s": column([st.total for st in steps], places=places),
        "compute": column([st.compute for st in steps], places=places),
        "comm": column([st.tp_comm + st.ep_comm + st.cp_comm + st.pp_comm + st.dp_comm for st in steps],
                       places=places),
        "bubble": column([st.bubble for st in steps], places=places),
        "optim": column([st.optimizer + st.offload for st in steps], places=places),
        "tokens/s": [f"{e.tokens_per_s:,.0f}" for e in shown],
        "MFU": [f"{e.mfu:.1%}" for e in shown],
        "days": column([e.days_to_train(tokens) for e in shown]),
        "GPU-h": [count(e.gpu_hours(tokens)) for e in shown],
        "cost": [("" if c["cost_usd"] is None else money(c["cost_usd"]))
                 for c in (cost(spec, e, tokens) for e in shown)],
        "alloc": column([e.memory.total / GiB for e in shown]),
        "required": column([e.required_bytes / GiB for e in shown]),
        "free": column([e.free_bytes / GiB for e in shown]),
    }
    rows = []
    for i, e in enumerate(shown):
        label = e.plan.label + (" *" if e.not_executable else "") + (
            " (tight)" if e.verdict == "tight" else "")
        rows.append([i + 1, label, *(c[i] for c in cols.values())])
    table = tabulate(rows, headers=["#", "plan", *cols], colalign=("right", "left") + (
        "right",) * len(cols), disable_numparse=True)
    frag = spec.runtime.allocator_fragmentation
    usable = shown[0].usable_bytes / GiB if shown else 0.0
    return (table + f"\nmemory columns in GiB per GPU: required = alloc x {1 + frag:.2f} "
            f"(allocator fragmentation) + {spec.runtime.cuda_context_gib:g} CUDA context; free = "
            f"usable {usable:.1f} - required")


def _time_table(e: Estimate) -> str:
    st = e.time.step
    labels = TIME_LABELS
    values = column([getattr(st, k) for k in labels] + [st.total], sig=4)
    rows = [[label, v, f"{getattr(st, k) / st.total:.1%}"]
            for (k, label), v in zip(labels.items(), values)]
    rows.append(["= step", values[-1], "100.0%"])
    return tabulate(rows, headers=["step time", "s", "share"], colalign=("left", "right", "right"),
                    disable_numparse=True)


def _execute_lines(result: SearchResult) -> list[str]:
    """What ``plan --execute`` would do, when it is not the best plan."""
    best = result.best
    if not best.not_executable:
        return []
    pick = result.best_executable
    then = (f"it would run #{result.first_executable + 1}, {pick.plan.label} "
            f"({pick.step_time_s:.3g} s/step)" if pick is not None
            else "no ranked plan is one it can run")
    return [f"execute    plan --execute cannot run this plan with {result.backend.name} "
            f"({best.not_executable}); {then}"]


def to_text(result: SearchResult, fixes: list[str], source: str = "",
            notes: tuple[str, ...] = ()) -> str:
    spec = result.spec
    lines = _header(spec, source)
    best = result.best
    lines.append("")
    if best is None:
        lines.append(f"NO FEASIBLE PLAN among {result.evaluated} candidates.")
    else:
        tokens, _ = _tokens(spec)
        steps = tokens / best.flops.tokens
        lines += [
            f"best plan  {best.plan.label}" + (" (tight: see the memory verdict below)"
                                               if best.verdict == "tight" else ""),
            f"           {len(result.feasible)} of {result.evaluated} candidates are feasible; "
            f"ranked by predicted time to train",
            f"speed      {best.step_time_s:.3g} s/step, {best.tokens_per_s:,.0f} tokens/s, "
            f"MFU {best.mfu:.1%}; {duration(best.days_to_train(tokens) * SECONDS_PER_DAY)} for "
            f"{steps:,.0f} steps "
            f"on {best.plan.world_size:,} GPU{'s' if best.plan.world_size != 1 else ''} (ranks "
            f"placed {best.time.step.placement})",
            f"cost       {cost_words(spec, best, tokens)}",
            *[f"note       {n}" for n in notes],
            *_execute_lines(result),
            f"FLOPs      {best.flops.hardware:.3e} per step (model {best.flops.model:.3e}, "
            f"6ND {best.flops.six_nd:.3e}); {best.flops.hardware * steps:.3e} in total",
            "",
            _time_table(best),
            "",
            f"memory on the most-loaded GPU (pipeline stage {best.memory.stage}), peak during "
            f"{best.memory.moment}:",
            _memory_table(best, spec),
        ]
        if best.host_bytes_per_node:
            lines.append(f"host RAM for offload: {best.host_bytes_per_node / GiB:.1f} GiB per node "
                         f"of {best.host_capacity_bytes / GiB:.0f}")
        lines += ["", "top plans (seconds per step):", _alternatives_table(result, tokens)]
        blocked = [e for e in result.feasible[:spec.search.top] if e.not_executable]
        if blocked:
            lines.append(f"* plan --execute cannot run the plans marked * with "
                         f"{result.backend.name}: "
                         f"{blocked[0].not_executable}")
    if result.rejected:
        lines += ["", f"rejected {len(result.rejected)} of {result.evaluated} candidates:"]
        rows = [[n, key, result.examples[key]] for key, n in result.by_reason.most_common()]
        lines.append(tabulate(rows, headers=["count", "reason", "example"],
                              colalign=("right", "left", "left"), maxcolwidths=[None, None, 90]))
    if fixes:
        lines += ["", "nearest fix:"] + [f"  - {f}" for f in fixes]
    return "\n".join(lines)
