"""`plan SPEC`: the feasibility report, budget mode, --set overrides and --sweep tables.  The only
place that prints and picks exit codes: 0 a plan was found, 1 bad input or no feasible plan,
2 usage errors (click)."""
from __future__ import annotations

import json
import sys
import traceback

import click

from executor.errors import ExecutorError
from planner.errors import PlannerError

#: problems the user can fix: one line, exit code 1
USER_ERRORS = (PlannerError, ExecutorError)
#: what `pip install -e .` leaves out and --execute needs (the executor extra, pyproject.toml)
EXECUTOR_PACKAGES = {"torch", "deepspeed", "tokenizers", "matplotlib", "tqdm", "ninja"}


class Progress:
    """Progress on stderr for work that takes more than a second: silent until then, then one
    line rewritten in place on a terminal, or a line per tenth of the work in a log."""

    AFTER_S = 1.0

    def __init__(self, what: str):
        self.what, self.start, self.shown, self.tty = what, 0.0, -1, sys.stderr.isatty()

    def __enter__(self) -> "Progress":
        import time
        self.start = time.monotonic()
        return self

    def __call__(self, done: int, total: int) -> None:
        import time
        elapsed = time.monotonic() - self.start
        if elapsed < self.AFTER_S or done >= total:
            return
        tenth = done * 10 // total
        if not self.tty and tenth == self.shown:
            return
        self.shown = tenth
        eta = elapsed / done * (total - done)
        line = f"{self.what}: {done}/{total} in {elapsed:.1f} s, about {eta:.0f} s left"
        click.echo(f"\r{line}" if self.tty else line, err=True, nl=not self.tty)

    def __exit__(self, *exc) -> None:
        if self.tty and self.shown >= 0:
            click.echo("", err=True)


def _fail(message: str, verbose: bool) -> None:
    if verbose:
        traceback.print_exc()
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _infeasible_line(result, fixes: list[str]) -> str:
    from planner.search.engine import why_infeasible
    fix = "; ".join(fixes) if fixes else "no relaxation of the search space or cluster size fits"
    return f"{why_infeasible(result)}; nearest fix: {fix}"


