"""Each memory term against numbers worked out by hand for small shapes, including tp·pp > 1
with dp > 1.  The expected values are written out from the formulas in docs/memory-model.md,
not computed with the planner's own helpers."""
import pytest

from planner.backends.deepspeed.memory import (Wrapper, accumulated_gradient_bytes,
                                               ipg_bucket_bytes, master_weight_bytes,
                                               optimizer_state_bytes, optimizer_step_bytes,
                                               resident_gradient_bytes, stage_moments, wrapper,
                                               zero3_gathered_bytes)
from planner.estimate.memory import peak_memory
from planner.model import activations as act
from planner.model.memory_terms import MemoryBreakdown, cublas_workspace_bytes, parameter_bytes
from planner.model.shape import stage_params, stage_tensor_sizes, stages_to_check, tensor_stats
from planner.plan.strategy import Plan
from planner.spec.loading import spec_from_dict
from planner.spec.units import MiB, Offload, Precision, Recompute, ZeroStage

# llama-style: d 64, 4 heads of 16, 2 kv heads (kv width 32), SwiGLU 128, vocab 1000, seq 32
LLAMA = {"arch": "llama", "n_layers": 4, "d_model": 64, "n_heads": 4, "n_kv_heads": 2,
         "d_ff": 128, "vocab_size": 1000, "seq_len": 32}
# gpt2-style: d 64, 4 heads, GELU 256, vocab 1000, seq 32, tied, biases
GPT2 = {"arch": "gpt2", "n_layers": 4, "d_model": 64, "n_heads": 4, "vocab_size": 1000,
        "seq_len": 32}


def make_spec(model=LLAMA, gpus=8, per_node=8, **runtime):
    return spec_from_dict({"model": model,
                           "cluster": {"gpu": "H100-SXM", "nodes": gpus // per_node,
                                       "gpus_per_node": per_node},
                           "training": {"tokens": 1e9, "global_batch_sequences": 64},
                           "runtime": runtime})


def make_plan(dp=2, tp=2, pp=2, zero=1, precision="bf16", mb=2, ga=16, recompute="none",
              offload="none", sp=False):
    return Plan(dp, tp, pp, ZeroStage(zero), Precision(precision), mb, ga, Recompute(recompute),
                Offload(offload), sp)


# --- parameters per stage and rank ------------------------------------------------------------

def test_stage_params_tp2_pp2_by_hand():
    """Per block: QKV 64x(64+2*32)=8192, out 64x64=4096, SwiGLU 3x64x128=24576 (split over tp=2:
    18432) + two RMSNorm weights 2x64=128 (replicated) = 18560 per rank.  Stage 0: 2 blocks +
    vocab-parallel embedding 1000x64/2 = 69120; stage 1: 2 blocks + final norm 64 + head 32000."""
    spec = make_spec()
    first, last = stages_to_check(spec.model, pp=2, grad_accum=16)
    assert (first.n_layers, last.n_layers) == (2, 2)
    assert stage_params(spec.model, first, tp=2) == 69120
    assert stage_params(spec.model, last, tp=2) == 69184
    assert sum(stage_tensor_sizes(spec.model, last, 2)) == 69184


def test_tied_embedding_is_held_by_first_and_last_stage():
    """GPT-2 with pp=2: the tied table sits on both ends (DeepSpeed TiedLayerSpec)."""
    spec = make_spec(GPT2)
    first, last = stages_to_check(spec.model, pp=2, grad_accum=4)
    layer = 64 * 192 + 192 + 64 * 64 + 64 + 64 * 256 + 256 + 256 * 64 + 64 + 4 * 64
    assert stage_params(spec.model, first, 1) == 2 * layer + 1000 * 64 + 32 * 64
    assert stage_params(spec.model, last, 1) == 2 * layer + 2 * 64 + 1000 * 64


# --- model states ------------------------------------------------------------------------------

N = 69184  # last stage, tp=2


