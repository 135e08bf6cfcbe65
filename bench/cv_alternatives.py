"""Alternative mechanisms for the small-model error class, scored by the same
leave-one-source-out cross-validation as bench/published_runs.py --cv --extra.

usage: python bench/cv_alternatives.py        (writes bench/results/cv_alternatives.txt)

Issue 11 names small models on few GPUs (TinyLlama 1.1B on 16 A100s, MPT-3B on 8 A100-40GB,
llm-foundry's 512-token runs) as under-predicted, and the GEMM-efficiency curve at their shapes
as a place to look.  Adopted: FSDP's host bookkeeping by API (planner/backends/fsdp/timing.py):
FSDP1's once per wrapped unit (a block, plus the root: one flat parameter each), FSDP2's per
parameter tensor (fully_shard's per-parameter DTensors).  Scored beside it under the same refit:
"FSDP host per module", the model before, DeepSpeed ZeRO-3's count of one fetch/release per
module with parameters (six per block) for every FSDP run, and "FSDP host per unit", FSDP1's
count for every FSDP run.  Tried here and not adopted:

- GEMM efficiency by tile and wave quantisation: a (M, N, K) GEMM runs at
  gemm_max * (M N / tiled area) * (tiles / (waves * SMs)) * K / (K + gemm_half_dim), with
  128 x 256 output tiles (NVIDIA, "Matrix Multiplication Background User's Guide": tile and wave
  quantisation) and the SM counts of the datasheets (A100 108, H100 SXM 132), instead of the
  catalog's product of three x / (x + gemm_half_dim) factors.  Also the K factor alone.
- FSDP's steps at the prices bench/fsdp_host.py measures on the CPU, against DeepSpeed ZeRO-3's
  fetch/release (FSDP1 2.15 per unit, FSDP2 0.26 per parameter tensor, ``MEASURED_PRICE``),
  instead of one DeepSpeed price each.
- No host/GPU serialisation for PyTorch-FSDP runs (llm-foundry, torchtitan, torchao, fms-fsdp,
  lit-gpt): runtime.host_sync_fraction 0, as the Megatron rows of bench/published_fp8_cp.py
  take, instead of the 0.8 fitted on DeepSpeed runs.

The refit (gemm_max, attention_fwd, attention_bwd per GPU generation) is redone under each
variant, so a variant is judged on what it explains beyond a different gemm_max.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import published_runs as pr  # noqa: E402

from planner.backends import registry  # noqa: E402
from planner.backends.deepspeed import timing as deepspeed_timing  # noqa: E402
from planner.backends.deepspeed.timing import zero3_fetch_units  # noqa: E402
from planner.backends.fsdp import timing as fsdp_timing  # noqa: E402
from planner.estimate import timing  # noqa: E402
from planner.spec.units import Precision  # noqa: E402
from planner.validate.crossval import leave_one_source_out, summary  # noqa: E402
from planner.validate.published import load_published  # noqa: E402

OUT = Path(__file__).resolve().parent / "results/cv_alternatives.txt"
SMS = {"A100": 108, "H100": 132, "H200": 132}  #: streaming multiprocessors (datasheets)
TILE = (128, 256)
WATCH = ("tinyllama", "a10040gb", "s512", "mpt7b-h100-bf16-s2048-g8", "mtnlg", "mpt30b", "ibm")
FSDP_SOURCES = ("llm-foundry", "torchtitan", "torchao", "PyTorch blog", "TinyLlama", "MosaicML")

CATALOG_CURVE = timing.gemm_efficiency
PER_MODULE = "FSDP host per module (DeepSpeed ZeRO-3's count; the model before)"
PER_UNIT = "FSDP host per unit (FSDP1's count, for FSDP2 runs too)"
MEASURED = "FSDP steps at their CPU-measured prices (bench/fsdp_host.py)"
#: FSDP1's per-unit and FSDP2's per-parameter host work over DeepSpeed ZeRO-3's per-module
#: fetch/release, forward + backward (bench/results/fsdp_host.txt)
MEASURED_PRICE = {1: 2.15, 2: 0.26}


def quantised(k_only: bool):
    def efficiency(spec, plan, m, n, k):
        if np.any(plan.is_precision(Precision.FP32)):
            return CATALOG_CURVE(spec, plan, m, n, k)
        eff = spec.cluster.gpu.efficiency
        k_factor = k / (k + eff.gemm_half_dim)
        if k_only:
            return eff.gemm_max * k_factor
        sms = SMS[spec.cluster.gpu.name.split("-")[0]]
        tiles = np.ceil(m / TILE[0]) * np.ceil(n / TILE[1])
        tile_q = m * n / (tiles * TILE[0] * TILE[1])
        wave_q = tiles / (np.ceil(tiles / sms) * sms)
        return eff.gemm_max * tile_q * wave_q * k_factor
    return efficiency


def no_host_sync(run):
    if not any(run.source.startswith(s) for s in FSDP_SOURCES):
        return run
    rt = run.spec.runtime.model_copy(update={"host_sync_fraction": 0.0})
    return replace(run, spec=run.spec.model_copy(update={"runtime": rt}))


def per_unit(spec, plan, stage):
    """FSDP1's host count for every FSDP run: one fetch/release per wrapped unit and pass."""
    return zero3_fetch_units(spec, stage, 0) * 2 * spec.runtime.zero3_module_us


