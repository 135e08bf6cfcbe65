"""`plan SPEC --compare AXIS=V1,V2` (planner/capacity/compare.py, planner/compare_report.py): each
column is the estimate of the best plan with that one field changed, the same as estimating that
plan on its own; the terms add up; a value the rules reject keeps the rule's reason; a bad axis or
value is one error line naming it."""
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from planner.capacity.compare import compare, parse_compare
from planner.capacity.scaling import training_tokens
from planner.compare_report import compare_json, compare_text
from planner.estimate.predict import estimate
from planner.model.memory_terms import TERMS
from planner.report import estimate_json
from planner.search.engine import search
from planner.search.rules import check
from planner.spec.loading import load_spec
from planner.spec.units import GiB, Precision, Recompute, ZeroStage
from tests.conftest import invoke

ROOT = Path(__file__).resolve().parents[2]
SPEC_7B = ROOT / "specs" / "7b_on_64xA100.yaml"
SPEC_TINY = ROOT / "specs" / "tiny_cpu.yaml"




def expected_plan(spec, best, axis, value):
    """The changed plan, worked out here: the field set, dp filling the world size again when tp
    or pp changes, grad_accum the global batch over dp x micro-batch."""
    plan = replace(best, **{axis: value})
    if axis in ("tp", "pp"):
        plan = replace(plan, dp=spec.cluster.world_size // (plan.tp * plan.pp))
    return replace(plan, grad_accum=spec.global_batch_sequences // (plan.dp * plan.micro_batch))


CASES = [
    (SPEC_7B, "zero=2,3", "zero", [ZeroStage.GRADIENTS, ZeroStage.PARAMETERS]),
    (SPEC_7B, "tp=1,2", "tp", [1, 2]),
    (SPEC_7B, "precision=bf16,fp32", "precision", [Precision.BF16, Precision.FP32]),
    (SPEC_7B, "recompute=none,full", "recompute", [Recompute.NONE, Recompute.FULL]),
    (SPEC_7B, "micro_batch=1,2", "micro_batch", [1, 2]),
    (SPEC_TINY, "precision=fp32,bf16", "precision", [Precision.FP32, Precision.BF16]),
    (SPEC_TINY, "zero=0,3", "zero", [ZeroStage.NONE, ZeroStage.PARAMETERS]),
]


@pytest.mark.parametrize("spec_path, text, axis, values", CASES,
                         ids=[f"{p.stem}-{t}" for p, t, _, _ in CASES])
def test_each_column_is_the_estimate_of_the_changed_plan(spec_path, text, axis, values):
    spec = load_spec(spec_path)
    assert parse_compare(text) == (axis, values)
    c = compare(spec, axis, values)
    best = search(spec).best.plan
    assert c.best.plan == best
    assert [v.value for v in c.variants] == values
    for v in c.variants:
        plan = expected_plan(spec, best, axis, v.value)
        assert v.plan == plan
        assert v.is_best == (plan == best)
        assert v.rejected is None and check(spec, plan) is None
        alone = estimate(spec, plan)
        assert v.estimate.memory == alone.memory
        assert v.estimate.time.step == alone.time.step
        assert v.estimate.required_bytes == alone.required_bytes
        assert v.estimate.tokens_per_s == alone.tokens_per_s


def test_the_terms_add_up_and_the_difference_is_second_minus_first():
    spec = load_spec(SPEC_7B)
    c = compare(spec, *parse_compare("zero=2,3"))
    report = compare_json(c, str(SPEC_7B))
    a, b = (v["estimate"] for v in report["values"])
    for e in (a, b):
        assert sum(e["memory_gib"][t] for t in TERMS) == pytest.approx(e["memory_gib"]["total"],
                                                                      abs=1e-3)
        steps = e["step_time_breakdown_s"]
        assert sum(x for k, x in steps.items() if k != "total") == pytest.approx(steps["total"])
        assert e["required_gib"] == pytest.approx(e["reserved_gib"] + e["cuda_context_gib"],
                                                  abs=2e-3)
    d = report["difference"]
    for t in TERMS:
        assert d["memory_gib"][t] == pytest.approx(b["memory_gib"][t] - a["memory_gib"][t],
                                                   abs=1e-3)
    assert d["step_time_breakdown_s"]["total"] == pytest.approx(b["step_time_s"] - a["step_time_s"])
    assert d["mfu"] == pytest.approx(b["mfu"] - a["mfu"])
    # ZeRO-3 partitions the bf16 weights over dp = 64: what this comparison is for
    assert d["memory_gib"]["parameters"] < -10


def test_text_table_shows_the_estimates_side_by_side():
    spec = load_spec(SPEC_7B)
    c = compare(spec, *parse_compare("zero=2,3"))
    text = compare_text(c, "x.yaml")
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line.strip())
                                              for line in text.splitlines()) if len(cells) == 4}
    a, b = (v.estimate for v in c.variants)
    assert rows["= required"] == [f"{a.required_bytes / GiB:.3f}", f"{b.required_bytes / GiB:.3f}",
                                f"{(b.required_bytes - a.required_bytes) / GiB:+.3f}"]
    assert rows["= peak allocated"] == [f"{a.peak_bytes / GiB:.3f}", f"{b.peak_bytes / GiB:.3f}",
                                      f"{(b.peak_bytes - a.peak_bytes) / GiB:+.3f}"]
    assert rows["= step"] == [f"{a.step_time_s:.4g}", f"{b.step_time_s:.4g}",
                            f"{b.step_time_s - a.step_time_s:+.4g}"]
    assert "zero=2  dp64·tp1·pp1 z2" in text and "(the best plan" in text