@pytest.mark.parametrize("zero,expected", [(0, 2 * N), (1, 2 * N), (2, 2 * N), (3, 2 * N / 2)],
                         ids=["z0", "z1", "z2", "z3"])
def test_parameter_bytes(zero, expected):
    assert parameter_bytes(make_plan(zero=zero, pp=1 if zero > 1 else 2), N) == expected


def test_zero3_parameter_offload_keeps_no_partition_on_gpu():
    assert parameter_bytes(make_plan(zero=3, pp=1, offload="params_cpu"), N) == 0


@pytest.mark.parametrize("zero,precision,expected", [
    (0, "fp32", 0), (0, "bf16", 4 * N), (1, "fp32", 4 * N / 2), (1, "bf16", 4 * N / 2),
    (3, "bf16", 4 * N / 2)], ids=["z0-fp32", "z0-bf16", "z1-fp32-clone", "z1-bf16", "z3-bf16"])
def test_master_weights(zero, precision, expected):
    plan = make_plan(zero=zero, precision=precision, pp=1)
    assert master_weight_bytes(plan, N) == expected


@pytest.mark.parametrize("zero,expected", [(0, 8 * N), (1, 8 * N / 2), (2, 8 * N / 2),
                                           (3, 8 * N / 2)], ids=["z0", "z1", "z2", "z3"])
def test_adam_states(zero, expected):
    spec = make_spec()
    assert optimizer_state_bytes(spec, make_plan(zero=zero, pp=1), N) == expected


def test_sgd_states_are_one_buffer():
    spec = spec_from_dict({"model": LLAMA, "cluster": {"gpu": "H100-SXM", "gpus_per_node": 8},
                           "training": {"tokens": 1e9, "global_batch_sequences": 64,
                                        "optimizer": "sgd"}})
    assert optimizer_state_bytes(spec, make_plan(zero=1, pp=1), N) == 4 * N / 2


def test_offloaded_optimizer_leaves_nothing_on_gpu():
    spec, plan = make_spec(), make_plan(zero=2, pp=1, offload="optimizer_cpu")
    assert optimizer_state_bytes(spec, plan, N) == 0
    assert master_weight_bytes(plan, N) == 0


def test_bf16_pipeline_uses_bf16_optimizer_full_fp32_gradient_buffer():
    plan = make_plan(zero=1, pp=2)
    assert wrapper(plan) is Wrapper.BF16_OPTIMIZER
    assert resident_gradient_bytes(plan, N) == 4 * N


def test_zero3_gradient_partition_is_resident():
    assert resident_gradient_bytes(make_plan(zero=3, pp=1), N) == 2 * N / 2


@pytest.mark.parametrize("zero,ga,expected", [
    (0, 1, 0), (0, 4, 2 * N), (1, 4, 2 * N), (2, 4, 2 * N / 2), (3, 4, 0)],
    ids=["z0-ga1", "z0-ga4", "z1-ga4-full", "z2-ga4-partition", "z3-in-resident"])
def test_gradients_carried_across_micro_batches(zero, ga, expected):
    plan = make_plan(zero=zero, pp=1, ga=ga, precision="fp16")
    assert accumulated_gradient_bytes(plan, N) == expected


# --- DeepSpeed buffers -------------------------------------------------------------------------

@pytest.mark.parametrize("zero,runtime,expected", [
    (0, {}, 0), (2, {}, 2 * 500_000_000), (2, {"overlap_comm": True}, 4 * 500_000_000),
    (3, {"overlap_comm": True}, 2 * 500_000_000), (2, {"reduce_bucket_size": 10**6}, 2 * 10**6),
    (3, {"contiguous_gradients": False}, 0)],
    ids=["z0", "z2", "z2-overlap-two-buffers", "z3-one-buffer", "z2-small-bucket", "z3-noncontig"])
def test_ipg_bucket(zero, runtime, expected):
    spec = make_spec(**runtime)
    assert ipg_bucket_bytes(make_plan(zero=zero, pp=1), spec.runtime) == expected


