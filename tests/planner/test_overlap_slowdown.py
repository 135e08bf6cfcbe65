"""cluster.gpu.efficiency.overlap_slowdown: while an overlapped collective runs, NCCL's kernels
hold SMs the compute would use, so the compute loses that share of its rate for as long as the
overlap lasts (docs/time-model.md)."""
import pytest

from planner.estimate.timing import step_time
from planner.model.shape import stages_to_check
from planner.plan.strategy import Plan
from planner.spec.loading import spec_from_dict
from planner.spec.profile import with_constants
from planner.spec.units import Offload, Precision, Recompute, ZeroStage


def _spec(gpu="A100-80GB-SXM"):
    return spec_from_dict({"model": {"preset": "llama2-7b", "seq_len": 2048},
                           "cluster": {"gpu": gpu, "nodes": 16, "gpus_per_node": 8},
                           "training": {"tokens": 1e12, "global_batch_sequences": 256}})


def _plan(zero):
    return Plan(dp=128, tp=1, pp=1, zero=zero, precision=Precision.BF16, micro_batch=2,
                grad_accum=1, recompute=Recompute.NONE, offload=Offload.NONE)


def test_the_catalog_sets_nccls_sm_share_on_nvswitch_gpus_only():
    eff = {g: _spec(g).cluster.gpu.efficiency.overlap_slowdown
           for g in ("A100-80GB-SXM", "H100-SXM", "H200", "A100-80GB-PCIe", "MI300X")}
    assert eff["A100-80GB-SXM"] == pytest.approx(32 / 108, abs=0.01)
    assert eff["H100-SXM"] == eff["H200"] == pytest.approx(32 / 132, abs=0.01)
    assert eff["A100-80GB-PCIe"] == eff["MI300X"] == 0.0


def test_overlapped_traffic_costs_its_sm_share_of_the_compute_it_overlaps():
    """ZeRO-3 overlaps its gathers and reductions: the exposed time grows by exactly
    overlap_slowdown x min(traffic, compute) per micro-batch."""
    from planner.backends.registry import backend_for
    spec, plan = _spec(), _plan(ZeroStage.PARAMETERS)
    off = with_constants(spec, {"overlap_slowdown": 0.0})
    on = with_constants(spec, {"overlap_slowdown": 0.3})
    a, b = step_time(off, plan), step_time(on, plan)
    assert a.compute == pytest.approx(b.compute)
    stage = list(stages_to_check(spec.model, 1, 1))[0]
    order = tuple(b.placement.split(","))
    _, traffic = backend_for(spec).dp_traffic_seconds(spec, plan, stage, order)
    compute = b.compute / plan.grad_accum
    assert traffic > 0
    assert b.dp_comm - a.dp_comm == pytest.approx(0.3 * min(traffic, compute) * plan.grad_accum,
                                                  rel=1e-6)


def test_traffic_that_does_not_overlap_is_not_slowed():
    """DeepSpeed ZeRO-2 reduces after backward by default (overlap_comm off): nothing overlaps,
    so the slowdown changes nothing."""
    spec, plan = _spec(), _plan(ZeroStage.GRADIENTS)
    a = step_time(with_constants(spec, {"overlap_slowdown": 0.0}), plan)
    b = step_time(with_constants(spec, {"overlap_slowdown": 0.5}), plan)
    assert a.total == pytest.approx(b.total)