def measured_price(spec, plan, stage):
    """The shipped count (FSDP1 per unit, FSDP2 per parameter) at the CPU-measured prices."""
    version = spec.runtime.fsdp_version or 2
    return fsdp_timing.host_us_per_micro_batch(spec, plan, stage) * MEASURED_PRICE[version]


HOSTS = {PER_MODULE: deepspeed_timing.host_us_per_micro_batch, PER_UNIT: per_unit,
         MEASURED: measured_price}


def score(shared, extra) -> tuple[dict, dict, dict, list]:
    a = leave_one_source_out(shared, extra=extra)
    b = leave_one_source_out(extra, extra=shared)
    return (summary([p.error_out for p in a]), summary([p.error_out for p in b]),
            summary([p.error_out for p in a + b]), a + b)


def main() -> str:
    shared = load_published(pr.default_path())
    extra = pr.extra_runs()
    variants = [("catalog curve (as shipped)", CATALOG_CURVE, lambda r: r),
                ("K factor only", quantised(True), lambda r: r),
                ("tile + wave quantisation, K factor", quantised(False), lambda r: r),
                ("FSDP runs: host_sync_fraction 0", CATALOG_CURVE, no_host_sync),
                (PER_MODULE, CATALOG_CURVE, lambda r: r),
                (PER_UNIT, CATALOG_CURVE, lambda r: r),
                (MEASURED, CATALOG_CURVE, lambda r: r)]
    lines = ["leave-one-source-out |error| of tokens/s per GPU under alternative mechanisms "
             "(bench/cv_alternatives.py)", ""]
    fsdp = registry.BACKENDS["fsdp"]
    try:
        for name, curve, mapping in variants:
            timing.gemm_efficiency = curve
            registry.BACKENDS["fsdp"] = replace(fsdp, host_us_per_micro_batch=HOSTS[name]) \
                if name in HOSTS else fsdp
            s, e, both, preds = score([mapping(r) for r in shared], [mapping(r) for r in extra])
            lines.append(f"{name}: 20 shared median {s['median']:.1%} p90 {s['p90']:.1%}; "
                         f"12 not shared median {e['median']:.1%} p90 {e['p90']:.1%}; "
                         f"all 32 median {both['median']:.1%} p90 {both['p90']:.1%}")
            lines.append("    " + ", ".join(f"{p.id} {p.error_out:+.1%}" for p in preds
                                            if any(w in p.id for w in WATCH)))
    finally:
        timing.gemm_efficiency = CATALOG_CURVE
        registry.BACKENDS["fsdp"] = fsdp
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from _report import publish
    publish(main(), OUT)
