"""Planner speed: wall time of a full search per spec, candidates evaluated per second, and the
batch (vectorised) evaluator against evaluating the same plans one by one in this process.

usage: python bench/plan_speed.py [--repeat N]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from tabulate import tabulate

from planner.estimate.predict import estimate
from planner.search.engine import candidate_batch, search
from planner.search.rules import check
from planner.spec.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml")) + [ROOT / "bench/specs/1t_on_4096xH100.yaml"]
SCALAR_SAMPLE = 300


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def scalar_rate(spec) -> float:
    """Plans per second when each passes the rules and is estimated on its own (the baseline)."""
    batch = candidate_batch(spec)
    plans = [batch.plan(i) for i in range(0, len(batch), max(1, len(batch) // SCALAR_SAMPLE))]
    t = time.perf_counter()
    for p in plans:
        if check(spec, p) is None:
            estimate(spec, p)
    return len(plans) / (time.perf_counter() - t)


def main(repeat: int) -> None:
    rows = []
    for path in SPECS:
        spec = load_spec(path)
        result = search(spec)
        seconds = best_of(repeat, lambda: search(spec))
        batch_rate = result.evaluated / seconds
        base = scalar_rate(spec)
        rows.append([path.name, result.evaluated, len(result.feasible), f"{seconds * 1e3:.1f}",
                     f"{batch_rate:,.0f}", f"{base:,.0f}", f"{batch_rate / base:.0f}x"])
    print(tabulate(rows, headers=["spec", "candidates", "feasible", "search ms",
                                  "candidates/s", "one-by-one/s", "speed-up"],
                   colalign=("left",) + ("right",) * 6))


if __name__ == "__main__":
    main(int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 3)
