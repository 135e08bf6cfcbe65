"""``plan LAB_SPEC --execute``: train the scaling-law lab's IsoFLOP grid (planner/capacity/lab.py)
through the executor, collect every point's losses, fit the law and plot it.

The lab directory (default runs/<spec name>/):

    lab.json          the grid as laid out (a resume checks it is the same), the data, the tokenizer
    tokenizer/        one tokenizer every point shares (trained once on the corpus)
    points/NN-*/      one run directory per point (executor/rundir.py)
    results.jsonl     every point's train and eval losses, one record per line
    fit.json          approaches 2 and 3, both parameter counts, bootstrap intervals
    law.yaml          the approach-3 law, for ``training.scaling_law: {file: law.yaml}``
    fit.txt           the summary printed at the end
    plots/            loss curves, IsoFLOP profiles, frontier beside the published laws, residuals

Every point trains on the same data with the same tokenizer and seed, its learning-rate schedule
(warmup, cosine) scaled to its own token count (Hoffmann et al. 2022, section 3.1, found matching
the cosine length to the run matters).  Points whose plans launch alike train one after another
in one process group (the start-up is paid once).  A finished point (its actual.json) is never
re-run; a killed one resumes from its last complete checkpoint (``--resume``).
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from planner.capacity.lab import (LabGrid, LabPoint, lab_grid, lab_learning_rate,
                                  lab_warmup_steps, point_spec)
from planner.capacity.labfit import LabFit, LabPointResult, fit_lab, lab_fit_json
from planner.capacity.scaling import save_law
from planner.model.shape import param_counts
from planner.plan.strategy import Plan
from planner.spec.spec import Spec

from .errors import ExecutorError
from .rundir import RunDir, RunOptions, check_checkpoint, complete_checkpoints
from .run import (DEFAULT_CACHE, ExecuteRequest, current_device, make_options, plan_problem,
                  machine_problem, prepare_run_dir, stream)

#: generated stories at least; more when the largest point would otherwise repeat its data
MIN_STORIES = 20_000
#: validation tokens each evaluation reads, so the final losses the fit uses are not noisy
EVAL_TOKENS = 65_536
#: the points went to a batch scheduler: not trained yet, so no fit (exit code of run_lab)
EXIT_SUBMITTED = 4
#: how much more data than the largest point needs the generated corpus aims for
DATA_MARGIN = 1.1


@dataclass(frozen=True)
class LabRun:
    """One point to train: where, with which plan, under which spec."""

    index: int
    point: LabPoint
    spec: Spec
    plan: Plan
    run: RunDir

    @property
    def name(self) -> str:
        return self.run.path.name

    @property
    def finished(self) -> bool:
        return self.run.actual.is_file()


# ------------------------------------------------------------------------------------ layout

def point_dir_name(i: int, p: LabPoint) -> str:
    return f"{i:02d}-L{p.level}-{p.model.name}"


def lab_runs(spec: Spec, grid: LabGrid, lab_dir: Path) -> list[LabRun]:
    """Every point with its plan: the grid's best plan on the spec's cluster, which the grid
    already ranked among those the executor can run."""
    missing = [f"{p.model.name} at {p.flops:.3g} FLOPs: {p.reason}" for p in grid.points
               if p.best is None]
    if missing:
        raise ExecutorError(f"training.lab: {len(missing)} point(s) have no plan the executor "
                            f"can run: {'; '.join(missing)}")
    return [LabRun(i, p, point_spec(spec, p.model, p.tokens), p.best.plan,
                   RunDir(lab_dir / "points" / point_dir_name(i, p)))
            for i, p in enumerate(grid.points)]


def grid_record(runs: list[LabRun]) -> list[dict]:
    return [{"point": r.index, "dir": r.name, "level": r.point.level, "flops": r.point.flops,
             "model": r.point.model.model_dump(mode="json"), "params": r.point.params,
             "params_non_embedding": param_counts(r.point.model).non_embedding,
             "tokens": r.point.tokens, "steps": r.point.steps, "plan": r.plan.label,
             "predicted_s": r.point.seconds} for r in runs]


# -------------------------------------------------------------------------------------- data

def lab_data(spec: Spec, runs: list[LabRun], lab_dir: Path, request: ExecuteRequest,
             cache_dir: Path) -> tuple[dict, tuple]:
    """(what lab.json records, the prepared tokenizer and shards): one corpus and one tokenizer
    for every point, the tokenizer trained once and saved in the lab directory.  Generated
    stories are made numerous enough that the largest point sees each training token once
    (unless --stories says how many)."""
    from .data import build_shards
    from .run import corpus_tokens
    from .stories import generate_stories

    options = RunOptions(**{k: v for k, v in dict(
        seed=request.seed, stories=request.stories or MIN_STORIES, data=request.data,
        tokenizer=request.tokenizer).items() if v is not None})
    needed = max(r.point.tokens for r in runs)
    tok, shards, source = corpus_tokens(spec, options, cache_dir)
    stories = options.stories
    if request.data is None and request.stories is None and shards.tokens("train") < needed:
        stories = math.ceil(stories * DATA_MARGIN * needed / shards.tokens("train"))
        shards = build_shards(generate_stories(stories, options.seed), tok, cache_dir / "shards",
                              val_fraction=options.val_fraction)
        source = f"{stories} generated stories (seed {options.seed})"
    tok.save(lab_dir / "tokenizer")
    train_tokens = shards.tokens("train")
    info = {"source": source, "stories": None if request.data else stories,
            "train_tokens": train_tokens, "val_tokens": shards.tokens("val"),
            "epochs_of_largest_point": needed / train_tokens}
    return info, (tok, shards, source)


# ---------------------------------------------------------------------------------- training

def point_options(spec: Spec, r: LabRun, lab_dir: Path, data: dict, request: ExecuteRequest):
    """The point's run options: the lab's learning-rate rule and warmup fraction (flags
    override them for every point), more evaluation tokens than a plain run."""
    lab = spec.training.lab
    per_batch = r.plan.micro_batch * r.spec.model.seq_len * r.plan.dp
    return make_options(r.spec, r.plan, data=request.data, tokenizer=str(lab_dir / "tokenizer"),
                        seed=request.seed, stories=data["stories"],
                        learning_rate=request.learning_rate or lab_learning_rate(lab,
                                                                                 r.point.model),
                        warmup_steps=(request.warmup_steps if request.warmup_steps is not None
                                      else lab_warmup_steps(lab, r.point.steps)),
                        eval_every=request.eval_every, checkpoint_every=request.checkpoint_every,
                        eval_batches=max(4, math.ceil(EVAL_TOKENS / per_batch)))


def launch_groups(runs: list[LabRun]) -> list[list[LabRun]]:
    """Consecutive points that launch alike (the same world size, so the same ranks) train in
    one process group, one after another."""
    groups: list[list[LabRun]] = []
    for r in runs:
        if groups and groups[-1][-1].plan.world_size == r.plan.world_size:
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


class SweepProgress:
    """One line per point as it starts: where the sweep stands in points and FLOPs, and its ETA
    from the planner's predicted times scaled by how fast the finished points actually went."""

    def __init__(self, runs: list[LabRun]):
        self.runs = {str(r.run.path.resolve()): r for r in runs}
        self.total = len(runs)
        self.flops = sum(r.point.flops for r in runs)
        self.t0 = time.monotonic()
        self.done_predicted = 0.0  #: predicted seconds of the points finished in this session

    def line(self, r: LabRun, finished: list[LabRun]) -> str:
        done_flops = sum(x.point.flops for x in finished)
        left = [x for x in self.runs.values() if x not in finished]
        predicted_left = sum(x.point.seconds or 0.0 for x in left)
        elapsed = time.monotonic() - self.t0
        scale = elapsed / self.done_predicted if self.done_predicted > 0 else 1.0
        p = r.point
        return (f"lab point {r.index + 1}/{self.total}: level {p.level}, {p.model.name}, "
                f"N {p.params:,}, D {p.tokens:.3g} tokens, {p.steps:,} steps "
                f"(predicted {p.seconds or 0:.0f} s) · sweep {done_flops / self.flops:.0%} of "
                f"FLOPs done, ETA {scale * predicted_left:.0f} s")


