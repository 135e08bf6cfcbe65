"""Calibration profiles: the named constants of the time and memory models that measured runs can
set, and the file ``plan calibrate`` writes and ``cluster.profile`` reads.

A profile holds values for some of ``CONSTANTS``, the GPU it was measured on, how many runs it was
fitted on and the fit's residual.  Loading a spec merges the profile's values under what the spec
writes itself: a constant the spec sets wins, and the report says so (nothing written is
silently overridden).  The fitting is planner/validate/calibrate.py.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml


@dataclass(frozen=True)
class Constant:
    section: str  #: "efficiency" (of cluster.gpu) or "runtime"
    low: float  #: bounds a fit stays within
    high: float
    meaning: str


#: what a profile may set: the step-time model's efficiencies and host costs, the allocator's
#: fragmentation (docs/time-model.md, docs/memory-model.md)
CONSTANTS: dict[str, Constant] = {
    "gemm_max": Constant("efficiency", 0.05, 1.0, "large-GEMM fraction of dense peak"),
    "gemm_half_dim": Constant("efficiency", 1.0, 8192.0, "GEMM dimension at half efficiency"),
    "gemm_fp32_max": Constant("efficiency", 0.005, 1.0, "fp32 GEMM fraction of the fp32 peak"),
    "gemm_fp32_half_dim": Constant("efficiency", 1.0, 8192.0,
                                   "fp32 GEMM dimension at half efficiency"),
    "attention_fwd": Constant("efficiency", 0.05, 1.0, "fused attention forward, of peak"),
    "attention_bwd": Constant("efficiency", 0.05, 1.0, "fused attention backward, of peak"),
    "attention_te_fwd": Constant("efficiency", 0.05, 1.0,
                                 "Transformer Engine attention forward, of peak"),
    "attention_te_bwd": Constant("efficiency", 0.05, 1.0,
                                 "Transformer Engine attention backward, of peak"),
    "attention_flash1_fwd": Constant("efficiency", 0.02, 1.0,
                                     "first-generation FlashAttention forward, of peak"),
    "attention_flash1_bwd": Constant("efficiency", 0.02, 1.0,
                                     "first-generation FlashAttention backward, of peak"),
    "attention_fp32": Constant("efficiency", 0.005, 1.0, "fp32 attention, of the fp32 peak"),
    "hbm": Constant("efficiency", 0.05, 1.0, "memory-bound kernels, of hbm_gbps"),
    "network": Constant("efficiency", 0.05, 1.0, "NCCL bus bandwidth, of link speed"),
    "overlap_slowdown": Constant("efficiency", 0.0, 0.9,
                                 "compute rate lost while an overlapped collective runs"),
    "cpu_op_us": Constant("runtime", 0.1, 5000.0, "host time per kernel, microseconds"),
    "zero_hook_us": Constant("runtime", 0.1, 5000.0, "ZeRO-1/2 gradient hook per tensor, us"),
    "zero3_module_us": Constant("runtime", 1.0, 50000.0, "ZeRO-3 bookkeeping per module, us"),
    "optimizer_tensor_us": Constant("runtime", 0.1, 5000.0,
                                    "unfused optimizer host work per tensor, us"),
    "host_sync_fraction": Constant("runtime", 0.0, 1.0, "host work that waits on the device"),
    "host_adam_params_per_s": Constant("runtime", 1e6, 1e11, "DeepSpeedCPUAdam params/s"),
    "allocator_fragmentation": Constant("runtime", 0.0, 2.0,
                                        "reserved / allocated - 1 of the caching allocator"),
}


@dataclass(frozen=True)
class Profile:
    """What a profile file holds."""

    constants: dict[str, float]
    gpu: str = ""  #: the GPU the runs were measured on ("" = any)
    runs: int = 0  #: measured runs the values were fitted on
    residual_before: float = float("nan")  #: rms of log(predicted / measured) before the fit
    residual_after: float = float("nan")  #: and after
    fitted_on: tuple[str, ...] = ()
    source: str = ""
    #: the GPU's stated figures the efficiencies are fractions of (peak TFLOP/s per dtype, HBM
    #: and PCIe GB/s): a spec stating other figures for a GPU of the same name cannot reuse them
    gpu_figures: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"gpu": self.gpu, "gpu_figures": dict(self.gpu_figures),
                "constants": dict(self.constants), "runs": self.runs,
                "residual_before": self.residual_before, "residual_after": self.residual_after,
                "fitted_on": list(self.fitted_on), "source": self.source}


def profile_from_dict(data: Any, where: str = "profile") -> Profile:
    if not isinstance(data, dict) or not isinstance(data.get("constants"), dict):
        raise ValueError(f"{where} does not hold a 'constants' mapping")
    unknown = set(data["constants"]) - set(CONSTANTS)
    if unknown:
        raise ValueError(f"{where}: unknown constants {sorted(unknown)} (known: "
                         f"{', '.join(CONSTANTS)})")
    for name, value in data["constants"].items():
        c = CONSTANTS[name]
        if not isinstance(value, (int, float)) or not c.low <= float(value) <= c.high:
            raise ValueError(f"{where}: {name} = {value!r} is outside [{c.low:g}, {c.high:g}]")
    return Profile({k: float(v) for k, v in data["constants"].items()},
                   gpu=str(data.get("gpu") or ""), runs=int(data.get("runs") or 0),
                   residual_before=float(data.get("residual_before", float("nan"))),
                   residual_after=float(data.get("residual_after", float("nan"))),
                   fitted_on=tuple(data.get("fitted_on") or ()),
                   source=str(data.get("source") or ""),
                   gpu_figures=dict(data.get("gpu_figures") or {}))


def load_profile(path: str | Path) -> Profile:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError:
        raise ValueError(f"profile: no profile file {path}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"profile: {path}: invalid YAML "
                         f"({getattr(exc, 'problem', exc)})") from None
    return profile_from_dict(data, f"profile: {path}")


def save_profile(profile: Profile, path: str | Path) -> None:
    Path(path).write_text("# written by `plan calibrate`; a spec reads it with "
                          "cluster.profile: " + Path(path).name + "\n"
                          + yaml.safe_dump(profile.to_dict(), sort_keys=False))


def merge_profile(data: dict, profile: Profile) -> tuple[dict, list[str]]:
    """The spec's raw mapping with the profile's constants under what it writes itself;
    returns (mapping, the constants the spec's own values kept)."""
    data = copy.deepcopy(data)
    cluster = data.setdefault("cluster", {})
    gpu = cluster.get("gpu")
    if isinstance(gpu, str):
        gpu = {"name": gpu}
    if not isinstance(gpu, dict):
        return data, []
    cluster["gpu"] = gpu
    runtime = data.setdefault("runtime", {}) if isinstance(data.get("runtime", {}), dict) else {}
    kept = []
    for name, value in profile.constants.items():
        section = CONSTANTS[name].section
        target = gpu.setdefault("efficiency", {}) if section == "efficiency" else runtime
        if name in target:
            kept.append(name)
        else:
            target[name] = value
    return data, kept


__all__ = ["CONSTANTS", "Constant", "Profile", "load_profile", "save_profile", "merge_profile",
           "with_constants", "constant_value", "gpu_figures",
           "profile_from_dict"]


def gpu_figures(gpu) -> dict:
    """What a GPU's efficiencies are fractions of: its stated peaks and bandwidths."""
    return {"peak_tflops": dict(gpu.peak_tflops), "hbm_gbps": gpu.hbm_gbps,
            "pcie_gbps": gpu.pcie_gbps}


def with_constants(spec, values: dict[str, float]):
    """The spec with these constants set (efficiencies on its GPU, the rest in its runtime)."""
    eff = {k: v for k, v in values.items() if CONSTANTS[k].section == "efficiency"}
    rt = {k: v for k, v in values.items() if CONSTANTS[k].section == "runtime"}
    gpu = spec.cluster.gpu
    if eff:
        gpu = gpu.model_copy(update={"efficiency": gpu.efficiency.model_copy(update=eff)})
    cluster = spec.cluster.model_copy(update={"gpu": gpu}) if eff else spec.cluster
    runtime = spec.runtime.model_copy(update=rt) if rt else spec.runtime
    return spec.model_copy(update={"cluster": cluster, "runtime": runtime})


#: constants that default to another's value when the catalog leaves them unset
FALLBACK = {"attention_te_fwd": "attention_fwd", "attention_te_bwd": "attention_bwd"}


def constant_value(spec, name: str) -> Optional[float]:
    """The value the estimate uses (an unset Transformer Engine attention efficiency is the
    FlashAttention one); None for one the GPU has no value for (the first FlashAttention
    generation where it was never measured: a spec that runs it there is refused)."""
    c = CONSTANTS[name]
    holder = spec.cluster.gpu.efficiency if c.section == "efficiency" else spec.runtime
    value = getattr(holder, name)
    if value is None and name in FALLBACK:
        value = getattr(holder, FALLBACK[name])
    return None if value is None else float(value)

