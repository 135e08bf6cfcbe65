"""The report carries the time model's answer: text tables and the JSON keys docs describe."""
import json

import pytest
from click.testing import CliRunner

from planner.search.engine import search
from planner.spec.spec import load_spec
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
    steps = [report["best"]["step_time_s"]] + [a["step_time_s"] for a in report["alternatives"]]
    assert steps == sorted(steps)


def test_days_follow_tokens(report):
    best = report["best"]
    days = report["training"]["tokens"] / best["tokens_per_s"] / 86400
    assert best["days_to_train"] == pytest.approx(days)


def test_text_report_shows_time_breakdown():
    out = CliRunner().invoke(main, [SPEC]).stdout
    for needle in ("s/step", "tokens/s", "MFU", "step time", "data-parallel traffic (exposed)",
                   "pipeline bubble", "top plans (seconds per step)"):
        assert needle in out


# Llama-2-70B on 512 H100s pinned to sequence parallelism: every ranked plan has tp > 1 with
# it, which the executor's tensor parallelism does not implement yet
PINNED = [str(ROOT / "specs" / "70b_on_512xH100.yaml"), "--set", "search.sequence_parallel=true"]


def test_report_marks_plans_the_executor_cannot_run():
    out = CliRunner().invoke(main, PINNED).stdout
    assert "+sp" in out.split("best plan", 1)[1].splitlines()[0]
    assert "plan --execute cannot run this plan with deepspeed (the executor's tensor" in out
    assert "no ranked plan is one it can run" in out
    marked = [line for line in out.splitlines() if "+sp" in line and " * " in line]
    assert marked and "* plan --execute cannot run the plans marked * with deepspeed" in out
    report = json.loads(CliRunner().invoke(main, PINNED + ["--json"]).stdout)
    assert report["best"]["executable"] is False and report["execute_pick_rank"] is None
    assert "sequence parallelism" in report["best"]["not_executable_reason"]


def test_execute_ranks_only_runnable_plans_and_names_the_fix():
    result = CliRunner().invoke(main, PINNED + ["--execute", "--dry-run"])
    assert result.exit_code == 1
    assert "executor: sequence parallel" in result.stderr
    assert "nearest fix: fits with sequence_parallel=False" in result.stderr


@pytest.mark.parametrize("path", ["specs/70b_on_512xH100.yaml", "bench/specs/1t_on_4096xH100.yaml"])
def test_report_names_what_execute_would_run_instead(path):
    """The plain report's execute_pick_rank points at the plan the executable search ranks
    first, and every plan ranked above it is marked (the 1T spec's first 78 use sequence
    parallelism, which AutoTP lacks)."""
    spec = load_spec(ROOT / path)
    plain, executable = search(spec), search(spec, executable=True)
    rank = plain.first_executable
    assert rank is not None and executable.best is not None
    assert plain.feasible[rank].plan == executable.best.plan
    assert all(e.not_executable for e in plain.feasible[:rank])
    assert not executable.best.not_executable
