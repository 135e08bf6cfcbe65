"""The executor on a real GPU: for GPT-2 124M and TinyLlama-1.1B at ZeRO 0-3, a few dozen
steps through ``execute()`` (torchrun, DeepSpeed, the planner's plan pinned to that stage) and,
in the same run, a plain PyTorch loop on the same model and batches (autocast bf16, fused AdamW).
Prints measured vs planned peak allocated memory and step time, and the executor/plain tokens/s
ratio; writes them to bench/results/.

usage: python bench/gpu_check.py [--models gpt2-124m,tinyllama-1.1b] [--zero 0,1,2,3]
                                 [--steps 30] [--calibrate] [--out FILE]
       python bench/gpu_check.py --cpu-smoke     # the same path on this CPU, tiny model

The acceptance bar (issue 9): peak allocated within 3 % of the plan for every stage, executor
tokens/s >= 0.9 x the plain loop, MFU >= 40 % for TinyLlama-1.1B on an H100/H200.

--calibrate (issue 11): ``plan calibrate`` on each model's run directories, then the re-planned
step time of those same runs (bar: within 3 %) and of one more run at twice the micro-batch,
trained after the fit (bar: within 8 %).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: per model: micro-batch and sequence length for one GPU (the calibration harness's shapes)
SHAPES = {"gpt2-124m": (8, 1024), "tinyllama-1.1b": (4, 2048), "tiny-gpt": (4, 128)}
CPU_LAB = {"name": "cpu", "memory_gib": 8, "peak_tflops": {"fp32": 0.2, "bf16": 0.1},
           "hbm_gbps": 20, "intra_node_link": "pcie", "intra_node_gbps": 10,
           "cublas_workspace_mib": 0, "accelerator": "cpu"}


def gpu_entry() -> str:
    """The catalog GPU this machine has (torch's device name, catalog device_names)."""
    import torch

    from planner.spec.catalog import find_gpu
    name = torch.cuda.get_device_name(0)
    found = find_gpu(name)
    if found is None:
        raise SystemExit(f"error: {name!r} is not in planner/spec/data/gpus.yaml")
    return found[0]


def spec_for(model: str, zero: int, steps: int, cpu: bool, mb: int | None = None):
    from planner.spec.loading import spec_from_dict
    shape_mb, seq = SHAPES[model]
    mb = mb or shape_mb
    gpu = CPU_LAB if cpu else gpu_entry()
    precision = "fp32" if cpu else "bf16"
    return spec_from_dict({
        "name": f"{model} z{zero}",
        "model": {"preset": model, "seq_len": seq},
        "cluster": {"gpu": gpu, "nodes": 1, "gpus_per_node": 1},
        "training": {"tokens": float(mb * seq * steps), "global_batch_sequences": mb},
        "search": {"dp": 1, "tp": 1, "pp": 1, "zero": zero, "precision": precision,
                   "micro_batch": mb, "recompute": "none"},
        "runtime": {"cuda_context_gib": 0} if cpu else {}})


def check(model: str, zero: int, steps: int, workdir: Path, cpu: bool,
          mb: int | None = None) -> dict:
    from executor.run import ExecuteRequest, execute
    from executor.rundir import RunDir
    from planner.search.engine import search
    spec = spec_for(model, zero, steps, cpu, mb)
    best = search(spec, executable=True).best
    if best is None:
        return {"model": model, "zero": zero, "error": "no feasible plan"}
    run = RunDir(workdir / (f"{model}-z{zero}" + (f"-mb{mb}" if mb else "")))
    stories = 400 if cpu else 4000
    t0 = time.perf_counter()
    rc = execute(spec, best.plan, run.path, ExecuteRequest(
        max_steps=steps, tokenizer="byte", stories=stories, eval_every=10**9,
        checkpoint_every=10**9, cache_dir=str(workdir / "cache")))
    wall = time.perf_counter() - t0
    if rc != 0:
        return {"model": model, "zero": zero, "error": f"executor exit {rc}, see {run.log}"}
    report = json.loads(run.report_json.read_text())
    pred, meas = report["predicted"], report["measured"]
    plain = plain_run(spec, best.plan, run, steps, cpu)
    row = {"model": model, "zero": zero, "plan": best.plan.label, "steps": steps,
           "planned_peak_gib": pred["peak_memory_bytes"] / 2**30,
           "measured_peak_gib": (meas["peak_memory_bytes"] or 0) / 2**30 or None,
           "planned_step_s": pred["step_time_s"], "measured_step_s": meas["step_time_s"],
           "executor_tokens_per_s": meas["tokens_per_s"], "mfu": meas["mfu"],
           "plain_tokens_per_s": plain["tokens_per_s"], "plain_peak_gib": plain["peak_gib"],
           "wall_s": wall, "run_dir": str(run.path)}
    if row["measured_peak_gib"]:
        row["peak_error"] = row["measured_peak_gib"] / row["planned_peak_gib"] - 1
    row["step_error"] = row["measured_step_s"] / row["planned_step_s"] - 1
    row["executor_over_plain"] = row["executor_tokens_per_s"] / row["plain_tokens_per_s"]
    return row


def calibration_check(model: str, rows: list[dict], steps: int, workdir: Path,
                      cpu: bool) -> dict:
    """Fit a profile on the model's runs, re-plan them, and predict a run at twice the
    micro-batch that the fit has not seen."""
    from executor.report import measured_run
    from planner.spec.profile import with_constants
    from planner.validate.calibrate import calibrate, predicted_step_s
    done = [r for r in rows if r["model"] == model and "error" not in r]
    if not done:
        return {"model": model, "error": "no finished run to calibrate on"}
    result = calibrate([measured_run(r["run_dir"]) for r in done])
    same = [abs(f.error_after) for f in result.runs]
    zero = done[0]["zero"]
    other = check(model, zero, steps, workdir, cpu, mb=2 * SHAPES[model][0])
    out = {"model": model, "constants": result.profile.constants, "fitted": list(result.fitted),
           "same_runs_max_error": max(same), "same_runs_errors_before":
           [f.error_before for f in result.runs], "same_runs_errors_after":
           [f.error_after for f in result.runs]}
    if "error" in other:
        return {**out, "error": f"the micro-batch x2 run: {other['error']}"}
    spec = spec_for(model, zero, steps, cpu, 2 * SHAPES[model][0])
    from planner.plan.strategy import Plan
    plan = Plan.from_dict(json.loads(Path(other["run_dir"], "run.json").read_text())["plan"])
    after = predicted_step_s(with_constants(spec, result.profile.constants), plan)
    return {**out, "other_mb_measured_s": other["measured_step_s"],
            "other_mb_error_before": other["step_error"],
            "other_mb_error_after": other["measured_step_s"] / after - 1}


def plain_run(spec, plan, run, steps: int, cpu: bool) -> dict:
    """The same model and batches in one plain PyTorch process, after the executor's run."""
    import torch

    from executor.report import WARMUP_STEP_FRACTION
    from executor.train import plain_training
    _, _, options = run.load()
    device = "cpu" if cpu else "cuda"
    if not cpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    _, times = plain_training(spec, plan, run.shards_dir(), options, steps, device=device)
    timed = times[max(1, int(len(times) * WARMUP_STEP_FRACTION)):]
    tokens = plan.micro_batch * plan.grad_accum * plan.dp * spec.model.seq_len
    peak = None if cpu else torch.cuda.max_memory_allocated() / 2**30
    return {"tokens_per_s": tokens / statistics.median(timed), "peak_gib": peak}


def table(rows: list[dict]) -> str:
    from tabulate import tabulate

    def f(x, fmt):
        return "" if x is None else format(x, fmt)
    body = [[r["model"], r["zero"], f(r.get("planned_peak_gib"), ".2f"),
             f(r.get("measured_peak_gib"), ".2f"), f(r.get("peak_error"), "+.1%"),
             f(r.get("planned_step_s"), ".4f"), f(r.get("measured_step_s"), ".4f"),
             f(r.get("step_error"), "+.1%"), f(r.get("executor_over_plain"), ".2f"),
             f(r.get("mfu"), ".1%"), r.get("error", "")] for r in rows]
    return tabulate(body, headers=["model", "ZeRO", "plan GiB", "meas. GiB", "err",
                                   "plan s/step", "meas. s/step", "err", "exec/plain", "MFU",
                                   "error"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gpt2-124m,tinyllama-1.1b")
    ap.add_argument("--zero", default="0,1,2,3")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--calibrate", action="store_true",
                    help="fit a calibration profile on each model's runs and check it")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run the same path on this CPU with a tiny model (no memory measured)")
    args = ap.parse_args()
    import torch
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("error: no CUDA GPU here; --cpu-smoke runs the same path on the CPU",
              file=sys.stderr)
        return 1
    models = ["tiny-gpt"] if args.cpu_smoke else args.models.split(",")
    zeros = [int(z) for z in args.zero.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for model in models:
            for zero in zeros:
                rows.append(check(model, zero, args.steps, Path(tmp), args.cpu_smoke))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
        calibration = [calibration_check(m, rows, args.steps, Path(tmp), args.cpu_smoke)
                       for m in models] if args.calibrate else []
    print(table(rows))
    for c in calibration:
        print(f"calibration {c['model']}: {c.get('fitted')} -> {c.get('constants')}; same runs "
              f"max |error| {c.get('same_runs_max_error', float('nan')):.1%}; micro-batch x2 "
              f"error {c.get('other_mb_error_before', float('nan')):+.1%} before, "
              f"{c.get('other_mb_error_after', float('nan')):+.1%} after {c.get('error', '')}")
    device = "cpu" if args.cpu_smoke else torch.cuda.get_device_name(0)
    out = args.out or ROOT / "bench" / "results" / (
        f"gpu_check_{'cpu' if args.cpu_smoke else 'gpu'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "torch": torch.__version__,
                               "date": time.strftime("%Y-%m-%d"), "rows": rows,
                               "calibration": calibration}, indent=1))
    print(f"wrote {out}")
    return 0 if all("error" not in r for r in rows + calibration) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
