"""Executor tokens/s against a plain PyTorch loop on the same model, batch, optimizer (AdamW) and
precision, in one script on one machine.

    python bench/executor_throughput.py                       # specs/tiny_cpu.yaml on this CPU
    python bench/executor_throughput.py specs/125m_on_1xH100.yaml --steps 30   # on a GPU
    python bench/executor_throughput.py specs/1.1b_on_1xH200.yaml --steps 30 \
        --global-batch-sequences 64     # 2M-token steps take ~30 s each on one GPU

The executor runs ``execute()`` (torchrun, DeepSpeed, the planner's best plan) with evaluation and
checkpoints pushed past the end; its tokens/s is the median step over the steps after the first
10 %.  The plain loop is one process on the same batches (dp x grad_accum micro-batches a step),
with every core (CPU) or the same GPU, torch AdamW (fused on CUDA), autocast for bf16.  Target on
CPU: executor >= 0.8x plain.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", nargs="?", default=str(ROOT / "specs" / "tiny_cpu.yaml"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--global-batch-sequences", type=int, default=None,
                    help="replace the spec's global batch (shorter steps for a quick check)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run directory here")
    args = ap.parse_args()

    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")

    from executor.ds_config import tokens_per_step
    from executor.report import WARMUP_STEP_FRACTION
    from executor.run import ExecuteRequest, execute
    from executor.rundir import RunDir
    from executor.train import plain_training
    from planner.search.engine import search
    from planner.spec.loading import load_spec

    spec = load_spec(args.spec)
    if args.global_batch_sequences:
        training = spec.training.model_copy(update={
            "global_batch_sequences": args.global_batch_sequences, "global_batch_tokens": None})
        spec = spec.model_copy(update={"training": training})
    best = search(spec, executable=True).best
    if best is None:
        print("error: the spec has no feasible plan", file=sys.stderr)
        return 1
    plan = best.plan
    device = "cuda" if torch.cuda.is_available() else "cpu"
    workdir = Path(tempfile.mkdtemp(prefix="executor-bench-"))
    run = RunDir(args.keep or workdir / "run")
    rc = execute(spec, plan, run.path, ExecuteRequest(max_steps=args.steps, eval_every=10**9,
                                                      checkpoint_every=10**9))
    if rc != 0:
        print(f"error: the executor run failed (exit {rc}); see {run.log}", file=sys.stderr)
        return rc
    executor_tps = json.loads(run.report_json.read_text())["measured"]["tokens_per_s"]

    torch.set_num_threads(os.cpu_count() or 1)
    _, _, options = run.load()
    _, times = plain_training(spec, plan, run.shards_dir(), options, args.steps, device=device)
    timed = times[max(1, int(len(times) * WARMUP_STEP_FRACTION)):]
    tokens = tokens_per_step(spec, plan)
    plain_tps = tokens / statistics.median(timed)

    result = {"spec": args.spec, "plan": plan.label, "device": device,
              "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "steps": args.steps, "executor_tokens_per_s": executor_tps,
              "plain_tokens_per_s": plain_tps, "ratio": executor_tps / plain_tps,
              "torch": torch.__version__}
    print(json.dumps(result, indent=1))
    print(f"executor {executor_tps:,.0f} tok/s, plain PyTorch {plain_tps:,.0f} tok/s: "
          f"ratio {executor_tps / plain_tps:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