def test_cublas_workspaces_forward_and_autograd_thread():
    assert cublas_workspace_bytes(make_spec()) == 2 * 32 * MiB  # sm90: 32 MiB each


def test_zero3_gathers_nothing_at_dp1_and_everything_small_at_dp2():
    spec = make_spec()
    first = stages_to_check(spec.model, 1, 1)[0]
    tensors = stage_tensor_sizes(spec.model, first, 1)
    n = sum(tensors)
    stats = tensor_stats(spec.model, first, 1, spec.runtime.stage3_param_persistence_threshold)
    assert zero3_gathered_bytes(make_plan(dp=1, tp=1, pp=1, zero=3), n, stats, spec.runtime) == 0
    # every tensor is re-used within stage3_max_reuse_distance (1e9 elements): all stay gathered
    assert zero3_gathered_bytes(make_plan(dp=8, tp=1, pp=1, zero=3), n, stats,
                                spec.runtime) == 2 * n


def test_zero3_gathered_window_for_a_large_model():
    """Llama-2-7B at dp=64: reuse/2 + prefetch bucket + the largest tensor (the embedding) are
    live besides the persistent RMSNorm weights (4096 each, under the 1e5 threshold)."""
    spec = spec_from_dict({"model": "llama2-7b", "cluster": {"gpu": "A100", "nodes": 8},
                           "training": {"tokens": 1e9, "global_batch_sequences": 64}})
    first = stages_to_check(spec.model, 1, 1)[0]
    tensors = stage_tensor_sizes(spec.model, first, 1)
    persistent = (2 * 32 + 1) * 4096
    live = 1e9 / 2 + 5e7 + 32000 * 4096
    stats = tensor_stats(spec.model, first, 1, spec.runtime.stage3_param_persistence_threshold)
    assert (stats.small, stats.largest) == (persistent, 32000 * 4096)
    got = zero3_gathered_bytes(make_plan(dp=64, tp=1, pp=1, zero=3), sum(tensors), stats,
                               spec.runtime)
    assert got == pytest.approx(2 * (live + persistent))


@pytest.mark.parametrize("zero,torch_adam,expected", [
    # ZeRO-1: the fp64 norm copy is of one gradient tensor, at most the rank's partition
    (0, True, N * (2 + 8)), (1, False, max(2 * N / 2 + 8 * min(32000 * 64 / 2, N / 2),
                                          N / 2 * (2 * 2 + 4), N / 2 * 4)),
    (3, True, N / 2 * (2 + 4 + 4))], ids=["z0-mixed", "z1", "z3-one-subgroup"])