def train_points(spec: Spec, runs: list[LabRun], lab_dir: Path, request: ExecuteRequest) -> int:
    """Train every unfinished point; returns the first non-zero exit code, else 0."""
    from .launch import DS_ENV_FILE, launch_command, trains_here
    from .run import submit_slurm

    progress = SweepProgress(runs)
    for group in launch_groups([r for r in runs if not r.finished]):
        for r in group:
            if complete_checkpoints(r.run):
                check_checkpoint(r.run)  # never resume from a corrupt checkpoint
        first = group[0]
        local = trains_here(first.spec)
        launch = launch_command(first.spec, first.plan,
                                [r.run.path.resolve() if local else r.run.path for r in group],
                                extra=["--continue"])
        for name, text in (("hostfile", launch.hostfile), (DS_ENV_FILE, launch.env_file)):
            if text is not None:
                (first.run.path / name).write_text(text)
        if launch.sbatch is not None:
            print("the lab's points are submitted as one job: rerun with --resume once it is "
                  "done, to collect and fit them", file=sys.stderr)
            return submit_slurm(first.run, launch) or EXIT_SUBMITTED
        by_path = {str(r.run.path.resolve()): r for r in group}
        started: list[LabRun] = []

        def on_start(ev: dict) -> None:
            r = by_path.get(str(Path(ev["run_dir"]).resolve()))
            if r is None:
                return
            if started:  # the previous point of this group finished
                progress.done_predicted += started[-1].point.seconds or 0.0
            started.append(r)
            finished = [x for x in runs if x.finished]
            print(progress.line(r, finished), file=sys.stderr, flush=True)

        rc = stream(launch.argv, launch.env, first.run, verbose=request.verbose,
                    on_start=on_start)
        if started and started[-1].finished:
            progress.done_predicted += started[-1].point.seconds or 0.0
        if rc != 0:
            failed = next((r for r in group if not r.finished), group[-1])
            print(f"error: lab point {failed.name} stopped (exit code {rc}); its log is "
                  f"{failed.run.log if failed.run.log.exists() else first.run.log}; rerun with "
                  f"--resume to go on from its last checkpoint", file=sys.stderr)
            return rc
    return 0


