"""DeepSpeed's rules: each rejects what it must, with its operands in the message, and lets the
rest through."""
import pytest

from planner.plan.strategy import Plan
from planner.search.rules import check
from planner.spec.loading import spec_from_dict
from planner.spec.units import Offload, Precision, Recompute, ZeroStage


def spec(gpu="A100-80GB-SXM", nodes=2, per_node=8, model="llama2-70b", batch=64):
    return spec_from_dict({"model": model, "cluster": {"gpu": gpu, "nodes": nodes,
                                                       "gpus_per_node": per_node},
                           "training": {"tokens": 1e9, "global_batch_sequences": batch}})


def plan(dp=2, tp=8, pp=1, zero=1, precision="bf16", mb=1, ga=32, offload="none", sp=False):
    return Plan(dp, tp, pp, ZeroStage(zero), Precision(precision), mb, ga, Recompute.NONE,
                Offload(offload), sp)


@pytest.mark.parametrize("p,rule,words", [
    (plan(dp=3), "world size", ["dp(3)", "tp(8)", "pp(1)", "world size (16)"]),
    (plan(dp=16, tp=1, pp=1, zero=2), None, []),
    (plan(dp=4, tp=4, pp=1), None, []),
    (plan(dp=1, tp=16), "tp vs heads", []),  # 64 heads / 16 fine, 8 kv heads / 16 not
    (plan(dp=2, tp=8, pp=1, zero=1), None, []),
    (plan(dp=1, tp=8, pp=2, zero=2), "pipeline needs ZeRO 0/1", ["pp=2", "not 2"]),
    (plan(dp=1, tp=8, pp=2, zero=1, offload="optimizer_cpu"), "pipeline with offload", []),
    (plan(dp=16, tp=1, zero=0, offload="optimizer_cpu"), "offload vs ZeRO stage", ["not 0"]),
    (plan(dp=16, tp=1, zero=2, offload="params_cpu"), "offload vs ZeRO stage", ["ZeRO-3"]),
    (plan(dp=16, tp=1, zero=2, offload="optimizer_nvme"), "offload vs ZeRO stage", ["ZeRO-3"]),
    (plan(dp=16, tp=1, zero=3, offload="params_nvme"), None, []),
    (plan(dp=16, tp=1, zero=2, mb=3, ga=1), "batch not divisible", ["64 sequences", "dp (16)"]),
    (plan(dp=16, tp=1, zero=2, sp=True), "sequence parallel without tp", []),
], ids=["world-size", "dp16-ok", "tp4-ok", "tp16-kv-heads", "tp8-ok", "pp-zero2",
        "pp-offload", "offload-zero0", "param-offload-zero2", "nvme-zero2", "nvme-zero3-ok",
        "batch", "sp-no-tp"])
def test_rules(p, rule, words):
    rejected = check(spec(), p)
    if rule is None:
        assert rejected is None
    else:
        assert rejected is not None and rejected.rule == rule
        for w in words:
            assert w in rejected.reason


def test_tp_must_stay_inside_a_node():
    rejected = check(spec(nodes=4, per_node=4), plan(dp=2, tp=8))
    assert rejected.rule == "tp beyond node" and "node of 4 GPUs" in rejected.reason


def test_pp_cannot_exceed_layers():
    rejected = check(spec(model="tiny-gpt", nodes=1), plan(dp=1, tp=1, pp=8, zero=0, ga=64))
    assert rejected.rule == "pp vs layers" and "n_layers (4)" in rejected.reason


def test_bf16_needs_hardware_support():
    rejected = check(spec(gpu="V100"), plan(dp=16, tp=1, zero=2))
    assert rejected.rule == "precision unsupported" and "bf16" in rejected.reason
    assert check(spec(gpu="V100"), plan(dp=16, tp=1, zero=2, precision="fp16")) is None


def test_offload_needs_a_cpu_optimizer():
    sgd = spec_from_dict({"model": "llama2-70b", "cluster": {"gpu": "A100", "nodes": 2},
                          "training": {"tokens": 1e9, "global_batch_sequences": 64,
                                       "optimizer": "sgd"}})
    rejected = check(sgd, plan(dp=16, tp=1, zero=2, offload="optimizer_cpu"))
    assert rejected.rule == "offload vs optimizer" and "not sgd" in rejected.reason
    assert check(sgd, plan(dp=16, tp=1, zero=2)) is None
