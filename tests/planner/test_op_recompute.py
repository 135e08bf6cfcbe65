"""Per-op selective checkpointing (recompute: op), torchtitan's "op" policy: what a block keeps,
what it recomputes, and that the executor refuses it; by hand on Llama 3 8B (d_model 4096, 32
heads, 8 kv-heads of 128, SwiGLU 14336), one sequence of 4,096 tokens, bf16."""
from __future__ import annotations

import pytest

from planner.estimate.timing import _block_seconds, attention_seconds
from planner.model import activations as act
from planner.model.flops import layer_matmul_flops_per_token, recompute_flops_per_token
from planner.plan.strategy import Plan
from planner.search.rules import check
from planner.spec.loading import spec_from_dict
from planner.spec.units import FP32_BYTES, Precision, Recompute, ZeroStage

T, D, Q, KV, F = 4096, 4096, 4096, 1024, 14336


def spec():
    return spec_from_dict({"model": {"preset": "llama3-8b", "seq_len": T},
                           "cluster": {"gpu": "H100-SXM", "nodes": 1, "gpus_per_node": 8},
                           "training": {"tokens": 1e10, "global_batch_sequences": 64}})


def plan(rc):
    return Plan(dp=8, tp=1, pp=1, zero=ZeroStage(3), precision=Precision.BF16, micro_batch=1,
                grad_accum=8, recompute=rc)


def test_a_block_keeps_its_input_the_attention_output_and_half_the_matmul_outputs():
    s = spec()
    widths = Q + 2 * KV + D + 2 * F + D  # q, k, v, wo, w1, w3, w2
    by_hand = 2 * T * D + 2 * T * Q + FP32_BYTES * 32 * T + 2 * T * widths / 2
    assert act.stored_per_block_bytes(s.model, plan(Recompute.OP)) == pytest.approx(by_hand)
    # between full recompute (the input alone) and none (everything)
    assert act.stored_per_block_bytes(s.model, plan(Recompute.FULL)) < by_hand \
        < act.stored_per_block_bytes(s.model, plan(Recompute.NONE))


def test_backward_rematerialises_the_block_like_full_recompute():
    s = spec()
    assert act.block_backward_transient_bytes(s.model, plan(Recompute.OP)) == pytest.approx(
        act.block_backward_transient_bytes(s.model, plan(Recompute.FULL)))


def test_it_reruns_half_the_matmuls_and_all_element_wise_work_not_attention():
    s = spec()
    m = s.model
    assert recompute_flops_per_token(m, Recompute.OP) == m.n_layers * (
        layer_matmul_flops_per_token(m) // 2)
    none = _block_seconds(s, plan(Recompute.NONE), moe=False)
    full = _block_seconds(s, plan(Recompute.FULL), moe=False)
    op = _block_seconds(s, plan(Recompute.OP), moe=False)
    attn_f, _ = attention_seconds(s, plan(Recompute.NONE))
    # full's extra = gemm/3 + attention forward + element-wise/3; op's = gemm/6 + element-wise/3
    gemm_third = 2 * ((full - none) - attn_f - (op - none))
    assert gemm_third > 0
    assert (op - none) == pytest.approx((full - none) - attn_f - gemm_third / 2)


def test_the_executor_refuses_it_and_auto_never_tries_it():
    s = spec()
    why = check(s, plan(Recompute.OP), executable=True)
    assert why.rule == "per-op recompute"
    assert check(s, plan(Recompute.OP)) is None
    from planner.search.engine import recomputes
    assert Recompute.OP not in recomputes(s)