# ----------------------------------------------------------------------------------- results

def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_eval_loss(run: RunDir) -> Optional[float]:
    evals = [r for r in read_jsonl(run.metrics) if r["kind"] == "eval"]
    return evals[-1]["eval_loss"] if evals else None


def write_results(runs: list[LabRun], path: Path) -> list[LabPointResult]:
    """results.jsonl from every point's metrics (rewritten whole: one trajectory per point, the
    same after a resume); returns the finished points' final losses for the fit."""
    finished = []
    with open(path.with_suffix(".tmp"), "w") as f:
        for r in runs:
            p = r.point
            base = {"point": r.index, "level": p.level, "flops": p.flops, "model": p.model.name,
                    "params": p.params,
                    "params_non_embedding": param_counts(p.model).non_embedding,
                    "tokens": p.tokens, "steps": p.steps}
            tokens_per_step = r.spec.global_batch_sequences * r.spec.model.seq_len
            records = read_jsonl(r.run.metrics)
            for rec in records:
                f.write(json.dumps({**base, **rec, "tokens_seen": rec["step"] * tokens_per_step})
                        + "\n")
            loss = final_eval_loss(r.run) if r.finished else None
            if loss is not None:
                f.write(json.dumps({**base, "kind": "final", "step": p.steps,
                                    "eval_loss": loss}) + "\n")
                finished.append(LabPointResult(p.flops, p.params,
                                               param_counts(p.model).non_embedding,
                                               p.tokens, loss))
    path.with_suffix(".tmp").replace(path)
    return finished


# ------------------------------------------------------------------------------------- entry

