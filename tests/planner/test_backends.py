"""The backend seam: the search applies a backend's rules and the estimators price its mechanisms,
so a backend that differs only in data changes the answer exactly where it differs."""
from dataclasses import replace

import pytest

from planner.backends.deepspeed import DEEPSPEED
from planner.backends.registry import BACKENDS, backend_named
from planner.errors import PlannerError
from planner.estimate.memory import peak_memory
from planner.estimate.predict import estimate
from planner.plan.rule import Rule
from planner.search.engine import search
from planner.spec.loading import load_spec
from planner.spec.units import GiB, ZeroStage

from ..conftest import ROOT

SPEC = load_spec(ROOT / "specs" / "7b_on_64xA100.yaml")


def test_backends_by_name():
    assert backend_named("DeepSpeed") is DEEPSPEED \
        and set(BACKENDS) == {"deepspeed", "megatron", "fsdp"}
    with pytest.raises(PlannerError,
                       match="unknown backend 'fsdp9'; known backends: deepspeed, megatron, fsdp"):
        backend_named("fsdp9")


def test_a_backend_rule_is_applied_by_the_search_and_counted():
    no_z3 = Rule("toy: no ZeRO-3", lambda s, p: p.zero == ZeroStage.PARAMETERS,
                 lambda s, p: f"ZeRO-{int(p.zero)} is not offered")
    toy = replace(DEEPSPEED, name="toy", rules=DEEPSPEED.rules + (no_z3,))
    base, result = search(SPEC), search(SPEC, backend=toy)
    assert all(e.plan.zero != ZeroStage.PARAMETERS for e in result.feasible)
    assert result.by_reason["toy: no ZeRO-3"] > 0
    assert len(result.feasible) == sum(e.plan.zero != ZeroStage.PARAMETERS for e in base.feasible)


def test_an_executor_rule_marks_without_executable_and_filters_with_it():
    no_pp = Rule("toy: no pipeline", lambda s, p: p.pp > 1, lambda s, p: f"pp ({p.pp}) > 1")
    toy = replace(DEEPSPEED, executor_rules=(no_pp,))
    plain = search(SPEC, backend=toy)
    marked = [e for e in plain.feasible if e.not_executable]
    assert marked and all(e.plan.pp > 1 and e.not_executable == f"pp ({e.plan.pp}) > 1"
                          for e in marked)
    executable = search(SPEC, backend=toy, executable=True)
    assert all(e.plan.pp == 1 for e in executable.feasible)
    assert executable.best.plan == plain.best_executable.plan


def test_the_estimators_price_the_backends_own_buffers():
    """A backend that allocates one more GiB at every moment of the step: every plan's peak
    grows by exactly that, in the scalar estimate and in the search's batch path."""
    def moments(spec, plan, stage):
        return [(replace(m, deepspeed_buffers=m.deepspeed_buffers + GiB), happens)
                for m, happens in DEEPSPEED.stage_moments(spec, plan, stage)]

    heavier = replace(DEEPSPEED, name="heavier", stage_moments=moments)
    plan = search(SPEC).best.plan
    assert peak_memory(SPEC, plan, heavier).total == pytest.approx(
        peak_memory(SPEC, plan).total + GiB)
    assert estimate(SPEC, plan, backend=heavier).free_bytes < estimate(SPEC, plan).free_bytes
    fewer = search(SPEC, backend=heavier)
    assert len(fewer.feasible) <= len(search(SPEC).feasible)
    assert all(e.memory.deepspeed_buffers >= GiB for e in fewer.feasible[:5])
