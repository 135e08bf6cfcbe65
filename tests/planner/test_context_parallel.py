"""Context parallelism in the planner (issue 14): the cp degree in the search, the local
sequence, ZeRO over dp x cp, Ulysses' all-to-alls and the ring's exchange on the topology, and
the rules, each checked by hand against the mechanism."""
from __future__ import annotations

from dataclasses import replace

import pytest

from planner.backends.deepspeed import DEEPSPEED
from planner.backends.deepspeed import memory as dsmem
from planner.estimate.timing import (attention_seconds, cp_seconds_per_micro_batch,
                                     step_time_for_order)
from planner.model import activations as act
from planner.model.local import local_dims
from planner.model.shape import stages_to_check
from planner.network import collectives as coll
from planner.network.topology import group_link
from planner.plan.degrees import ORDERS
from planner.plan.strategy import Plan
from planner.search.engine import candidate_batch, search
from planner.search.rules import check
from planner.spec.loading import spec_from_dict
from planner.spec.units import (FP32_BYTES, ContextParallel, Offload, Precision, Recompute,
                                ZeroStage)

U, R = ContextParallel.ULYSSES, ContextParallel.RING


def spec(seq=32768, nodes=1, per_node=8, model="llama3-8b", **search):
    return spec_from_dict({
        "model": {"preset": model, "seq_len": seq},
        "cluster": {"gpu": "H100-SXM", "nodes": nodes, "gpus_per_node": per_node},
        "training": {"tokens": 1e10, "global_batch_sequences": 16},
        "search": search})


def plan(dp=1, tp=1, cp=8, kind=U, zero=1, mb=1, rc=Recompute.FULL, **kw):
    return Plan(dp=dp, tp=tp, pp=1, zero=ZeroStage(zero), precision=Precision.BF16,
                micro_batch=mb, grad_accum=16 // (dp * mb), recompute=rc, cp=cp, cp_kind=kind,
                **kw)


def test_auto_cp_keeps_4096_tokens_per_rank_and_crosses_both_kinds():
    batch = candidate_batch(spec(seq=16384))
    cps = set(batch.cp.tolist())
    assert cps == {1, 2, 4}  # 16,384 / 8 would leave 2,048 tokens
    kinds = {(int(c), int(k)) for c, k in zip(batch.cp, batch.cp_kind)}
    assert kinds == {(1, 0), (2, 0), (2, 1), (4, 0), (4, 1)}  # no ring twin of cp 1
    assert all(int(w) == 8 for w in batch.world_size)
    short = candidate_batch(spec(seq=4096))
    assert set(short.cp.tolist()) == {1}


def test_listed_cp_and_kind_are_searched_as_given():
    batch = candidate_batch(spec(cp=[2], cp_kind=["ring"]))
    assert set(batch.cp.tolist()) == {2} and set(batch.cp_kind.tolist()) == {1}


def test_a_rank_works_on_its_slice_of_the_sequence():
    s = spec()
    ld = local_dims(s.model, plan(cp=8))
    assert ld.seq == 32768 / 8 and ld.tokens == 4096
    assert ld.heads == 32 and ld.kv_heads == 8  # whole heads outside the attention core


def test_zero_partitions_over_dp_times_cp():
    s, n = spec(), 8.03e9
    p = plan(dp=2, cp=4, zero=1)
    assert p.zero_ranks == 8
    assert dsmem.master_weight_bytes(p, n) == pytest.approx(FP32_BYTES * n / 8)
    assert dsmem.optimizer_state_bytes(s, p, n) == pytest.approx(8 * n / 8)