@click.command("plan", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("spec_path", metavar="SPEC", required=False,
                type=click.Path(dir_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (docs/json-report.md).")
@click.option("--schema", is_flag=True, help="Print the spec's JSON schema and exit.")
@click.option("--top", type=click.IntRange(min=1), default=None,
              help="Plans in the report's table, the best included (overrides search.top).")
@click.option("--max", "max_what", type=click.Choice(["micro_batch", "seq_len", "model"]),
              help="Answer 'the largest ... that trains': micro_batch (the best plan's), seq_len "
                   "(re-planned at each length), model (needs a budget: training.budget, --days "
                   "or --budget-usd), with the constraint that binds.")
@click.option("--min", "min_what", type=click.Choice(["gpus"]),
              help="Answer 'the fewest GPUs': that fit, and with --days/--budget-usd that "
                   "train the spec's tokens within them.")
@click.option("--days", type=click.FloatRange(min=0, min_open=True, max=1e6),
              help="Wall-clock bound for --min gpus, or the budget for --max model.")
@click.option("--budget-usd", type=click.FloatRange(min=0, min_open=True, max=1e15),
              help="Money bound for --min gpus, or the budget for --max model (at "
                   "cluster.price_per_gpu_hour or the catalog's price).")
@click.option("--set", "sets", multiple=True, metavar="PATH=VALUE",
              help="Override a spec field by its dotted path, e.g. cluster.nodes=16 (a YAML "
                   "scalar; null removes the field). Repeatable.")
@click.option("--sweep", "sweep_arg", metavar="PATH=V1,V2,...",
              help="Plan once per value of one field, e.g. cluster.nodes=4,8,16,32: a table.")
@click.option("--compare", "compare_arg", metavar="AXIS=V1,V2,...",
              help="The best plan with one field set to each value, e.g. zero=2,3 or tp=1,2: "
                   "its memory and time terms side by side (docs/plots.md).")
@click.option("--plot", "plot_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=str),
              help="Also write PNG charts to DIR: the top plans' memory and step time, a "
                   "--sweep's curves, a --compare's bars (needs matplotlib; docs/plots.md).")
@click.option("--verbose", "-v", is_flag=True, help="Tracebacks and the full report on errors.")
@click.option("--execute", is_flag=True,
              help="Train the best plan with DeepSpeed (docs/executor.md); options below.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=str),
              help="Run directory (default runs/<spec name>).")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir from its checkpoint.")
@click.option("--dry-run", is_flag=True, help="Print the DeepSpeed config, hostfile and command.")
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop after this many steps.")
@click.option("--data", "data_path", help="Corpus: TinyStories .txt/.json(l), plain text or jsonl "
              "(default: generated stories).")
@click.option("--tokenizer", help="'byte', or a saved tokenizer directory (default: BPE trained "
              "on the corpus).")
@click.option("--nvme-path", help="Directory for NVMe offload.")
@click.option("--launcher", type=click.Choice(["auto", "torchrun", "deepspeed", "slurm"]),
              default=None, help="Overrides launch.launcher (default auto: torchrun on one node, "
              "deepspeed with hosts, else slurm).")
@click.option("--hosts", help="Comma-separated hosts for a multi-node launch (overrides "
              "launch.hosts).")
@click.option("--master-addr", help="Rendezvous address (overrides launch.master_addr).")
@click.option("--seed", type=int)
@click.option("--eval-every", type=click.IntRange(min=1))
@click.option("--checkpoint-every", type=click.IntRange(min=1))
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Peak learning rate.")
@click.option("--warmup-steps", type=click.IntRange(min=0))
@click.option("--stories", type=click.IntRange(min=1), help="Generated stories (default data).")
@click.option("--init-from", type=click.Path(dir_okay=False, path_type=str),
              help="Start from another run's weights (RUN/export/pytorch_model.bin), e.g. to go "
                   "on with another layout.")
def plan_command(spec_path: str | None, as_json: bool, schema: bool, top: int | None,
         sets: tuple[str, ...], sweep_arg: str | None, verbose: bool, execute: bool,
         **run_options) -> None:
    """Plan LLM pre-training on a cluster: will it fit, and with which strategy.  With
    training.budget in the spec: which model size to train (budget mode).  With --execute:
    train the chosen plan.  `plan calibrate RUN...` fits a calibration profile to measured
    runs (`plan calibrate --help`)."""
    if schema:
        from planner.spec.loading import json_schema
        click.echo(json.dumps(json_schema(), indent=2))
        return
    if spec_path is None:
        raise click.UsageError("missing SPEC (a YAML file; see docs/spec.md) or --schema")
    compare_arg, plot_dir = run_options.pop("compare_arg"), run_options.pop("plot_dir")
    question = _question_options(run_options, sweep_arg, compare_arg, execute)
    if sweep_arg is not None and compare_arg is not None:
        raise click.UsageError("--sweep and --compare ask different questions: give one")
    try:
        spec = _load(spec_path, sets, top)
        if execute and spec.runtime.backend != "deepspeed":
            raise PlannerError(f"runtime.backend {spec.runtime.backend} is plan-only: --execute "
                               f"runs DeepSpeed (set runtime.backend: deepspeed, or plan "
                               f"without --execute)")
        if execute and spec.runtime.attention_impl != "flash2":
            from planner.backends.deepspeed.rules import attention_kernel_why
            raise PlannerError(attention_kernel_why(spec, ", or plan without --execute"))
        if plot_dir is not None:
            _check_plot(spec, sweep_arg is not None or compare_arg is not None, question)
        if question is not None:
            ok = _question(spec, spec_path, question, as_json)
        elif sweep_arg is not None:
            ok = _sweep(spec, sweep_arg, as_json, plot_dir)
        elif compare_arg is not None:
            ok = _compare(spec, spec_path, compare_arg, as_json, plot_dir)
        elif spec.training.budget is not None:
            ok = _budget(spec, spec_path, as_json)
        elif spec.training.lab is not None:
            ok = _lab(spec, spec_path, as_json)
            if execute:
                sys.exit(_execute_lab(spec, spec_path, verbose, run_options))
        else:
            result = _plan(spec, spec_path, as_json and not execute, verbose, executable=execute)
            ok = result.best is not None
            if ok and plot_dir is not None:
                _plot_report(result, plot_dir, as_json)
            if ok and execute:
                sys.exit(_execute(spec, spec_path, result.best.plan, verbose, run_options))
    except USER_ERRORS as exc:
        _fail(str(exc), verbose)
        return
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in EXECUTOR_PACKAGES:
            _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --verbose)", verbose)
            return
        _fail(f"--execute needs the executor's packages ({exc.name} is missing): pip install "
              f"torch==2.13.0, then pip install --no-build-isolation deepspeed, then pip install "
              f"-e '.[executor]' (README, the test command)", verbose)
        return
    except Exception as exc:  # an internal error still gets one line unless --verbose
        _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --verbose)", verbose)
        return
    if not ok:
        sys.exit(1)


def _load(spec_path: str, sets: tuple[str, ...], top: int | None):
    from planner.capacity.whatif import edit, parse_assignment
    from planner.spec.loading import load_spec
    spec = load_spec(spec_path)
    overrides = dict(parse_assignment(text) for text in sets)
    if top is not None:
        overrides["search.top"] = top
    if not overrides:
        return spec
    edited = edit(spec, overrides)
    if sets and edited.name:  # the spec's own name no longer describes it: say what changed
        edited = edited.model_copy(update={"name": f"{edited.name}, with {', '.join(sets)}"})
    return edited


def _question_options(options: dict, sweep_arg, compare_arg, execute: bool):
    """(--max or --min's target, its direction, days, dollars) or None; usage errors for
    combinations that ask two things at once."""
    max_what, min_what = options.pop("max_what"), options.pop("min_what")
    days, usd = options.pop("days"), options.pop("budget_usd")
    if max_what and min_what:
        raise click.UsageError("--max and --min ask different questions: give one")
    what = max_what or min_what
    if what is None:
        if days is not None or usd is not None:
            raise click.UsageError("--days and --budget-usd bound a question: add --min gpus or "
                                   "--max model")
        return None
    if sweep_arg is not None or compare_arg is not None or execute:
        raise click.UsageError(f"--{'max' if max_what else 'min'} {what} answers one question; "
                               f"it does not combine with --sweep, --compare or --execute")
    if what in ("micro_batch", "seq_len") and (days is not None or usd is not None):
        raise click.UsageError(f"--days and --budget-usd bound --min gpus and --max model, not "
                               f"--max {what}")
    if days is not None and usd is not None and what == "model":
        raise click.UsageError("--max model takes one budget: --days or --budget-usd")
    return what, days, usd


def _question(spec, spec_path: str, question, as_json: bool) -> bool:
    """An inverse question (planner/capacity/inverse.py, sizing.py), with the constraint that
    binds."""
    from planner.capacity import inverse, sizing
    from planner.capacity_report import answer_json, answer_text
    what, days, usd = question
    if what == "gpus":
        answer = sizing.fewest_gpus(spec, days=days, usd=usd)
    elif what == "micro_batch":
        answer = inverse.largest_micro_batch(spec)
    elif what == "seq_len":
        answer = inverse.largest_seq_len(spec)
    else:
        spec = _with_budget(spec, days, usd)
        answer = sizing.largest_model(spec)
    if as_json:
        click.echo(json.dumps(answer_json(answer, spec, spec_path), indent=2))
    else:
        click.echo(answer_text(answer, spec, spec_path))
    return answer.value is not None


def _with_budget(spec, days, usd):
    """The spec in budget mode for --max model: --days or --budget-usd replace its budget or
    tokens; without them the spec must have a budget."""
    from planner.capacity.sizing import price_of
    from planner.capacity.whatif import edit
    if days is None and usd is None:
        if spec.training.budget is None:
            from planner.errors import SpecError
            raise SpecError("training.budget", "--max model needs a budget: training.budget in "
                            "the spec, or --days N or --budget-usd X")
        return spec
    budget = {"days": days} if days is not None else {
        "dollars": usd, "price_per_gpu_hour": price_of(spec)}
    return edit(spec, {"training.budget": budget, "training.tokens": None})


def _request(spec_path: str, verbose: bool, options: dict):
    """(run directory, ExecuteRequest) from the --execute flags."""
    from pathlib import Path

    from executor.run import ExecuteRequest
    run_dir = options.pop("run_dir") or str(Path("runs") / Path(spec_path).stem)
    hosts = options.pop("hosts")
    return run_dir, ExecuteRequest(data=options.pop("data_path"), learning_rate=options.pop("lr"),
                                   hosts=tuple(hosts.split(",")) if hosts else None,
                                   verbose=verbose, **options)


def _execute(spec, spec_path: str, plan, verbose: bool, options: dict) -> int:
    from executor.run import execute
    run_dir, request = _request(spec_path, verbose, options)
    return execute(spec, plan, run_dir, request)


def _execute_lab(spec, spec_path: str, verbose: bool, options: dict) -> int:
    """Train the lab's grid, then fit and plot the law (executor/lab.py)."""
    from executor.lab import run_lab
    from executor.launch import with_overrides
    run_dir, r = _request(spec_path, verbose, options)
    spec = with_overrides(spec, launcher=r.launcher, hosts=r.hosts, master_addr=r.master_addr)
    return run_lab(spec, run_dir, r)


def _plan(spec, spec_path: str, as_json: bool, verbose: bool, executable: bool = False):
    """The report; with ``executable`` (``--execute``) only plans the backend's executor can run
    are ranked."""
    from planner.capacity.advice import nearest_fix, plan_notes
    from planner.report import to_json, to_text
    from planner.search.engine import search
    result = search(spec, executable=executable)
    fixes = nearest_fix(spec, executable=executable) if result.best is None else []
    notes = plan_notes(result, executable=executable)
    if as_json:
        click.echo(json.dumps(to_json(result, fixes, spec_path, notes), indent=2))
    elif result.best is not None or verbose:
        click.echo(to_text(result, fixes, spec_path, notes))
    if result.best is None:
        click.echo(f"error: {_infeasible_line(result, fixes)}", err=True)
    return result


def _budget(spec, spec_path: str, as_json: bool) -> bool:
    from planner.capacity.budget import plan_budget
    from planner.capacity_report import budget_json, budget_text
    from planner.report import to_text
    with Progress("budget mode: searching model sizes") as progress:
        result = plan_budget(spec, progress=progress)
    pick = result.pick
    if as_json:
        click.echo(json.dumps(budget_json(result, spec_path), indent=2))
    else:
        click.echo(budget_text(result, spec_path))
        if pick is not None:
            click.echo("\n" + to_text(pick.result, [], f"{spec_path}, the pick"))
    if pick is None:
        click.echo("error: no candidate model has a feasible plan within the budget", err=True)
    return pick is not None


def _lab(spec, spec_path: str, as_json: bool) -> bool:
    """The scaling-law lab's grid (what --execute trains)."""
    from planner.capacity.lab import lab_grid
    from planner.capacity_report import lab_json, lab_text
    grid = lab_grid(spec)
    if as_json:
        click.echo(json.dumps(lab_json(grid, spec_path), indent=2))
    else:
        click.echo(lab_text(grid, spec_path))
    return all(p.best is not None for p in grid.points)


def _sweep(spec, sweep_arg: str, as_json: bool, plot_dir: str | None = None) -> bool:
    from planner.capacity.whatif import parse_assignment, parse_value, sweep
    from planner.capacity_report import sweep_json, sweep_text
    path, _ = parse_assignment(sweep_arg)
    texts = [v.strip() for v in sweep_arg.partition("=")[2].split(",")]
    if not all(texts):
        from planner.errors import SpecError
        raise SpecError(path, f"--sweep {sweep_arg!r}: an empty value (write the values "
                              f"between commas, e.g. {path}=4,8,16)")
    values = [parse_value(v) for v in texts]
    with Progress(f"sweep of {path}") as progress:
        rows = sweep(spec, path, values, progress=progress)
    if as_json:
        click.echo(json.dumps(sweep_json(rows, path), indent=2))
    else:
        click.echo(sweep_text(rows, path))
    if plot_dir is not None:
        from planner.plots import plot_sweep
        _wrote(plot_sweep(rows, path, plot_dir), as_json)
    return any(r.best is not None for r in rows)


def _compare(spec, spec_path: str, compare_arg: str, as_json: bool, plot_dir: str | None) -> bool:
    """The best plan with one field changed to each value (planner/capacity/compare.py)."""
    from planner.capacity.compare import compare, parse_compare
    from planner.compare_report import compare_json, compare_text
    comparison = compare(spec, *parse_compare(compare_arg))
    if as_json:
        click.echo(json.dumps(compare_json(comparison, spec_path), indent=2))
    else:
        click.echo(compare_text(comparison, spec_path))
    if plot_dir is not None:
        from planner.plots import plot_compare
        _wrote(plot_compare(comparison, plot_dir), as_json)
    return any(v.estimate is not None for v in comparison.variants)


def _check_plot(spec, sweep_or_compare: bool, question=None) -> None:
    """--plot: matplotlib is there (checked before any work) and the report is one it draws."""
    from planner.plots import require_matplotlib
    require_matplotlib()
    if question is not None:
        raise PlannerError("--plot draws the plan report, a --sweep or a --compare, not the "
                           "answer to --max or --min")
    if not sweep_or_compare and (spec.training.budget is not None
                                 or spec.training.lab is not None):
        raise PlannerError("--plot draws the plan report, a --sweep or a --compare; a budget or "
                           "lab spec's own report has no plot (add --sweep PATH=V1,V2,...)")


def _plot_report(result, plot_dir: str, as_json: bool) -> None:
    from planner.plots import plot_report
    _wrote(plot_report(result, plot_dir), as_json)


def _wrote(paths, as_json: bool) -> None:
    """One line per file written; on stderr under --json, so stdout stays one JSON object."""
    for path in paths:
        click.echo(f"wrote {path}", err=as_json)


@click.command("calibrate", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("sources", metavar="RUN...", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=str))
@click.option("-o", "--output", default="profile.yaml", show_default=True,
              type=click.Path(dir_okay=False, path_type=str),
              help="The profile to write (a spec reads it with cluster.profile: PATH).")
@click.option("--constants", help="Comma-separated constants to fit (default: the ones the runs "
              "tell apart, at most one per run).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--verbose", "-v", is_flag=True, help="Tracebacks on errors.")
def calibrate_command(sources: tuple[str, ...], output: str, constants: str | None,
                      as_json: bool, verbose: bool) -> None:
    """Fit the time and memory models' constants to measured runs and write a profile.  RUN is
    an executor run directory, a calibration .jsonl (shared/calibration's format) or a .csv of
    runs made elsewhere (docs/calibration.md)."""
    try:
        from planner.capacity_report import calibration_json, calibration_text
        from planner.spec.profile import save_profile
        from planner.validate.calibrate import calibrate
        runs = _measured_runs(sources)
        names = [c.strip() for c in constants.split(",")] if constants else None
        result = calibrate(runs, constants=names, source="plan calibrate " + " ".join(sources))
        save_profile(result.profile, output)
    except (ValueError, *USER_ERRORS) as exc:
        _fail(str(exc), verbose)
        return
    if as_json:
        click.echo(json.dumps(calibration_json(result, output), indent=2))
    else:
        click.echo(calibration_text(result, output))


def _measured_runs(sources: tuple[str, ...]) -> list:
    from pathlib import Path

    from planner.validate.calibrate import MeasuredRun, load_csv
    from planner.validate.calibration import load_measurements
    runs = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            from executor.report import measured_run
            runs.append(measured_run(path))
        elif path.suffix == ".csv":
            runs += load_csv(path)
        elif path.suffix in (".jsonl", ".json"):
            runs += [MeasuredRun(m.name, m.spec, m.plan, m.step_s, m.peak_alloc_bytes,
                                 m.peak_reserved_bytes, source=path.stem)
                     for m in load_measurements(path) if m.ok]
        else:
            raise ValueError(f"{source}: not a run directory, .jsonl or .csv")
    return runs


class _PlanGroup(click.Group):
    """`plan SPEC ...` runs the planner; `plan calibrate RUN...` the calibration: a first word
    that names no other subcommand goes to the planner, under the program's own name (so its
    usage and errors read `plan SPEC`)."""

    def main(self, args=None, prog_name=None, **extra):
        args = list(sys.argv[1:] if args is None else args)
        if args and args[0] in self.commands and args[0] != "plan":
            return super().main(args, prog_name, **extra)
        return plan_command.main(args, prog_name or "plan", **extra)


main = _PlanGroup(name="plan", commands=[plan_command, calibrate_command], add_help_option=False)


if __name__ == "__main__":
    main()
