"""Predicted vs measured peak allocated memory on the single-GPU DeepSpeed calibration runs.

usage: python bench/calibration_memory.py [CALIBRATION.jsonl]
(default: ../shared/calibration/h200_deepspeed_runs.jsonl beside the repository, else the copy
in tests/data/)
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

from tabulate import tabulate

from planner.estimate.predict import estimate
from planner.spec.units import GiB
from planner.validate.calibration import load_measurements

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = [ROOT.parent / "shared/calibration/h200_deepspeed_runs.jsonl",
           ROOT / "tests/data/h200_deepspeed_runs.jsonl"]


def main(path: Path) -> None:
    rows, errors = [], []
    for m in load_measurements(path):
        e = estimate(m.spec, m.plan)
        if m.ok:
            err = e.peak_bytes / m.peak_alloc_bytes - 1
            errors.append(abs(err))
            rows.append([m.name, "ok", f"{m.peak_alloc_bytes / GiB:.3f}", f"{e.peak_bytes / GiB:.3f}",
                         f"{err:+.2%}", f"{m.peak_reserved_bytes / GiB:.2f}",
                         f"{e.reserved_bytes / GiB:.2f}", e.memory.moment])
        else:
            rows.append([m.name, m.error, "-", f"{e.peak_bytes / GiB:.3f}",
                         "predicted fits" if e.fits else "predicted OOM", "-",
                         f"{e.reserved_bytes / GiB:.2f}", e.memory.moment])
    print(f"calibration: {path}")
    print(tabulate(rows, headers=["run", "status", "measured GiB", "predicted GiB", "error",
                                  "meas. reserved", "pred. reserved", "peak moment"],
                   colalign=("left", "left", "right", "right", "right", "right", "right", "left")))
    if errors:
        print(f"\n|error| on peak allocated: median {statistics.median(errors):.2%}, "
              f"worst {max(errors):.2%} over {len(errors)} runs")


if __name__ == "__main__":
    given = [Path(sys.argv[1])] if len(sys.argv) > 1 else [p for p in DEFAULT if p.exists()][:1]
    main(given[0])