def run_lab(spec: Spec, lab_dir: str | Path, request: ExecuteRequest = ExecuteRequest()) -> int:
    """Lay out, train, collect and fit the lab.  Returns 0 when every point trained and the
    fit was written; the exit code of the failed launch otherwise."""
    lab_dir = Path(lab_dir)
    if request.max_steps is not None:
        raise ExecutorError("--max-steps: the lab trains every point to the end of its own "
                            "schedule (a cut point would bias the fit); lower training.lab's "
                            "budget instead")
    if request.init_from is not None:
        raise ExecutorError("--init-from: every lab point starts from its own initialisation")
    grid = lab_grid(spec)
    runs = lab_runs(spec, grid, lab_dir)
    if request.dry_run:  # the grid itself is what `plan SPEC` prints
        print(f"\n--execute would train these {len(runs)} points in {lab_dir}/points/, one "
              f"after another, and fit the law on their final eval losses")
        return 0
    layout = grid_record(runs)
    lab_file = lab_dir / "lab.json"
    if request.resume:
        if not lab_file.is_file():
            raise ExecutorError(f"{lab_dir}: nothing to resume (no lab.json; start it without "
                                f"--resume)")
        saved = json.loads(lab_file.read_text())
        if [(g["dir"], g["tokens"]) for g in saved["grid"]] != [(g["dir"], g["tokens"])
                                                                for g in layout]:
            raise ExecutorError(f"{lab_dir} was laid out for another grid (the spec's lab, model "
                                f"or cluster changed): start a new lab directory")
        data, prepared = saved["data"], None
    else:
        if lab_dir.exists():
            raise ExecutorError(f"lab directory {lab_dir} exists; pass --resume or choose another "
                                f"--run-dir")
        if request.data is not None and not Path(request.data).exists():
            raise ExecutorError(f"data path {request.data} does not exist")
        from .launch import trains_here
        if trains_here(spec):
            reason = plan_problem(runs[0].spec, runs[0].plan) or machine_problem(
                runs[0].spec, runs[0].plan, current_device(), None)
            if reason:
                raise ExecutorError(reason)
        cache = Path(request.cache_dir) if request.cache_dir else DEFAULT_CACHE
        staging = lab_dir.with_name(lab_dir.name + ".preparing")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        data, prepared = lab_data(spec, runs, staging, request, cache)
        (staging / "lab.json").write_text(json.dumps(
            {"spec": spec.model_dump(mode="json"), "grid": layout, "data": data}, indent=1) + "\n")
        staging.rename(lab_dir)
    print(f"lab: {len(runs)} points in {lab_dir}, {data['source']}, "
          f"{data['train_tokens']:,} training tokens (the largest point reads "
          f"{data['epochs_of_largest_point']:.2f} epochs)", file=sys.stderr)
    cache = Path(request.cache_dir) if request.cache_dir else DEFAULT_CACHE
    for r in runs:
        if not r.run.path.exists():
            prepare_run_dir(r.spec, r.plan, r.run.path,
                            point_options(spec, r, lab_dir, data, request),
                            cache_dir=cache, prepared=prepared)
    rc = train_points(spec, runs, lab_dir, request)
    points = write_results(runs, lab_dir / "results.jsonl")
    if rc != 0 or len(points) < len(runs):
        return rc or 1
    text = write_fit(spec, runs, points, lab_dir)
    print(text)
    return 0


def write_fit(spec: Spec, runs: list[LabRun], points: list[LabPointResult],
              lab_dir: Path) -> str:
    """fit.json, law.yaml, the plots and fit.txt; returns the text."""
    from .lab_report import fit_text, plot_lab

    fit: LabFit = fit_lab(points, name=f"lab fit: {spec.name or lab_dir.name}")
    (lab_dir / "fit.json").write_text(json.dumps(lab_fit_json(fit), indent=1) + "\n")
    law = fit.approach3["total"].law
    if law is not None:
        save_law(law, lab_dir / "law.yaml")
    plot_lab(spec, lab_dir / "results.jsonl", fit, lab_dir / "plots", points)
    text = fit_text(spec, points, fit, lab_dir)
    (lab_dir / "fit.txt").write_text(text)
    return text


__all__ = ["run_lab", "lab_runs", "write_results", "write_fit", "LabRun", "launch_groups"]
