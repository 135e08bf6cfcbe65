"""`plan SPEC`: the feasibility report.  The only place that prints and picks exit codes:
0 a plan was found, 1 bad input or no feasible plan, 2 usage errors (click)."""
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
@click.option("--verbose", "-v", is_flag=True, help="Tracebacks and the full report on errors.")
def main(spec_path: str | None, as_json: bool, schema: bool, top: int | None,
         verbose: bool) -> None:
    """Plan LLM pre-training on a cluster: will it fit, and with which strategy."""
    if schema:
        from .spec import json_schema
        click.echo(json.dumps(json_schema(), indent=2))
        return
    if spec_path is None:
        raise click.UsageError("missing SPEC (a YAML file; see docs/spec.md) or --schema")
    from .advice import nearest_fix
    from .report import to_json, to_text
    from .search import search
    from .spec import load_spec
    try:
        spec = load_spec(spec_path)
        if top is not None:
            spec = spec.model_copy(update={"search": spec.search.model_copy(update={"top": top})})
        result = search(spec)
        fixes = nearest_fix(spec) if result.best is None else []
    except PlannerError as exc:
        _fail(str(exc), verbose)
        return
    except Exception as exc:  # an internal error still gets one line unless --verbose
        _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --verbose)", verbose)
        return
    if as_json:
        click.echo(json.dumps(to_json(result, fixes, spec_path), indent=2))
    elif result.best is not None or verbose:
        click.echo(to_text(result, fixes, spec_path))
    if result.best is None:
        click.echo(f"error: {_infeasible_line(result, fixes)}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