def test_ring_saves_what_one_rank_of_the_unsplit_model_would_for_its_slice():
    """Ring attention keeps its own q, k, v, output and statistics: a block's saved bytes are
    those of the same model at seq_len / cp without context parallelism."""
    s, short = spec(), spec(seq=32768 // 8)
    ring = act.block_saved_bytes(s.model, plan(cp=8, kind=R, rc=Recompute.NONE))
    alone = act.block_saved_bytes(short.model, plan(cp=1, rc=Recompute.NONE))
    assert ring == pytest.approx(alone)


def test_ulysses_attention_saved_bytes_by_hand():
    """Llama 3 8B, cp 8, one sequence of 32,768: 4,096 tokens a rank, bf16.  The exchanged q,
    k, v (4096 + 2 x 1024 wide), the kernel's output and its exchanged copy (4096 each), RoPE's
    cos and sin over the local tokens (2 x 4096 x 128), the fp32 log-sum-exp of 32 heads."""
    s = spec()
    d = act._dims(s.model, plan(cp=8, rc=Recompute.NONE))
    t = 4096
    by_hand = 2 * t * (4096 + 2 * 1024) + 2 * (2 * t * 4096) + 2 * t * 128 + 4 * 32 * t
    assert act.attention_saved_bytes(s.model, d, plan(cp=8, rc=Recompute.NONE)) == by_hand


def test_cp_backward_buffers_by_hand():
    s = spec()
    t = 4096
    ulysses = act.cp_transient_bytes(s.model, act._dims(s.model, plan(cp=8)), plan(cp=8))
    assert ulysses == 2 * 2 * t * (4096 + 2 * 1024)
    ring_plan = plan(cp=8, kind=R)
    ring = act.cp_transient_bytes(s.model, act._dims(s.model, ring_plan), ring_plan)
    assert ring == 2 * 2 * 2 * t * 2 * 1024
    assert act.cp_transient_bytes(s.model, act._dims(s.model, plan(cp=1)), plan(cp=1)) == 0


def test_ulysses_all_to_alls_by_hand():
    """Four all-to-alls (q, k, v, output) forward, four backward, four more in the recomputed
    forward, per layer, over 8 GPUs on NVLink."""
    s = spec()
    p = plan(cp=8)
    stage = stages_to_check(s.model, 1, p.grad_accum)[0]
    link = group_link(s.cluster, 8, 1)
    net = s.cluster.gpu.efficiency.network
    t = 4096
    one = sum(coll.all_to_all(2 * t * w, link, net) for w in (4096, 1024, 1024, 4096))
    got = cp_seconds_per_micro_batch(s, p, stage, ORDERS[0])
    assert got == pytest.approx(32 * 3 * one)
    assert cp_seconds_per_micro_batch(s, replace(p, recompute=Recompute.NONE), stage,
                                      ORDERS[0]) == pytest.approx(32 * 2 * one)


def test_ring_exchange_hides_under_attention_on_nvlink_but_not_across_nodes():
    """cp - 1 K/V transfers per layer each way, each hidden under that step's attention: on
    NVLink at 32k tokens they hide; a ring across 8 nodes over one slow NIC each does not."""
    s = spec()
    p = plan(cp=8, kind=R)
    stage = stages_to_check(s.model, 1, p.grad_accum)[0]
    assert cp_seconds_per_micro_batch(s, p, stage, ORDERS[0]) == 0.0
    slow = spec_from_dict({
        "model": {"preset": "llama3-8b", "seq_len": 32768},
        "cluster": {"gpu": "H100-SXM", "nodes": 8, "gpus_per_node": 1,
                    "inter_node": {"nics_per_node": 1, "nic_gbit": 25}},
        "training": {"tokens": 1e10, "global_batch_sequences": 16}})
    link = group_link(slow.cluster, 8, 1)
    net = slow.cluster.gpu.efficiency.network
    kv = 2 * 4096 * 2 * 1024
    f, b = attention_seconds(slow, p)
    by_hand = 32 * (2 * max(0.0, 7 * coll.p2p(kv, link, net) - f)
                    + max(0.0, 7 * coll.p2p(2 * kv, link, net) - b))
    got = cp_seconds_per_micro_batch(slow, p, stage, ORDERS[0])
    assert got > 0 and got == pytest.approx(by_hand)


def test_attention_work_per_rank_is_one_cp_th():
    s = spec()
    f1, b1 = attention_seconds(s, plan(cp=1))
    f8, b8 = attention_seconds(s, plan(cp=8))
    assert f8 == pytest.approx(f1 / 8) and b8 == pytest.approx(b1 / 8)


def test_pytorch_ring_pays_for_merging_its_steps_by_hand():
    """torchtitan's ring (torch's context_parallel, backend fsdp) upcasts each step's output to
    fp32 and merges it with separate element-wise ops, and accumulates its gradients in fp32; the
    busiest rank's bytes, counted by hand for Llama 3 8B at 32k tokens over cp 8 (4,096 local
    tokens, q width 4,096, K/V width 1,024, bf16), priced at the HBM's achieved bandwidth.
    Transformer Engine's ring (backend megatron) and Ulysses pay none."""
    def runtime(**rt):
        return spec_from_dict({
            "model": {"preset": "llama3-8b", "seq_len": 32768},
            "cluster": {"gpu": "H100-SXM", "nodes": 1, "gpus_per_node": 8},
            "training": {"tokens": 1e10, "global_batch_sequences": 16}, "runtime": rt})
    out, kv = 4096 * 4096, 4096 * 1024
    fwd = 12 * out + 7 * (38 * out + 8 * kv)  # upcast + downcast; 7 later steps' merge + K/V cat
    bwd = 10 * out + 28 * kv + 8 * (10 * out + 50 * kv)  # zeros, casts; 8 steps' fp32 sums, cats
    torch_ring = runtime(backend="fsdp", attention_kernel="flash2")
    hbm = torch_ring.cluster.gpu.hbm_bytes_per_s
    te_f, te_b = attention_seconds(runtime(backend="megatron", attention_kernel="flash2"),
                                   plan(cp=8, kind=R))
    f, b = attention_seconds(torch_ring, plan(cp=8, kind=R))
    assert f - te_f == pytest.approx(fwd / hbm) and b - te_b == pytest.approx(bwd / hbm)
    assert attention_seconds(torch_ring, plan(cp=8, kind=U)) == pytest.approx((te_f, te_b))
    one = attention_seconds(torch_ring, plan(cp=1))
    assert one == pytest.approx(attention_seconds(runtime(backend="megatron",
                                                          attention_kernel="flash2"), plan(cp=1)))


def test_step_time_names_the_exchange():
    s = spec()
    st = step_time_for_order(s, plan(cp=8), ORDERS[0])
    assert st.cp_comm > 0 and st.total == pytest.approx(sum(st.as_dict()[k] for k in (
        "compute", "tp_comm", "ep_comm", "cp_comm", "pp_comm", "bubble", "dp_comm", "optimizer",
        "offload")))


@pytest.mark.parametrize("change,rule", [
    (dict(cp=3, dp=1), "world size"),
    (dict(cp=16, dp=1, kind=U), "world size"),
])
def test_world_size_counts_cp(change, rule):
    why = check(spec(), plan(**change))
    assert why is not None and why.rule == rule


def test_rules_for_cp_name_the_field():
    s = spec(seq=32768 + 8)  # divisible by 8, not by 16
    why = check(s, plan(cp=8, kind=R))
    assert why.rule == "cp vs sequence" and "2·cp (16" in why.reason
    assert check(s, plan(cp=8, kind=U)) is None
    heads = spec(model="llama3-8b", per_node=16)  # 8 kv-heads: Ulysses cp 16 cannot split them
    why = check(heads, plan(cp=16, kind=U, mb=1))
    assert why.rule == "Ulysses vs heads" and "kv-heads (8)" in why.reason
    assert check(heads, plan(cp=16, kind=R)) is None
    eager = spec_from_dict({**_raw(), "model": {"preset": "llama3-8b", "seq_len": 32768,
                                                "attention": "eager"}})
    assert check(eager, plan(cp=8, kind=R)).rule == "ring needs fused attention"


def _raw():
    return {"cluster": {"gpu": "H100-SXM", "nodes": 1, "gpus_per_node": 8},
            "training": {"tokens": 1e10, "global_batch_sequences": 16}}


def test_moe_with_cp_is_refused():
    s = spec_from_dict({**_raw(), "model": {"preset": "tiny-moe", "seq_len": 8192}})
    why = check(s, Plan(dp=4, tp=1, pp=1, zero=ZeroStage(1), precision=Precision.BF16,
                        micro_batch=1, grad_accum=4, recompute=Recompute.NONE, cp=2))
    assert why.rule == "cp with experts"


def test_the_executor_runs_ulysses_not_ring():
    s = spec()
    assert check(s, plan(cp=8, kind=R), executable=True).rule == "ring attention"
    assert check(s, plan(cp=8, kind=R)) is None


def test_long_context_search_picks_cp_and_the_label_says_so():
    """128k tokens of Llama 3 8B on 8 H100s: cp makes it fit and fast; the label names the
    degree and kind."""
    s = spec(seq=131072)
    result = search(s)
    assert result.best is not None and result.best.plan.cp > 1
    assert f"cp{result.best.plan.cp}" in result.best.plan.label
    without = search(spec(seq=131072, cp=[1]))
    if without.best is not None:
        assert result.best.time.step.total < without.best.time.step.total


def test_offload_share_is_over_dp_times_cp():
    s = spec()
    p = plan(dp=2, cp=4, zero=3, offload=Offload.OPTIMIZER_CPU)
    q = plan(dp=8, cp=1, zero=3, offload=Offload.OPTIMIZER_CPU, mb=1)
    assert DEEPSPEED.offload_seconds(s, p, 1e9) == pytest.approx(
        DEEPSPEED.offload_seconds(s, replace(q, grad_accum=2), 1e9))
