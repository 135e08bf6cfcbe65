"""The report carries the time model's answer: text tables and the JSON keys docs describe."""
import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from planner.backends.deepspeed import DEEPSPEED
from planner.plan.rule import Rule
from planner.report import to_json, to_text
from planner.search.engine import TIGHT_SLACK, search
from planner.spec.loading import load_spec
from pretrain.cli import main

from ..conftest import ROOT

SPEC = str(ROOT / "specs" / "7b_on_64xA100.yaml")


@pytest.fixture(scope="module")
def report():
    result = CliRunner().invoke(main, [SPEC, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_has_time_fields(report):
    best = report["best"]
    for key in ("step_time_s", "tokens_per_s", "mfu", "hfu", "days_to_train",
                "step_time_breakdown_s", "placement"):
        assert key in best
    parts = best["step_time_breakdown_s"]
    assert parts["total"] == pytest.approx(best["step_time_s"])
    assert sum(v for k, v in parts.items() if k != "total") == pytest.approx(parts["total"])
    tokens = report["training"]["global_batch_sequences"] * 4096
    assert best["tokens_per_s"] == pytest.approx(tokens / best["step_time_s"])
    assert 0 < best["mfu"] <= best["hfu"] <= 1


def test_alternatives_are_no_faster_than_the_best(report):
    """By step time, a tight plan counted TIGHT_SLACK slower than it is."""
    plans = [report["best"]] + report["alternatives"]
    keys = [round(p["step_time_s"] * (1 + TIGHT_SLACK * (p["verdict"] == "tight")), 9)
            for p in plans]
    assert keys == sorted(keys)
    assert all(p["verdict"] in ("fits", "tight") for p in plans)
    for p in plans:
        assert (p["verdict"] == "fits") == (p["required_gib"] <= p["usable_gib"])
        assert p["margin_gib"] == pytest.approx(p["usable_gib"] - p["required_gib"], abs=2e-3)


def test_days_follow_tokens(report):
    best = report["best"]
    days = report["training"]["tokens"] / best["tokens_per_s"] / 86400
    assert best["days_to_train"] == pytest.approx(days)


def test_text_report_shows_time_breakdown():
    out = CliRunner().invoke(main, [SPEC]).stdout
    for needle in ("s/step", "tokens/s", "MFU", "step time", "data-parallel traffic (exposed)",
                   "pipeline bubble", "top plans (seconds per step)"):
        assert needle in out


# Llama-2-70B on 512 H100s pinned to sequence parallelism, and a backend whose executor could not
# run it (this project's once could not): every ranked plan is then one --execute would refuse
PINNED = [str(ROOT / "specs" / "70b_on_512xH100.yaml"), "--set", "search.sequence_parallel=true"]
NO_SP = Rule("toy: no sequence parallel", lambda s, p: p.sequence_parallel & (p.tp > 1),
             lambda s, p: "this executor has no sequence parallelism")
TOY = replace(DEEPSPEED, name="toy", executor_rules=(NO_SP,))


def test_report_marks_plans_the_executor_cannot_run():
    spec = load_spec(PINNED[0])
    spec = spec.model_copy(update={"search": spec.search.model_copy(
        update={"sequence_parallel": (True,)})})
    result = search(spec, backend=TOY)
    out = to_text(result, [], PINNED[0])
    assert "+sp" in out.split("best plan", 1)[1].splitlines()[0]
    assert "plan --execute cannot run this plan with toy (this executor has no sequence" in out
    assert "no ranked plan is one it can run" in out
    marked = [line for line in out.splitlines() if "+sp" in line and " * " in line]
    assert marked and "* plan --execute cannot run the plans marked * with toy" in out
    report = to_json(result, [], PINNED[0])
    assert report["best"]["executable"] is False and report["execute_pick_rank"] is None
    assert report["best"]["not_executable_reason"] == "this executor has no sequence parallelism"


def test_execute_runs_sequence_parallel_plans_now():
    result = CliRunner().invoke(main, PINNED + ["--execute", "--dry-run"])
    assert result.exit_code == 0, result.output
    report = json.loads(CliRunner().invoke(main, PINNED + ["--json"]).stdout)
    assert report["best"]["executable"] and report["execute_pick_rank"] == 0
    assert "+sp" in report["best"]["label"]


@pytest.mark.parametrize("backend", [DEEPSPEED, TOY], ids=["deepspeed", "toy"])
def test_report_names_what_execute_would_run_instead(backend):
    """The plain report's execute_pick_rank points at the plan the executable search ranks
    first, and every plan ranked above it is marked (with the toy backend the 1T spec's first
    78 plans use sequence parallelism)."""
    spec = load_spec(ROOT / "bench" / "specs" / "1t_on_4096xH100.yaml")
    plain = search(spec, backend=backend)
    executable = search(spec, backend=backend, executable=True)
    rank = plain.first_executable
    assert rank is not None and executable.best is not None
    assert plain.feasible[rank].plan == executable.best.plan
    assert all(e.not_executable for e in plain.feasible[:rank])
    assert not executable.best.not_executable
    assert (rank > 0) == (backend is TOY)