def test_optimizer_step_transient(zero, torch_adam, expected):
    spec = make_spec(torch_adam=torch_adam)
    plan = make_plan(zero=zero, pp=1)
    assert optimizer_step_bytes(spec, plan, N, largest_tensor=32000 * 64 // 2) == expected


# --- activations -------------------------------------------------------------------------------

S, B, H = 32, 2, 64


def test_gpt2_block_matches_korthikanti_without_dropout():
    """Korthikanti et al. 2022 eq. 1 without dropout masks and with a fused attention kernel:
    32·s·b·h bytes (bf16) + LayerNorm stats 16·s·b + log-sum-exp 4·b·a·s."""
    spec = make_spec(GPT2)
    got = act.block_saved_bytes(spec.model, make_plan(tp=1, pp=1))
    assert got == 32 * S * B * H + 16 * S * B + 4 * B * 4 * S


def test_gpt2_block_tensor_parallel_with_and_without_sequence_parallel():
    """tp=2: 8·sbh stay replicated (two LN inputs, QKV and FC inputs), 24·sbh are split
    (Korthikanti eq. 2 without dropout: sbh(8 + 24/t)); with sequence parallel all of it is /t."""
    spec = make_spec(GPT2)
    no_sp = act.block_saved_bytes(spec.model, make_plan(tp=2, pp=1))
    sp = act.block_saved_bytes(spec.model, make_plan(tp=2, pp=1, sp=True))
    assert no_sp == (8 + 24 / 2) * S * B * H + 16 * S * B + 4 * B * 4 * S / 2
    assert sp == 32 / 2 * S * B * H + 16 * S * B / 2 + 4 * B * 4 * S / 2


def test_llama_block_rmsnorm_rope_swiglu_gqa():
    """RMSNorm keeps x in fp32 (4), its bf16 normalisation (2) and output (2) per element, and a
    fp32 rsqrt per token; QKV out (64 + 2·32 wide), rotated q and k (64 + 32), attention out 64
    and its (B, T, H·hd) copy for the output projection (q's layout after RoPE), log-sum-exp;
    SwiGLU keeps gate+up (2·128), silu and product (128 each)."""
    spec = make_spec()
    sb = S * B
    norms = 2 * ((4 + 2 + 2) * sb * H + 4 * sb)
    attention = (2 * sb * (64 + 64) + 2 * sb * (64 + 32) + 2 * 2 * sb * 64 + 4 * B * 4 * S
                 + 2 * S * 16)  # + RoPE's cos and sin tables (s x head_dim/2 each)
    mlp = 2 * sb * 128 * 4
    assert act.block_saved_bytes(spec.model, make_plan(tp=1, pp=1)) == norms + attention + mlp


def test_fp32_rmsnorm_copy_is_a_no_op():
    spec = make_spec()
    d = act._dims(spec.model, make_plan(tp=1, pp=1, precision="fp32"))
    assert act.norm_saved_bytes(spec.model, d) == (4 + 4 + 4) * S * B * H + 4 * S * B


def test_eager_attention_keeps_probabilities_unless_selective():
    eager = make_spec({**GPT2, "attention": "eager"})
    flash = make_spec(GPT2)
    plan = make_plan(tp=1, pp=1)
    extra = act.block_saved_bytes(eager.model, plan) - act.block_saved_bytes(flash.model, plan)
    assert extra == 2 * B * 4 * S * S - 4 * B * 4 * S  # probabilities in, log-sum-exp out
    selective = make_plan(tp=1, pp=1, recompute="selective")
    assert act.block_saved_bytes(eager.model, selective) == pytest.approx(
        act.block_saved_bytes(flash.model, plan) - 4 * B * 4 * S)


def test_full_recompute_keeps_block_inputs_only():
    spec = make_spec()
    assert act.stored_per_block_bytes(spec.model, make_plan(recompute="full")) == 2 * S * B * H


def test_logits_backward_three_fp32_tensors_vocab_parallel():
    spec = make_spec()
    assert act.logits_backward_peak_bytes(spec.model, make_plan(tp=2)) == 3 * 4 * S * B * 1000 / 2
    assert act.logits_forward_peak_bytes(spec.model, make_plan(tp=2)) == (2 + 4 + 4) * S * B * 500


def test_loss_in_param_dtype_skips_the_upcast():
    spec = make_spec({**LLAMA, "loss_dtype": "param"})
    assert act.logits_backward_peak_bytes(spec.model, make_plan(tp=1)) == 3 * 2 * S * B * 1000


# --- a whole moment, tp·pp > 1 and dp > 1 ------------------------------------------------------

def test_backward_through_the_loss_on_the_last_stage_by_hand():
    """dp2·tp2·pp2, ZeRO-1, fp16 (ZeroOptimizer, not BF16_Optimizer), mb2, 16 micro-batches.
    Last stage: 2 blocks, 1 micro-batch in flight, N = 69184 params per rank."""
    spec = make_spec()
    plan = make_plan(zero=1, precision="fp16", ga=16)
    last = stages_to_check(spec.model, 2, 16)[1]
    sb = S * B
    block = (2 * ((4 + 2 + 2) * sb * H + 4 * sb)  # two RMSNorms (not split: no SP)
             # attention / tp: QKV out, rotated q and k, output and its copy, log-sum-exp
             + (2 * sb * 128 + 2 * sb * 96 + 2 * 2 * sb * 64 + 4 * B * 4 * S) / 2
             + 2 * S * 16  # RoPE's cos and sin tables
             + 2 * sb * 128 * 4 / 2)  # SwiGLU / tp
    head = (4 + 2 + 2) * sb * H + 4 * sb + 2 * 8 * sb  # final norm + head input + ids, targets
    expected = MemoryBreakdown(
        parameters=2 * N, gradients=2 * N,  # fp16 grads carried from the earlier micro-batches
        master_weights=4 * N / 2, optimizer_states=8 * N / 2,
        activations=2 * block + head, logits_loss=3 * 4 * sb * 1000 / 2,
        deepspeed_buffers=2 * 500_000_000,  # ZeRO-1 keeps its bucket across micro-batches
        cublas_workspace=2 * 32 * MiB)
    got = next(m for m, _ in stage_moments(spec, plan, last)
               if m.moment == "backward through the loss")
    for term in ("parameters", "gradients", "master_weights", "optimizer_states", "activations",
                 "logits_loss", "deepspeed_buffers", "cublas_workspace"):
        assert getattr(got, term) == pytest.approx(getattr(expected, term)), term
    assert got.total == pytest.approx(expected.total)


def test_first_stage_keeps_pp_micro_batches_in_flight():
    """1F1B: stage 0 of pp=2 holds 2 micro-batches' activations, the last stage 1."""
    spec = make_spec()
    plan = make_plan(zero=1, precision="fp16")
    first, last = stages_to_check(spec.model, 2, 16)
    assert (first.in_flight, last.in_flight) == (2, 1)
    per_block = act.block_saved_bytes(spec.model, plan)
    block_moment = next(m for m, _ in stage_moments(spec, plan, first)
                        if m.moment == "backward through the last block")
    transient = act.block_backward_transient_bytes(spec.model, plan)
    assert block_moment.activations == pytest.approx(2 * 2 * per_block + transient)


def test_peak_is_the_largest_moment_over_stages():
    spec = make_spec()
    plan = make_plan()
    peak = peak_memory(spec, plan)
    everything = [m.total for s in stages_to_check(spec.model, 2, 16)
                  for m, happens in stage_moments(spec, plan, s) if happens]
    assert peak.total == max(everything)
    assert peak.total == pytest.approx(sum(v for k, v in peak.as_gib().items() if k != "total")
                                       * 2**30)


def test_first_bucket_flush_with_most_activations_alive():
    """Llama-2-7B, ZeRO-2, dp 64: 6,738,415,616 params, 262,148,096 of them outside the blocks
    (embedding, head, final norm), 202,383,360 per block.  The 5e8-element bucket fills after
    ceil((5e8 - 262,148,096) / 202,383,360) = 2 blocks: 30 blocks' activations are still alive
    while the bucket (1e9 B) and its flat copy (1e9 B) exist."""
    spec = spec_from_dict({"model": "llama2-7b", "cluster": {"gpu": "A100", "nodes": 8},
                           "training": {"tokens": 1e9, "global_batch_sequences": 1024}})
    plan = make_plan(dp=64, tp=1, pp=1, zero=2, mb=1, ga=16)
    stage = stages_to_check(spec.model, 1, 16)[0]
    n = 6_738_415_616
    flush, happens = next((m, h) for m, h in stage_moments(spec, plan, stage)
                          if m.moment == "first gradient-bucket reduction in backward")
    assert happens
    per_block = act.block_saved_bytes(spec.model, plan)
    assert flush.activations == pytest.approx(
        30 * per_block + act.block_backward_transient_bytes(spec.model, plan))
    assert flush.deepspeed_buffers == 2 * 500_000_000 + 2 * 500_000_000
    assert flush.gradients == pytest.approx(2 * n / 64 + 2 * 500_000_000 / 64)


def test_no_flush_moment_when_the_model_fits_one_bucket():
    spec = make_spec()
    plan = make_plan(zero=2, pp=1)
    stage = stages_to_check(spec.model, 1, 16)[0]
    assert not any(h for m, h in stage_moments(spec, plan, stage) if "bucket" in m.moment)
