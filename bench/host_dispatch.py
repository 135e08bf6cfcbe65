"""What does an eager block cost the host, by component?  The planner's host term counts a block's
dispatch in units of one eager GPT-2 kernel (planner/estimate/timing.py kernels_per_block; the
unit's price, runtime.cpu_op_us, is fitted on the H200 GPT-2 rows).  This measures the eager
Llama components in that unit from the executor's own block code, which is the calibration
harness's (RMSNorm upcast to fp32, RoPE recomputing its tables every call, SwiGLU's chunk, silu
and product).

usage: python bench/host_dispatch.py   (writes bench/results/host_dispatch.txt; --no-write)

Method: forward + backward of one block at a tiny shape (batch 1, 8 tokens, d_model 64) on one CPU
thread, where every op's arithmetic is negligible and the wall time is Python, module calls, the
dispatcher and autograd: the host work a GPU run pays per block.  Five blocks are timed: GPT-2's
(LayerNorm, GELU, no rotary) and GPT-2's with one Llama component swapped in at a time, then the
whole Llama block.  Each component's units = 12 x (its block's time / GPT-2's - 1): the planner
counts a GPT-2 eager block as 12 kernels.  Medians of interleaved repeats, so that both blocks of a
ratio see the same machine state.  What it leaves out: on a GPU each op that launches a kernel also
pays cudaLaunchKernel (a few microseconds), which weighs the many small element-wise ops of RMSNorm
and RoPE a little more than on the CPU; the numbers are a lower bound for those components.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from executor.model import Block  # noqa: E402
from planner.spec.model import ModelSpec  # noqa: E402

OUT = ROOT / "bench/results/host_dispatch.txt"
GPT2_UNITS = 12
BASE = dict(arch="gpt2", name="tiny", n_layers=1, d_model=64, n_heads=4, vocab_size=128, seq_len=8,
            attention="flash", fused_kernels=False)
VARIANTS = {
    "GPT-2 (LayerNorm, GELU)": {},
    "with RMSNorm (both norms)": {"norm": "rmsnorm"},
    "with SwiGLU": {"activation": "swiglu", "d_ff": 128},
    "with RoPE": {"position": "rope"},
    "with GQA (2 of 4 kv heads)": {"n_kv_heads": 2},
    "Llama (all of the above)": {"arch": "llama", "n_kv_heads": 2, "d_ff": 128},
}


def block_seconds(model: ModelSpec, reps: int) -> list[float]:
    torch.manual_seed(0)
    blk = Block(model).to(torch.bfloat16)
    x = torch.randn(1, model.seq_len, model.d_model, dtype=torch.bfloat16, requires_grad=True)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        blk(x).sum().backward()
        times.append(time.perf_counter() - t0)
    return times


def measure(rounds: int = 41, reps: int = 60) -> dict[str, float]:
    """Median seconds per block forward + backward for every variant, interleaved."""
    torch.set_num_threads(1)
    models = {k: ModelSpec(**{**BASE, **v}) for k, v in VARIANTS.items()}
    for m in models.values():
        block_seconds(m, 20)  # warm-up: first-call dispatch caches
    samples: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            samples[k].append(statistics.median(block_seconds(m, reps)))
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> str:
    t = measure()
    base = t["GPT-2 (LayerNorm, GELU)"]
    lines = ["host time of one eager block, forward + backward, tiny shape on one CPU thread "
             "(bench/host_dispatch.py)", "",
             f"{'block':<30}{'us':>8}{'/ GPT-2':>10}{'units (GPT-2 = 12)':>22}"]
    for k, v in t.items():
        lines.append(f"{k:<30}{v * 1e6:>8.0f}{v / base:>10.2f}{GPT2_UNITS * v / base:>22.1f}")
    lines.append("")
    extra = {k: GPT2_UNITS * (t[k] / base - 1) for k in list(t)[1:-1]}
    lines.append("extra units over GPT-2's block, per component:")
    for k, v in extra.items():
        lines.append(f"  {k:<28}{v:+6.1f}")
    # GPT-2's block counts each LayerNorm and the GELU as one unit, and has no rotary
    units = {"rmsnorm": 1 + extra["with RMSNorm (both norms)"] / 2,
             "rope": extra["with RoPE"], "swiglu": 1 + extra["with SwiGLU"]}
    lines.append("")
    lines.append("units of one eager component (planner/estimate/timing.py EAGER_HOST_UNITS): "
                 + ", ".join(f"{k} {v:.2f}" for k, v in units.items()))
    lines.append("")
    lines.append(predictions())
    return "\n".join(lines) + "\n"


#: single-H200 harness runs (shared/calibration/reference_harness.py cfg) of the shapes issue 11
#: names: Llama 1.1B (TinyLlama) and 3B (OpenLLaMA-3B: d_model 3200, d_ff 8640, MHA), GPT-2 1.5B
HARNESS = {
    "llama 1.1B": dict(arch="llama", n_layer=22, d_model=2048, n_head=32, n_kv_head=4, d_ff=5632,
                       vocab=32000, seq=2048, mb=4),
    "llama 3B": dict(arch="llama", n_layer=26, d_model=3200, n_head=32, n_kv_head=32, d_ff=8640,
                     vocab=32000, seq=2048, mb=2),
    "gpt2 1.5B": dict(arch="gpt2", n_layer=48, d_model=1600, n_head=25, vocab=50304, seq=1024,
                      mb=4),
}
#: what the planner counted before: an eager component's kernels (RMSNorm 7, RoPE 12, SwiGLU 3)
KERNEL_COUNT = {"rmsnorm": 7, "rope": 12, "swiglu": 3}


def predictions() -> str:
    """Predicted step time of single-H200 harness runs with the eager components priced by their
    kernel count and by their measured host cost."""
    from planner.estimate import timing
    from planner.validate.calibration import measurement
    measured = dict(timing.EAGER_HOST_UNITS)
    rows = [f"{'harness run (one H200)':<24}{'ZeRO':>5}{'kernel count, ms':>18}"
            f"{'measured units, ms':>20}{'change':>9}"]
    for name, cfg in HARNESS.items():
        for zero in (0, 2, 3):
            m = measurement({"cfg": dict(cfg, zero=zero, name=name), "ok": True})
            out = []
            for units in (KERNEL_COUNT, measured):
                timing.EAGER_HOST_UNITS.update(units)
                out.append(timing.step_time(m.spec, m.plan).total * 1e3)
            timing.EAGER_HOST_UNITS.update(measured)
            rows.append(f"{name:<24}{zero:>5}{out[0]:>18.1f}{out[1]:>20.1f}"
                        f"{out[1] / out[0] - 1:>+9.1%}")
    return "predicted step time, micro-batch as listed in HARNESS:\n" + "\n".join(rows)


if __name__ == "__main__":
    from _report import publish
    publish(main(), OUT)
