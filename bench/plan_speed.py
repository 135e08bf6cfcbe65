"""Wall time of a full search per shipped spec, and candidates evaluated per second.

usage: python bench/plan_speed.py [--repeat N]
The first spec's time is the baseline that the other rows are compared against.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from tabulate import tabulate

from planner.search import search
from planner.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


def main(repeat: int) -> None:
    rows, base = [], None
    for path in sorted((ROOT / "specs").glob("*.yaml")):
        spec = load_spec(path)
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            result = search(spec)
            best = min(best, time.perf_counter() - t)
        base = base or best
        rows.append([path.name, result.evaluated, f"{best * 1e3:.1f}",
                     f"{result.evaluated / best:,.0f}", f"{best / base:.2f}"])
    print(tabulate(rows, headers=["spec", "candidates", "search ms (best of N)", "candidates/s",
                                  "x first"], colalign=("left", "right", "right", "right", "right")))


if __name__ == "__main__":
    main(int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 5)