def test_a_value_the_rules_reject_keeps_the_rules_reason():
    spec = load_spec(SPEC_7B)
    c = compare(spec, *parse_compare("pp=1,2"))
    kept, piped = c.variants
    assert kept.estimate is not None and piped.estimate is None
    assert piped.rejected == check(spec, piped.plan)
    assert "ZeRO 0 or 1" in piped.rejected.reason  # DeepSpeed refuses pipeline + ZeRO-2
    result = invoke(SPEC_7B, "--compare", "tp=1,3")
    assert result.exit_code == 0, result.stderr
    assert "rejected (world size): dp(64) * tp(3) * pp(1) != world size (64)" in result.stdout
    assert c.difference is None  # nothing to subtract from a rejected plan


def test_cli_json():
    result = invoke(SPEC_7B, "--compare", "recompute=none,full", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["mode"] == "compare" and report["axis"] == "recompute"
    assert [v["value"] for v in report["values"]] == ["none", "full"]
    spec = load_spec(SPEC_7B)
    best = search(spec).best.plan
    full = estimate(spec, expected_plan(spec, best, "recompute", Recompute.FULL))
    assert report["values"][1]["estimate"] == estimate_json(full, training_tokens(spec))
    assert report["difference"]["step_time_breakdown_s"]["compute"] > 0  # recompute costs time


@pytest.mark.parametrize("arg, fragment", [
    ("foo=1,2", "compare 'foo': not a plan field one can change; one of zero, tp"),
    ("zero=5", "compare zero=5: '5' is not a ZeRO stage (one of 0, 1, 2, 3)"),
    ("precision=int8", "'int8' is not one of fp32, fp16, bf16"),
    ("tp=0", "compare tp=0: '0' is not a positive integer"),
    ("dp=2", "compare dp: dp follows from the world size"),
    ("zero=", "an empty value"),
    ("zero=2,2", "a value is given twice"),
    ("zero", "expected AXIS=V1,V2"),
], ids=["axis", "zero", "precision", "tp", "derived", "empty", "twice", "no-values"])
def test_a_bad_axis_or_value_is_one_error_line(arg, fragment):
    result = invoke(SPEC_7B, "--compare", arg)
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


def test_sweep_and_compare_together_is_a_usage_error():
    result = invoke(SPEC_7B, "--sweep", "cluster.nodes=4,8", "--compare", "zero=2,3")
    assert result.exit_code == 2
    assert "--sweep and --compare" in result.stderr


def test_a_budget_spec_cannot_be_compared():
    result = invoke(ROOT / "specs" / "budget_64xA100_30days.yaml", "--compare", "zero=2,3")
    assert result.exit_code == 1
    assert "budget or lab mode" in result.stderr


def test_context_parallel_degree_and_kind_are_compared_with_dp_derived():
    from planner.spec.loading import spec_from_dict
    from planner.spec.units import ContextParallel
    spec = spec_from_dict({"model": {"preset": "llama3-8b", "seq_len": 131072},
                           "cluster": {"gpu": "H100-SXM", "nodes": 1, "gpus_per_node": 8},
                           "training": {"tokens": 1e10, "global_batch_sequences": 16}})
    axis, values = parse_compare("cp=1,4")
    result = compare(spec, axis, values)
    plans = [v.plan for v in result.variants]
    assert [(p.cp, p.dp, p.grad_accum) for p in plans] == [(1, 8, 2), (4, 2, 8)]
    kinds = compare(spec, *parse_compare("cp_kind=ulysses,ring"))
    ulysses, ring = (v.estimate.time.step for v in kinds.variants)
    assert [v.plan.cp_kind for v in kinds.variants] == [ContextParallel.ULYSSES,
                                                        ContextParallel.RING]
    assert ulysses.cp_comm > 0 and ring.cp_comm == 0  # NVLink hides the ring at 16k a rank
