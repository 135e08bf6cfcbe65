"""fp8 as a precision recipe (issue 14): each memory term and each time term of
planner/model/fp8.py checked by hand on Llama 3 8B (d_model 4096, 32 heads, 8 kv-heads of 128,
d_ff 14336, SwiGLU)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from planner.estimate.predict import estimate
from planner.estimate.timing import block_gemm_seconds, block_gemms, gemm_seconds, throughput
from planner.model import fp8
from planner.plan.strategy import Plan
from planner.search.engine import search
from planner.search.rules import check
from planner.spec.loading import spec_from_dict
from planner.spec.units import FP32_BYTES, Precision, Recompute, ZeroStage

D, Q, KV, F = 4096, 4096, 1024, 14336
#: one block's fp8 GEMM weights: fused QKV, output projection, gate + up + down
BLOCK = D * (Q + 2 * KV) + Q * D + 3 * D * F


def spec(gpu="H100-SXM", recipe="te_delayed", **runtime):
    return spec_from_dict({
        "model": {"preset": "llama3-8b", "seq_len": 4096},
        "cluster": {"gpu": gpu, "nodes": 1, "gpus_per_node": 8},
        "training": {"tokens": 1e10, "global_batch_sequences": 64},
        "runtime": {"fp8_recipe": recipe, **runtime}})


def plan(precision=Precision.FP8, zero=1, rc=Recompute.NONE, mb=1, tp=1, ga=8):
    return Plan(dp=8 // tp, tp=tp, pp=1, zero=ZeroStage(zero), precision=precision,
                micro_batch=mb, grad_accum=ga, recompute=rc)


def test_block_gemm_weights_are_the_projections_and_the_mlp():
    assert fp8.block_gemm_weights(spec(), plan()) == BLOCK
    assert fp8.block_gemm_weights(spec(), plan(tp=2)) == BLOCK / 2


def test_te_on_hopper_caches_the_fp8_weight_and_its_transpose():
    """Two fp8 bytes per GEMM weight (row-wise and the transposed copy TN GEMMs need) and the
    fp32 scale + 1,024-entry amax history of 5 quantizers per GEMM, 4 GEMMs a block."""
    got = fp8.weight_cache_bytes(spec(), plan(), 32)
    state = 32 * 4 * 5 * (1 + 1024) * FP32_BYTES
    assert got == 32 * BLOCK * 2 + state


def test_blackwell_keeps_one_buffer_and_mxfp8_keeps_two_with_block_scales():
    delayed = fp8.weight_cache_bytes(spec("B200"), plan(), 32)
    assert delayed == 32 * BLOCK * 1 + 32 * 4 * 5 * 1025 * FP32_BYTES
    mx = fp8.weight_cache_bytes(spec("B200", "te_mxfp8"), plan(), 32)
    assert mx == pytest.approx(32 * BLOCK * 2 * (1 + 1 / 32) + 32 * 4 * 5 * FP32_BYTES)


def test_torchao_and_zero3_cache_nothing_and_bf16_plans_have_no_fp8_term():
    state = 32 * 4 * 5 * FP32_BYTES
    assert fp8.weight_cache_bytes(spec(recipe="torchao_tensorwise"), plan(), 32) == state
    assert fp8.weight_cache_bytes(spec(), plan(zero=3), 32) == 32 * 4 * 5 * 1025 * FP32_BYTES
    assert fp8.weight_cache_bytes(spec(), plan(precision=Precision.BF16), 32) == 0
    assert estimate(spec(), plan(precision=Precision.BF16)).memory.fp8_weights == 0


def test_te_saves_linear_inputs_in_fp8_by_hand():
    """4,096 tokens: the two norm outputs and the down projection's input go from 2 bytes to 1;
    the output projection keeps its own fp8 copy of the attention output (the kernel keeps the
    bf16 one)."""
    t = 4096
    by_hand = (1 - 2) * (2 * t * D + t * F) + 1 * t * Q
    assert fp8.block_saved_delta_bytes(spec(), plan()) == by_hand
    assert fp8.block_saved_delta_bytes(spec(recipe="torchao_rowwise"), plan()) == 0
    bf16 = estimate(spec(), plan(precision=Precision.BF16)).memory
    f8 = estimate(spec(), plan()).memory
    assert f8.activations - bf16.activations == pytest.approx(32 * by_hand, rel=1e-9)


def test_fp8_gemms_run_at_the_fp8_peak_on_their_curve():
    """A block's GEMMs at 1,978.9 TFLOP/s x gemm_max x f(M) f(N) f(K) on the bf16 curve (the
    catalog states no fp8 one); the LM head and attention stay at the bf16 peak."""
    s = spec()
    p = plan()
    eff = s.cluster.gpu.efficiency
    assert fp8.FP8_MAX_RATIO == 1.0 and fp8.FP8_HALF_DIM_RATIO == 1.0
    half = eff.gemm_half_dim
    f = lambda x: x / (x + half)  # noqa: E731
    by_hand = sum(6 * m * n * k / (1978.9e12 * eff.gemm_max * f(m) * f(n) * f(k))
                  for m, n, k in block_gemms(s, p))
    assert block_gemm_seconds(s, p, block_gemms(s, p)) == pytest.approx(by_hand)
    bf16 = plan(precision=Precision.BF16)
    assert block_gemm_seconds(s, bf16, block_gemms(s, bf16)) == pytest.approx(
        gemm_seconds(s, bf16, block_gemms(s, bf16)))


def test_cast_traffic_by_hand_te_delayed_on_hopper():
    """Each GEMM input (forward) and output gradient (backward) read in bf16 and written as two
    fp8 copies; the weights once per step, spread over 8 micro-batches."""
    t = 4096
    inputs = t * (D + Q + D + F)
    grads = t * ((Q + 2 * KV) + D + 2 * F + D)
    cast = 2 + 2
    assert fp8.cast_bytes_per_micro_batch(spec(), plan()) == pytest.approx(
        (inputs + grads) * cast + BLOCK * cast / 8)


def test_torchao_casts_again_in_backward_and_reads_for_its_amax():
    t = 4096
    inputs = t * (D + Q + D + F)
    grads = t * ((Q + 2 * KV) + D + 2 * F + D)
    cast = 2 * 2 + 2
    by_hand = (inputs + grads) * cast + inputs * cast + 2 * BLOCK * cast
    assert fp8.cast_bytes_per_micro_batch(spec(recipe="torchao_tensorwise"), plan()) \
        == pytest.approx(by_hand)


def test_fp8_all_gather_halves_the_gathered_fp8_weights():
    s = spec(recipe="torchao_tensorwise", fp8_all_gather=True)
    n = 32 * BLOCK + 2 * 128256 * D
    per = fp8.gathered_bytes_per_param(s, plan(zero=3), n, 32)
    assert per == pytest.approx(2 - (2 - 1) * 32 * BLOCK / n)
    rowwise = spec(recipe="torchao_rowwise", fp8_all_gather=True)
    assert fp8.gathered_bytes_per_param(rowwise, plan(zero=3), n, 32) == 2
    z3 = estimate(s, plan(zero=3)).time.step.dp_comm
    assert z3 < estimate(spec(recipe="torchao_tensorwise"), plan(zero=3)).time.step.dp_comm


def test_fp8_is_faster_than_bf16_on_a_large_model_and_refused_where_there_is_no_fp8():
    s = spec()
    assert throughput(s, plan()).tokens_per_s > throughput(
        s, plan(precision=Precision.BF16)).tokens_per_s
    a100 = spec("A100-80GB-SXM")
    assert check(a100, plan()).rule == "precision unsupported"


def test_rowwise_gemms_run_at_their_fitted_share_of_tensorwise():
    shapes = block_gemms(spec(), plan())
    tensorwise = block_gemm_seconds(spec(recipe="torchao_tensorwise"), plan(), shapes)
    rowwise = block_gemm_seconds(spec(recipe="torchao_rowwise"), plan(), shapes)
    assert rowwise == pytest.approx(tensorwise / fp8.ROWWISE_GEMM_RATIO)


def test_auto_recipe_is_mxfp8_on_blackwell_and_delayed_on_hopper():
    assert fp8.recipe(spec("B200", "auto")).value == "te_mxfp8"
    assert fp8.recipe(spec("H100-SXM", "auto")).value == "te_delayed"


def test_search_ranks_fp8_when_asked_and_execute_refuses_it():
    s = spec_from_dict({
        "model": {"preset": "llama3-8b", "seq_len": 4096},
        "cluster": {"gpu": "H100-SXM", "nodes": 1, "gpus_per_node": 8},
        "training": {"tokens": 1e10, "global_batch_sequences": 64},
        "search": {"precision": ["bf16", "fp8"]}})
    result = search(s)
    assert result.best.plan.precision is Precision.FP8
    assert "fp8" in result.best.not_executable
    runnable = search(s, executable=True)
    assert runnable.best.plan.precision is Precision.BF16


def test_report_names_the_fp8_term(tmp_path):
    e = estimate(spec(), replace(plan(), micro_batch=1))
    assert e.memory.fp8_weights > 0
    assert e.memory.total == pytest.approx(sum(e.memory.as_gib()[k] for k in e.memory.as_gib()
                                               if k != "total") * 2**30)


def test_execute_takes_torchao_fp8_without_tensor_parallelism(monkeypatch):
    from planner.backends.deepspeed import rules as dsrules
    s = spec(recipe="torchao_tensorwise")
    monkeypatch.setattr(dsrules, "torchao_installed", lambda: True)
    assert check(s, plan(), executable=True) is None
    pipelined = Plan(dp=4, tp=1, pp=2, zero=ZeroStage(1), precision=Precision.FP8,
                     micro_batch=1, grad_accum=16, recompute=Recompute.NONE)
    assert check(s, pipelined, executable=True) is None
    why = check(s, plan(tp=2), executable=True)
    assert why.rule == "fp8 GEMMs" and "tp=2" in why.reason
    assert "Transformer Engine" in check(spec(), plan(), executable=True).reason
    monkeypatch.setattr(dsrules, "torchao_installed", lambda: False)
    assert "pip install torchao" in check(s, plan(), executable=True).reason
