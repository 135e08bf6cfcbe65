"""Which attention kernel explains llm-foundry's long-sequence runs?

usage: python bench/long_seq_attention.py     (writes bench/results/long_seq_attention.txt)

For every bf16 llm-foundry row of bench/data/published_fp8_cp.yaml (MPT-1B/3B on 8 H100s at 512,
8,192 and 32,768 tokens), the planner's tokens/s per GPU is compared with the measured one under
four attention speeds.  Those tables were made in October 2023 with MPT's attn_impl triton
(submit_benchmarks.py's default; sweep.sh never overrode it): FlashAttention's first-generation
Triton port, runtime.attention_kernel flash1.  The speeds: the catalog's flash1 efficiencies
(fitted on the 20 published H100 runs, these among them: bench/published_runs.py --fit); the
first generation's published H100 speed, 137 TFLOP/s forward + backward, causal, head dim 128,
16k tokens (FlashAttention-2's release benchmark, Dao 2023, fig. 7: the CUDA kernel; the Triton
port ran within 4 % of it on the A100, fig. 4); FlashAttention-2's, as if the runs had used it,
causal forward 335 and backward 322 TFLOP/s (Shah et al. 2024, FlashAttention-3, figs. 5 and 6);
and free attention (an upper bound: what the rest of the step allows).  Last, the one attention
efficiency (forward = backward) that would make each row exact, found by bisection.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
import published_fp8_cp as pub  # noqa: E402

from planner.estimate.predict import estimate  # noqa: E402
from planner.spec.loading import spec_from_dict  # noqa: E402
from planner.spec.profile import with_constants  # noqa: E402

#: what each column sets; the runs' kernel is flash1, so its constants carry each speed
FA1_H100 = {"attention_flash1_fwd": 137 / 989, "attention_flash1_bwd": 137 / 989}
FA2_H100 = {"attention_flash1_fwd": 335 / 989, "attention_flash1_bwd": 322 / 989}
FREE = {"attention_flash1_fwd": 1.0, "attention_flash1_bwd": 1.0}
OUT = pub.ROOT / "bench/results/long_seq_attention.txt"


def per_gpu(spec, plan, constants: dict) -> float:
    t = estimate(with_constants(spec, constants), plan).time
    return float(t.tokens_per_s) / plan.world_size


def matching_efficiency(spec, plan, measured: float):
    """The attention efficiency (both passes) at which the prediction equals the measurement,
    or None when even free attention is slower than measured."""
    def error(a: float) -> float:
        return per_gpu(spec, plan, {"attention_flash1_fwd": a,
                                    "attention_flash1_bwd": a}) / measured - 1

    lo, hi = 0.01, 1.0
    if error(hi) < 0 or error(lo) > 0:
        return None
    for _ in range(30):
        mid = (lo * hi) ** 0.5
        lo, hi = (lo, mid) if error(mid) > 0 else (mid, hi)
    return (lo * hi) ** 0.5


def main() -> str:
    rows = []
    for row in yaml.safe_load(pub.DATA.read_text())["rows"]:
        if row["source"] != "llm-foundry-bench" or row["precision"]["dtype"] != "bf16":
            continue
        data, plan, _ = pub.build(row)
        spec = spec_from_dict(data)
        meas = row["measured"]["tokens_per_s_per_gpu"]
        errs = [per_gpu(spec, plan, c) / meas - 1
                for c in ({}, FA1_H100, FA2_H100, FREE)]
        eff = matching_efficiency(spec, plan, meas)
        peak = spec.cluster.gpu.peak_tflops["bf16"]
        rows.append([row["id"], row["seq_len"], f"{meas:,}", *(f"{e:+.1%}" for e in errs),
                     "none: predicted slower even with free attention" if eff is None
                     else f"{eff:.3f} ({eff * peak:.0f} TFLOP/s)"])
    text = tabulate(rows, headers=["run", "seq", "measured tok/s/GPU", "catalog (flash1)",
                                   "FA1 published", "FA2 published", "attention free",
                                   "attention efficiency that matches"],
                    colalign=("left", "right", "right", "right", "right", "right", "right",
                              "left"))
    text = ("predicted / measured - 1 of tokens/s per GPU under four attention speeds "
            "(bench/long_seq_attention.py)\n\n" + text + "\n")
    return text


if __name__ == "__main__":
    from _report import publish
    publish(main(), OUT)
