"""`plan SPEC`: the feasibility report, budget mode, --set overrides and --sweep tables.  The only
place that prints and picks exit codes: 0 a plan was found, 1 bad input or no feasible plan,
2 usage errors (click)."""
from __future__ import annotations

import json
import sys
import traceback

import click

from .errors import PlannerError


def _fail(message: str, verbose: bool) -> None:
    if verbose:
        traceback.print_exc()
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _infeasible_line(result, fixes: list[str]) -> str:
    reasons = ", ".join(f"{k}: {n}" for k, n in result.by_reason.most_common(3))
    fix = "; ".join(fixes) if fixes else "no relaxation of the search space or cluster size fits"
    return (f"no feasible plan among {result.evaluated} candidates ({reasons}); "
            f"nearest fix: {fix}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("spec_path", metavar="SPEC", required=False,
                type=click.Path(dir_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (docs/json-report.md).")
@click.option("--schema", is_flag=True, help="Print the spec's JSON schema and exit.")
@click.option("--top", type=click.IntRange(min=1), default=None,
              help="Alternatives to show (overrides search.top).")
@click.option("--set", "sets", multiple=True, metavar="PATH=VALUE",
              help="Override a spec field by its dotted path, e.g. cluster.nodes=16 (a YAML "
                   "scalar; null removes the field). Repeatable.")
@click.option("--sweep", "sweep_arg", metavar="PATH=V1,V2,...",
              help="Plan once per value of one field, e.g. cluster.nodes=4,8,16,32: a table.")
@click.option("--verbose", "-v", is_flag=True, help="Tracebacks and the full report on errors.")
def main(spec_path: str | None, as_json: bool, schema: bool, top: int | None,
         sets: tuple[str, ...], sweep_arg: str | None, verbose: bool) -> None:
    """Plan LLM pre-training on a cluster: will it fit, and with which strategy.  With
    training.budget in the spec: which model size to train (budget mode)."""
    if schema:
        from .spec import json_schema
        click.echo(json.dumps(json_schema(), indent=2))
        return
    if spec_path is None:
        raise click.UsageError("missing SPEC (a YAML file; see docs/spec.md) or --schema")
    try:
        spec = _load(spec_path, sets, top)
        if sweep_arg is not None:
            ok = _sweep(spec, sweep_arg, as_json)
        elif spec.training.budget is not None:
            ok = _budget(spec, spec_path, as_json)
        else:
            ok = _plan(spec, spec_path, as_json, verbose)
    except PlannerError as exc:
        _fail(str(exc), verbose)
        return
    except Exception as exc:  # an internal error still gets one line unless --verbose
        _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --verbose)", verbose)
        return
    if not ok:
        sys.exit(1)


def _load(spec_path: str, sets: tuple[str, ...], top: int | None):
    from .spec import load_spec
    from .whatif import edit, parse_assignment
    spec = load_spec(spec_path)
    overrides = dict(parse_assignment(text) for text in sets)
    if top is not None:
        overrides["search.top"] = top
    return edit(spec, overrides) if overrides else spec


def _plan(spec, spec_path: str, as_json: bool, verbose: bool) -> bool:
    from .advice import nearest_fix
    from .report import to_json, to_text
    from .search import search
    result = search(spec)
    fixes = nearest_fix(spec) if result.best is None else []
    if as_json:
        click.echo(json.dumps(to_json(result, fixes, spec_path), indent=2))
    elif result.best is not None or verbose:
        click.echo(to_text(result, fixes, spec_path))
    if result.best is None:
        click.echo(f"error: {_infeasible_line(result, fixes)}", err=True)
    return result.best is not None


def _budget(spec, spec_path: str, as_json: bool) -> bool:
    from .budget import plan_budget
    from .report import budget_json, budget_text, to_text
    result = plan_budget(spec)
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


def _sweep(spec, sweep_arg: str, as_json: bool) -> bool:
    from .report import sweep_json, sweep_text
    from .whatif import parse_assignment, parse_value, sweep
    path, _ = parse_assignment(sweep_arg)
    values = [parse_value(v.strip()) for v in sweep_arg.partition("=")[2].split(",")]
    rows = sweep(spec, path, values)
    if as_json:
        click.echo(json.dumps(sweep_json(rows, path), indent=2))
    else:
        click.echo(sweep_text(rows, path))
    return any(r.best is not None for r in rows)


if __name__ == "__main__":
    main()
