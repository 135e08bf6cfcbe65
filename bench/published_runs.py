"""Predicted vs measured throughput of published multi-GPU training runs.

usage: python bench/published_runs.py [PUBLISHED.yaml]
(default: ../shared/calibration/published_runs_sample.yaml beside the repository, else the copy
in tests/data/).  Compares tokens per second per GPU, which does not depend on any source's
FLOP-counting convention; MFU is shown with the planner's convention (6·N_matmul + 12·L·h·s).
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

from tabulate import tabulate

from planner.estimate.timing import throughput
from planner.validate.published import error, load_published

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = [ROOT.parent / "shared/calibration/published_runs_sample.yaml",
           ROOT / "tests/data/published_runs_sample.yaml"]


def main(path: Path) -> None:
    rows, errors = [], []
    for run in load_published(path):
        t = throughput(run.spec, run.plan)
        per_gpu = t.tokens_per_s / run.plan.world_size
        err = error(run, per_gpu)
        errors.append(abs(err))
        st = t.step
        comm = (st.tp_comm + st.pp_comm + st.dp_comm) / st.total
        rows.append([run.id, run.plan.label, f"{run.tokens_per_s_per_gpu:,.1f}", f"{per_gpu:,.1f}",
                     f"{err:+.1%}", f"{t.mfu:.1%}", f"{st.compute / st.total:.0%}",
                     f"{comm:.0%}", f"{st.bubble / st.total:.0%}"])
    print(f"published runs: {path}")
    print(tabulate(rows, headers=["run", "plan", "measured tok/s/GPU", "predicted", "error",
                                  "pred. MFU", "compute", "comm", "bubble"],
                   colalign=("left", "left") + ("right",) * 7))
    print(f"\n|error| on tokens/s per GPU: median {statistics.median(errors):.1%}, "
          f"worst {max(errors):.1%} over {len(errors)} runs")


if __name__ == "__main__":
    given = [Path(sys.argv[1])] if len(sys.argv) > 1 else [p for p in DEFAULT if p.exists()][:1]
    main(given[0])
