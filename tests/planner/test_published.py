"""The step-time model against published multi-GPU runs (shared/calibration/
published_runs_sample.yaml): tokens/s per GPU within 10 % median and 25 % worst (issue 3), and
every run that really ran must fit in memory by the planner's account."""
import statistics

import pytest

from planner.estimate.predict import estimate
from planner.estimate.timing import throughput
from planner.validate.published import error, load_published

from ..conftest import published_path

RUNS = load_published(published_path())


def test_sample_has_runs():
    assert len(RUNS) >= 20


@pytest.mark.parametrize("run", RUNS, ids=[r.id for r in RUNS])
def test_throughput_within_25_percent(run):
    t = throughput(run.spec, run.plan)
    assert abs(error(run, t.tokens_per_s / run.plan.world_size)) <= 0.25


def test_median_error_within_10_percent():
    errors = [abs(error(r, throughput(r.spec, r.plan).tokens_per_s / r.plan.world_size))
              for r in RUNS]
    assert statistics.median(errors) <= 0.10


# runs whose memory relied on something the planner does not model
ACTIVATION_OFFLOAD = {"deepspeed-azure-zero3-1t-1024gpu-s1024"}


@pytest.mark.parametrize("run", [r for r in RUNS if r.id not in ACTIVATION_OFFLOAD],
                         ids=[r.id for r in RUNS if r.id not in ACTIVATION_OFFLOAD])
def test_runs_that_ran_fit_in_memory(run):
    e = estimate(run.spec, run.plan, with_time=False)
    assert e.peak_bytes <= run.spec.cluster.gpu.memory_bytes, e.memory.as_gib()
