"""The search evaluates candidates as a PlanBatch (arrays); every number must equal evaluating
the same plan on its own (one implementation of each term, two calling conventions)."""
import numpy as np
import pytest

from planner.estimate.memory import host_offload_bytes, peak_bytes, peak_memory
from planner.estimate.timing import throughput
from planner.plan.strategy import PlanBatch
from planner.search.engine import TIGHT_SLACK, candidate_batch, candidates, search
from planner.search.rules import RULES, check, first_failure
from planner.spec.loading import load_spec, spec_from_dict

from ..conftest import ROOT


def open_search(spec):
    return spec.model_copy(update={"search": spec.search.model_copy(update={
        "offload": "auto", "precision": "auto", "sequence_parallel": "auto"})})


SPECS = {
    "7b-64xA100": open_search(load_spec(ROOT / "specs/7b_on_64xA100.yaml")),
    "1.1b-1xH200": open_search(load_spec(ROOT / "specs/1.1b_on_1xH200.yaml")),
    "gpt2-eager-16xV100": spec_from_dict({
        "model": {"preset": "gpt2-350m", "attention": "eager"},
        "cluster": {"gpu": "V100", "nodes": 2, "gpus_per_node": 8},
        "training": {"tokens": 1e10, "global_batch_sequences": 256},
        "search": {"offload": "auto", "sequence_parallel": "auto", "precision": "auto"}}),
}


@pytest.mark.parametrize("name", SPECS)
def test_batch_equals_one_by_one(name):
    spec = SPECS[name]
    plans = list(candidates(spec))
    batch = PlanBatch.of(plans)
    failed = first_failure(spec, batch)
    for plan, code in zip(plans, failed):
        rejected = check(spec, plan)
        assert (rejected.rule if rejected else None) == (RULES[code].key if code >= 0 else None)
    ok = [p for p in plans if check(spec, p) is None]
    sub = PlanBatch.of(ok)
    peaks = peak_bytes(spec, sub)
    hosts = host_offload_bytes(spec, sub)
    times = throughput(spec, sub)
    for i, plan in enumerate(ok):
        assert peaks[i] == pytest.approx(float(peak_memory(spec, plan).total), rel=1e-12)
        assert hosts[i] == pytest.approx(float(host_offload_bytes(spec, plan)), rel=1e-12)
        one = throughput(spec, plan)
        assert times.step.total[i] == pytest.approx(one.step.total, rel=1e-12)
        assert times.step.placement[i] == one.step.placement


def test_candidate_batch_round_trips_plans():
    spec = SPECS["7b-64xA100"]
    batch = candidate_batch(spec)
    again = PlanBatch.of([batch.plan(i) for i in range(len(batch))])
    for field in ("dp", "tp", "pp", "zero", "precision", "micro_batch", "grad_accum",
                  "recompute", "offload", "sequence_parallel"):
        assert np.array_equal(getattr(batch, field), getattr(again, field))


def test_search_ranks_by_step_time_and_counts_everything():
    spec = SPECS["7b-64xA100"]
    result = search(spec)
    # ranked by step time, a tight plan counted TIGHT_SLACK slower (a comfortable one wins ties
    # within a few per cent)
    keys = [round(e.step_time_s * (1 + TIGHT_SLACK * (e.verdict == "tight")), 9)
            for e in result.feasible[:50]]
    assert keys == sorted(keys)
    assert result.evaluated == len(result.feasible) + len(result.rejected)
    assert sum(result.by_reason.values()) == len(result.rejected)
    assert set(result.examples) == set(result.by_reason)
