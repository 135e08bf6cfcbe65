"""Predicted vs measured throughput of published multi-GPU training runs.

usage: python bench/published_runs.py [--cv] [PUBLISHED.yaml]
(default: ../shared/calibration/published_runs_sample.yaml beside the repository, else the copy
in tests/data/).  --cv: leave one source out (planner/validate/crossval.py): the GEMM and
attention efficiencies fitted on these runs are refitted without each source's runs, which are
then predicted; the out-of-sample error is shown first, the in-sample one beside it.  Compares tokens per second per GPU, which does not depend on any source's
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


def cross_validated(path: Path) -> None:
    from planner.validate.crossval import FITTED, PRIORS, leave_one_source_out, summary
    runs = load_published(path)
    preds = leave_one_source_out(runs)
    rows = [[p.id, p.source, f"{p.measured:,.1f}", f"{p.out_of_sample:,.1f}",
             f"{p.error_out:+.1%}", f"{p.error_in:+.1%}",
             p.fitted_on if p.fitted_on else "0 (priors)"] for p in preds]
    print(f"published runs: {path}; leave one source out ({len({p.source for p in preds})} "
          f"sources), refitting {', '.join(FITTED)} per GPU generation from the priors "
          f"{PRIORS}")
    print(tabulate(rows, headers=["run", "source", "measured tok/s/GPU", "predicted (CV)",
                                  "error (CV)", "error (in-sample)", "runs refitted on"],
                   colalign=("left", "left") + ("right",) * 5))
    out, ins = summary([p.error_out for p in preds]), summary([p.error_in for p in preds])
    print(f"\n|error| on tokens/s per GPU over {len(preds)} runs:")
    print(f"  out of sample (leave one source out): median {out['median']:.1%}, 90th percentile "
          f"{out['p90']:.1%}, worst {out['worst']:.1%}")
    print(f"  in sample (the catalog's constants):   median {ins['median']:.1%}, 90th percentile "
          f"{ins['p90']:.1%}, worst {ins['worst']:.1%}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--cv"]
    given = [Path(args[0])] if args else [p for p in DEFAULT if p.exists()][:1]
    (cross_validated if "--cv" in sys.argv[1:] else main)(given[0])
