"""Reports: the same search result as aligned text tables or one JSON object (docs/json-report.md).
Nothing here computes an estimate; it only formats."""
from __future__ import annotations

from typing import Any, Optional

from tabulate import tabulate

from .estimate import Estimate
from .memory import TERMS
from .search import SearchResult
from .shape import param_counts
from .spec import Spec
from .units import GiB

TERM_LABELS = {
    "parameters": "parameters",
    "gradients": "gradients",
    "master_weights": "fp32 master weights",
    "optimizer_states": "optimizer states",
    "activations": "activations",
    "logits_loss": "logits / loss",
    "deepspeed_buffers": "DeepSpeed buffers",
    "optimizer_step": "optimizer step transient",
    "cublas_workspace": "cuBLAS workspaces",
}


def _gib(x: float) -> float:
    return round(x / GiB, 3)


def _tokens(spec: Spec) -> tuple[Optional[float], str]:
    n = param_counts(spec.model).total
    if spec.training.tokens == "chinchilla":
        return 20.0 * n, "chinchilla (20 tokens/param, Hoffmann et al. 2022)"
    return float(spec.training.tokens), f"{spec.training.tokens:.3g}"


def estimate_json(e: Estimate, tokens: Optional[float] = None) -> dict[str, Any]:
    t = e.time
    timing = {} if t is None else {
        "step_time_s": t.step.total,
        "tokens_per_s": t.tokens_per_s,
        "mfu": t.mfu,
        "hfu": t.hfu,
        "days_to_train": e.days_to_train(tokens) if tokens else None,
        "step_time_breakdown_s": t.step.as_dict(),
        "placement": t.step.placement,
    }
    return {**timing, 
        "strategy": e.plan.as_dict(),
        "label": e.plan.label,
        "memory_gib": {k: round(v, 4) for k, v in e.memory.as_gib().items()},
        "peak_moment": e.memory.moment,
        "peak_stage": e.memory.stage,
        "reserved_gib": _gib(e.reserved_bytes),
        "cuda_context_gib": _gib(e.cuda_context_bytes),
        "required_gib": _gib(e.required_bytes),
        "usable_gib": _gib(e.usable_bytes),
        "free_gib": _gib(e.free_bytes),
        "host_offload_gib_per_node": _gib(e.host_bytes_per_node),
        "flops_per_step": e.flops.hardware,
        "model_flops_per_step": e.flops.model,
        "six_nd_per_step": e.flops.six_nd,
        "tokens_per_step": e.flops.tokens,
    }


def to_json(result: SearchResult, fixes: list[str], source: str = "") -> dict[str, Any]:
    spec = result.spec
    tokens, _ = _tokens(spec)
    best = result.best
    return {
        "spec": source,
        "name": spec.name,
        "description": spec.description,
        "model": {"name": spec.model.name, "params": param_counts(spec.model).total},
        "cluster": {"gpu": spec.cluster.gpu.name, "gpus": spec.cluster.world_size,
                    "gpu_memory_gib": spec.cluster.gpu.memory_gib},
        "training": {"tokens": tokens, "global_batch_sequences": spec.global_batch_sequences,
                     "steps": tokens / best.flops.tokens if best else None},
        "runtime": spec.runtime.model_dump(),
        "evaluated": result.evaluated,
        "feasible": len(result.feasible),
        "best": estimate_json(best, tokens) if best else None,
        "alternatives": [estimate_json(e, tokens) for e in
                         result.feasible[1:spec.search.top + 1]],
        "rejected": {"total": len(result.rejected), "by_reason": dict(result.by_reason.most_common()),
                     "examples": result.examples},
        "nearest_fix": fixes,
    }


def _header(spec: Spec, source: str) -> list[str]:
    m, c = spec.model, spec.cluster
    n = param_counts(m).total
    _, tokens_text = _tokens(spec)
    inter = c.inter_node
    title = f" ({spec.name})" if spec.name else ""
    lines = [f"pretrain-planner: {source}{title}"]
    if spec.description:
        lines.append(spec.description)
    return lines + [
        f"model    {m.name}: {n / 1e9:.3f} B parameters ({m.n_layers} layers, d_model {m.d_model}, "
        f"{m.n_heads} heads / {m.n_kv_heads} kv, d_ff {m.d_ff} {m.activation.value}, vocab "
        f"{m.vocab_size}, seq {m.seq_len}, {m.attention.value} attention)",
        f"cluster  {c.nodes} node(s) x {c.gpus_per_node} {c.gpu.name} ({c.gpu.memory_gib} GiB), "
        f"{c.intra_node.link} {c.intra_node.gbps:g} GB/s, {inter.nics_per_node} x "
        f"{inter.nic_gbit:g} Gb/s {inter.network}",
        f"training {tokens_text} tokens, global batch {spec.global_batch_sequences} sequences "
        f"({spec.global_batch_sequences * m.seq_len:,} tokens), {spec.training.optimizer.value}",
    ]


