"""What do PyTorch FSDP's hooks cost the host, against DeepSpeed ZeRO-3's?

The planner prices FSDP's host bookkeeping per micro-batch as steps x 2 passes x
runtime.zero3_module_us, the DeepSpeed ZeRO-3 fetch/release price fitted on the H200 rows
(planner/backends/fsdp/timing.py): FSDP1's steps are its wrapped units, FSDP2's its parameter
tensors.  This measures what one such step costs against DeepSpeed's, on this machine.

usage: python bench/fsdp_host.py   (writes bench/results/fsdp_host.txt; --no-write only prints)

Method: one process, rank 0 of 2 over PyTorch's fake process group (every collective returns at
once; at world size 1 FSDP1 turns FULL_SHARD into NO_SHARD and DeepSpeed takes other paths), one CPU
thread, a stack of the executor's GPT-2 blocks at a tiny shape (batch 1, 8 tokens, d_model 64) in
fp32, so that every op's arithmetic is negligible, no collective waits, and the wall time is Python,
hooks, the dispatcher and autograd.  Forward + backward of the same stack is timed plain, under
DeepSpeed ZeRO-3 (deepspeed.initialize, engine.backward), under FSDP1 (FullyShardedDataParallel, one
unit per block plus the root) and under FSDP2 (fully_shard per block, then the root), at 2 and 6
blocks: the difference per added block, over the plain stack's, is each framework's host work per
block, free of what a step costs once.  Medians of interleaved repeats.  Divided by the planner's
count per block (DeepSpeed: its modules with parameters; FSDP1: one unit; FSDP2: its parameter
tensors) it gives each framework's price per counted step, and their ratios to DeepSpeed's.  The CPU
leaves out what a GPU adds to each step (kernel launches of the copies, CUDA event waits, stream
syncs: DeepSpeed's fetch synchronises the stream at world size 1, the case its fitted price comes
from); the ratios are those of the host's Python and dispatch work, and bench/cv_alternatives.py
scores them on the published runs (docs/calibration.md).
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench/results/fsdp_host.txt"
SIZES = (2, 6)
FRAMEWORKS = ("plain", "deepspeed", "fsdp1", "fsdp2")


def _model_spec():
    from planner.spec.model import ModelSpec
    return ModelSpec(arch="gpt2", name="tiny", n_layers=1, d_model=64, n_heads=4, vocab_size=128,
                     seq_len=8, attention="flash", fused_kernels=False)


def _stack(n: int):
    import torch
    from torch import nn

    from executor.model import Block

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Block(_model_spec()) for _ in range(n))

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    torch.manual_seed(0)
    return Stack()


def _wrapped(framework: str, n: int):
    """The forward + backward of an n-block stack under the framework."""
    import torch

    from executor.model import Block
    model = _stack(n)
    x = torch.randn(1, 8, 64)
    if framework == "plain":
        return lambda: model(x).sum().backward()
    if framework == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy
        m = FullyShardedDataParallel(model, auto_wrap_policy=ModuleWrapPolicy({Block}),
                                     device_id=torch.device("cpu"))
        return lambda: m(x).sum().backward()
    if framework == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh("cpu", (2,))
        for b in model.blocks:
            fully_shard(b, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return lambda: model(x).sum().backward()
    import deepspeed
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 3},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}}}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                      config=config)

    def step():
        engine.backward(engine(x).sum())
        engine.zero_grad()
    return step


def _seconds(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _counts(n: int) -> dict[str, int]:
    """The planner's steps for n blocks: DeepSpeed's modules with parameters, FSDP1's units,
    FSDP2's parameter tensors."""
    model = _stack(n)
    return {"deepspeed": sum(1 for m in model.modules()
                             if any(True for _ in m.parameters(recurse=False))),
            "fsdp1": n + 1, "fsdp2": sum(1 for _ in model.parameters())}


def _worker(rounds: int, reps: int) -> dict[str, dict[int, float]]:
    import torch
    torch.set_num_threads(1)
    fns = {(f, n): _wrapped(f, n) for f in FRAMEWORKS for n in SIZES}
    for fn in fns.values():
        _seconds(fn, 10)  # warm-up
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            samples[k].append(_seconds(fn, reps))
    out: dict[str, dict[int, float]] = {f: {} for f in FRAMEWORKS}
    for (f, n), v in samples.items():
        out[f][n] = statistics.median(v)
    return out


def measure(rounds: int = 15, reps: int = 30) -> dict[str, dict[int, float]]:
    """One process as rank 0 of 2 over PyTorch's fake process group: every collective returns
    at once, so what is timed is each framework's host work, not gloo's latency."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29631", RANK="0", WORLD_SIZE="2",
                      LOCAL_RANK="0", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    dist.init_process_group("fake", rank=0, world_size=2, store=FakeStore())
    try:
        return _worker(rounds, reps)
    finally:
        dist.destroy_process_group()


def main(rounds: int = 15, reps: int = 30) -> str:
    t = measure(rounds, reps)
    lo, hi = SIZES
    per_block = {f: (t[f][hi] - t[f][lo]) / (hi - lo) for f in FRAMEWORKS}
    counts = {f: (_counts(hi)[f] - _counts(lo)[f]) / (hi - lo) for f in FRAMEWORKS[1:]}
    price = {f: (per_block[f] - per_block["plain"]) / counts[f] for f in FRAMEWORKS[1:]}
    lines = ["host work of one block's forward + backward, rank 0 of 2 over the fake process "
             "group, one CPU thread, tiny shape (bench/fsdp_host.py)", "",
             f"{'framework':<12}" + "".join(f"{f'{n} blocks, us':>16}" for n in SIZES)
             + f"{'per block, us':>16}{'over plain':>12}{'steps/block':>13}"
             + f"{'us per step':>13}{'/ DeepSpeed':>13}"]
    for f in FRAMEWORKS:
        row = f"{f:<12}" + "".join(f"{t[f][n] * 1e6:>16.0f}" for n in SIZES) \
            + f"{per_block[f] * 1e6:>16.0f}"
        if f != "plain":
            row += (f"{(per_block[f] - per_block['plain']) * 1e6:>12.0f}{counts[f]:>13.0f}"
                    f"{price[f] * 1e6:>13.1f}{price[f] / price['deepspeed']:>13.2f}")
        lines.append(row)
    lines += ["", "steps per block: DeepSpeed ZeRO-3 fetches and releases each module with "
              "parameters; FSDP1 unshards and reshards its one flat parameter per unit; FSDP2 "
              "all-gathers and reduce-scatters every parameter tensor (DTensor)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from _report import publish
    publish(main(), OUT)
