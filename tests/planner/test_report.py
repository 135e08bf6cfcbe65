"""The report carries the time model's answer: text tables and the JSON keys docs describe."""
import json

import pytest
from click.testing import CliRunner

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
