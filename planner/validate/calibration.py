"""Turn a calibration measurement (shared/calibration/reference_harness.py's ``cfg``) into the
Spec and Plan that describe the same run, so every estimate can be checked against it."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from planner.errors import SpecError
from planner.plan.strategy import Plan
from planner.spec.loading import spec_from_dict
from planner.spec.spec import Spec
from planner.spec.units import GiB, Offload, Precision, Recompute, ZeroStage

#: DeepSpeed zero_optimization keys a harness run may set, and the runtime field each maps to
ZERO_KEYS = {
    "reduce_bucket_size": "reduce_bucket_size",
    "allgather_bucket_size": "allgather_bucket_size",
    "stage3_prefetch_bucket_size": "stage3_prefetch_bucket_size",
    "prefetch_bucket_size": "stage3_prefetch_bucket_size",
    "stage3_max_live_parameters": "stage3_max_live_parameters",
    "stage3_param_persistence_threshold": "stage3_param_persistence_threshold",
    "stage3_max_reuse_distance": "stage3_max_reuse_distance",
    "sub_group_size": "sub_group_size",
    "contiguous_gradients": "contiguous_gradients",
    "overlap_comm": "overlap_comm",
}


@dataclass(frozen=True)
class Measurement:
    name: str
    spec: Spec
    plan: Plan
    ok: bool  #: False when the run failed (e.g. ran out of memory)
    error: Optional[str]
    peak_alloc_bytes: Optional[float]
    peak_reserved_bytes: Optional[float]
    step_s: Optional[float]


def harness_model(cfg: dict[str, Any]) -> dict[str, Any]:
    """The harness's GPT: gpt2 = LayerNorm, GELU(tanh) 4d MLP, learned positions sized to seq,
    tied head, biases; llama = RMSNorm, SwiGLU with d_ff (4d when absent), RoPE, GQA, untied."""
    d = cfg["d_model"]
    model = {"arch": cfg["arch"], "name": cfg.get("name", "harness"), "n_layers": cfg["n_layer"],
             "d_model": d, "n_heads": cfg["n_head"],
             "n_kv_heads": cfg.get("n_kv_head", cfg["n_head"]), "d_ff": cfg.get("d_ff", 4 * d),
             "vocab_size": cfg["vocab"], "seq_len": cfg["seq"]}
    return model


def measurement(row: dict[str, Any]) -> Measurement:
    """The run a harness row records, on the GPU its ``device`` names (catalog device_names)."""
    cfg = row["cfg"]
    gpu = row.get("device", "H200")
    unknown = set(cfg.get("zero_extra", {})) - set(ZERO_KEYS)
    if unknown:
        raise SpecError("cfg.zero_extra", f"keys the planner does not model: {sorted(unknown)}")
    runtime = {ZERO_KEYS[k]: v for k, v in cfg.get("zero_extra", {}).items()}
    runtime["torch_adam"] = not cfg.get("offload", False)  # offload switches to DeepSpeedCPUAdam
    gas = cfg.get("gas", 1)
    spec = spec_from_dict({
        "model": harness_model(cfg),
        "cluster": {"gpu": gpu, "nodes": 1, "gpus_per_node": 1},
        "training": {"tokens": float(cfg["mb"] * gas * cfg["seq"]),
                     "global_batch_sequences": cfg["mb"] * gas},
        "runtime": runtime,
    })
    plan = Plan(dp=1, tp=1, pp=1, zero=ZeroStage(cfg.get("zero", 0)),
                precision=Precision(cfg.get("precision", "bf16")), micro_batch=cfg["mb"],
                grad_accum=gas, recompute=Recompute.FULL if cfg.get("ckpt") else Recompute.NONE,
                offload=Offload.OPTIMIZER_CPU if cfg.get("offload") else Offload.NONE)

    def gib(key: str) -> Optional[float]:
        return row[key] * GiB if row.get(key) is not None else None

    return Measurement(cfg.get("name", "?"), spec, plan, bool(row.get("ok")), row.get("error"),
                       gib("peak_alloc_gb"), gib("peak_reserved_gb"),
                       row["step_ms"] / 1e3 if row.get("step_ms") else None)


def load_measurements(path: str | Path) -> list[Measurement]:
    """Training rows of a calibration jsonl (the matmul micro-benchmark row is skipped)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [measurement(r) for r in rows if "arch" in r.get("cfg", {})]