def _memory_table(e: Estimate, spec: Spec) -> str:
    rows = [[TERM_LABELS[t], f"{getattr(e.memory, t) / GiB:.3f}"] for t in TERMS]
    rows.append(["peak allocated", f"{e.memory.total / GiB:.3f}"])
    frag = spec.runtime.allocator_fragmentation
    rows.append([f"allocator reserves (+{frag:.0%} fragmentation)", f"{e.reserved_bytes / GiB:.3f}"])
    rows.append(["CUDA context (outside the allocator)", f"{e.cuda_context_bytes / GiB:.3f}"])
    rows.append(["required", f"{e.required_bytes / GiB:.3f}"])
    headroom = spec.search.memory_headroom
    rows.append([f"usable (capacity less {headroom:.0%} headroom)", f"{e.usable_bytes / GiB:.3f}"])
    return tabulate(rows, headers=["per-GPU memory", "GiB"], colalign=("left", "right"))


def _alternatives_table(result: SearchResult, tokens: float) -> str:
    rows = []
    for i, e in enumerate(result.feasible[:result.spec.search.top + 1]):
        st = e.time.step
        comm = st.tp_comm + st.pp_comm + st.dp_comm
        rows.append([i + 1, e.plan.label, f"{st.total:.3g}", f"{st.compute:.3g}", f"{comm:.3g}",
                     f"{st.bubble:.3g}", f"{st.optimizer + st.offload:.3g}",
                     f"{e.tokens_per_s:,.0f}", f"{e.mfu:.1%}", f"{e.days_to_train(tokens):,.1f}",
                     f"{e.memory.total / GiB:.1f}", f"{e.free_bytes / GiB:.1f}"])
    return tabulate(rows, headers=["#", "plan", "step s", "compute", "comm", "bubble", "optim",
                                   "tokens/s", "MFU", "days", "peak GiB", "free GiB"],
                    colalign=("right", "left") + ("right",) * 10)


def _time_table(e: Estimate) -> str:
    st = e.time.step
    labels = {"compute": "compute (GEMMs, attention, element-wise, host)",
              "tp_comm": "tensor-parallel all-reduces", "pp_comm": "pipeline transfers",
              "bubble": "pipeline bubble", "dp_comm": "data-parallel traffic (exposed)",
              "optimizer": "optimizer step", "offload": "offload (PCIe + host Adam)"}
    rows = [[label, f"{getattr(st, k):.4g}", f"{getattr(st, k) / st.total:.1%}"]
            for k, label in labels.items()]
    rows.append(["step", f"{st.total:.4g}", "100%"])
    return tabulate(rows, headers=["step time", "s", "share"], colalign=("left", "right", "right"))


def to_text(result: SearchResult, fixes: list[str], source: str = "") -> str:
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
            f"best plan  {best.plan.label}",
            f"           {len(result.feasible)} of {result.evaluated} candidates are feasible; "
            f"ranked by predicted time to train",
            f"speed      {best.step_time_s:.3g} s/step, {best.tokens_per_s:,.0f} tokens/s, "
            f"MFU {best.mfu:.1%}; {best.days_to_train(tokens):,.1f} days for {steps:,.0f} steps "
            f"on {best.plan.world_size} GPUs (ranks placed {best.time.step.placement})",
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
    if result.rejected:
        lines += ["", f"rejected {len(result.rejected)} of {result.evaluated} candidates:"]
        rows = [[n, key, result.examples[key]] for key, n in result.by_reason.most_common()]
        lines.append(tabulate(rows, headers=["count", "reason", "example"],
                              colalign=("right", "left", "left"), maxcolwidths=[None, None, 90]))
    if fixes:
        lines += ["", "nearest fix:"] + [f"  - {f}" for f in fixes]
    return "\n".join(lines)
