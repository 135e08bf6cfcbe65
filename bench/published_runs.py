"""Predicted vs measured throughput of published multi-GPU training runs.

usage: python bench/published_runs.py [--cv [--extra] | --fit] [PUBLISHED.yaml]
(default: ../shared/calibration/published_runs_sample.yaml beside the repository, else the copy
in tests/data/).  --cv: leave one source out (planner/validate/crossval.py): the GEMM and
attention efficiencies fitted on these runs are refitted without each source's runs, which are
then predicted; the out-of-sample error is shown first, the in-sample one beside it.  --fit:
each GPU generation's constants refitted on all its runs (the catalog's H100 values).  Compares
tokens per second per GPU, which does not depend on any source's FLOP-counting convention; MFU is
shown with the planner's convention (6·N_matmul + 12·L·h·s).
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


def default_path() -> Path:
    """The shared sample beside the repository, else the copy in tests/data/."""
    return next(p for p in DEFAULT if p.exists())


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


def extra_runs() -> list:
    """The bf16 runs of bench/data/published_fp8_cp.yaml (torchtitan, torchao, llm-foundry; not
    in the shared sample) on GPUs with priors, as PublishedRun: tokens/s per GPU given, no
    async TP (not modelled), no context parallelism (not fitted here)."""
    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import published_fp8_cp as pub

    from planner.spec.loading import spec_from_dict
    from planner.validate.crossval import PRIORS, generation
    from planner.validate.published import PublishedRun
    out = []
    for row in yaml.safe_load(pub.DATA.read_text())["rows"]:
        par = row["parallel"]
        if row["precision"]["dtype"] != "bf16" or par.get("async_tp") or par.get("cp", 1) > 1 \
                or not row["measured"].get("tokens_per_s_per_gpu"):
            continue
        data, plan, notes = pub.build(row)
        spec = spec_from_dict(data)
        if generation(spec.cluster.gpu.name) not in PRIORS:
            continue
        out.append(PublishedRun(row["id"], spec, plan, row["measured"]["tokens_per_s_per_gpu"],
                                "; ".join(notes), row["source"]))
    return out


def cross_validated(path: Path) -> None:
    from planner.validate.crossval import FITTED, PRIORS, leave_one_source_out, summary
    runs = load_published(path)
    extra = extra_runs() if "--extra" in sys.argv[1:] else []
    preds = leave_one_source_out(runs, extra=extra)
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
    if not extra:
        return
    print(f"\nwith {len(extra)} more bf16 runs in every refit whose held-out source is not theirs "
          f"(bench/data/published_fp8_cp.yaml: {', '.join(sorted({r.source for r in extra}))})")
    back = leave_one_source_out(extra, extra=runs)  # those runs, each source held out
    print(tabulate([[p.id, p.source, f"{p.measured:,.1f}", f"{p.out_of_sample:,.1f}",
                     f"{p.error_out:+.1%}", f"{p.error_in:+.1%}", p.fitted_on] for p in back],
                   headers=["run (not shared)", "source", "measured tok/s/GPU", "predicted (CV)",
                            "error (CV)", "error (in-sample)", "runs refitted on"],
                   colalign=("left", "left") + ("right",) * 5))
    b_out, b_in = summary([p.error_out for p in back]), summary([p.error_in for p in back])
    print(f"  not-shared runs, out of sample: median {b_out['median']:.1%}, 90th percentile "
          f"{b_out['p90']:.1%}; with the catalog's constants: median {b_in['median']:.1%}")
    both = summary([p.error_out for p in preds] + [p.error_out for p in back])
    print(f"  all {len(preds) + len(back)} runs, out of sample: median {both['median']:.1%}, "
          f"90th percentile {both['p90']:.1%}, worst {both['worst']:.1%}")


def fitted(path: Path) -> None:
    """Each GPU generation's fitted constants from all its runs (what the catalog ships): the
    shared sample's, and the shared sample's with the not-shared bf16 runs."""
    from planner.validate.crossval import FITTED, PRIORS, generation, refit
    runs, extra = load_published(path), extra_runs()
    print(f"{', '.join(FITTED)} refitted on all runs of a generation, from the priors {PRIORS}")
    for gen in PRIORS:
        mine = [r for r in runs if generation(r.spec.cluster.gpu.name) == gen]
        more = [r for r in extra if generation(r.spec.cluster.gpu.name) == gen]
        for label, pool in ((f"{len(mine)} shared runs", mine),
                            (f"{len(mine) + len(more)} runs with the not-shared", mine + more)):
            values = refit(pool, gen)
            print(f"  {gen} on its {label}: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in values.items()))


if __name__ == "__main__":
    flags = ("--cv", "--extra", "--fit")
    args = [a for a in sys.argv[1:] if a not in flags]
    given = Path(args[0]) if args else default_path()
    if "--fit" in sys.argv[1:]:
        fitted(given)
    else:
        (cross_validated if "--cv" in sys.argv[1:] else main)(given)
