"""FLOPs per step from the shape, against hand arithmetic and nanoGPT's 6N + 12·L·h·s."""
import pytest

from planner.model.flops import forward_flops_per_token, recompute_flops_per_token, step_flops
from planner.model.shape import param_counts
from planner.plan.strategy import Plan
from planner.spec.spec import ModelSpec
from planner.spec.units import Offload, Precision, Recompute, ZeroStage

GPT2 = ModelSpec.model_validate({"preset": "gpt2-124m", "vocab_size": 50304})


def plan(recompute=Recompute.NONE):
    return Plan(1, 1, 1, ZeroStage.NONE, Precision.BF16, 8, 1, recompute, Offload.NONE)


def test_gpt2_forward_flops_per_token_by_hand():
    """Per block 2·(768·2304 + 768² + 2·768·3072) matmul FLOPs + 4·1024·768 for QK^T and AV;
    12 blocks; logits 2·768·50304."""
    per_block = 2 * (768 * 2304 + 768 * 768 + 2 * 768 * 3072) + 4 * 1024 * 768
    assert forward_flops_per_token(GPT2) == 12 * per_block + 2 * 768 * 50304 == 284_884_992


def test_training_flops_agree_with_nanogpt_estimate():
    """nanoGPT estimate_mfu: 6N + 12·L·H·Q·T per token; N also counts position embeddings and
    norms, which do no matmul, so the exact count is slightly lower (< 1 %)."""
    n = param_counts(GPT2).total
    nanogpt = 6 * n + 12 * 12 * 12 * 64 * 1024
    exact = 3 * forward_flops_per_token(GPT2)
    assert exact == pytest.approx(nanogpt, rel=0.01)
    assert exact < nanogpt


def test_step_flops_and_six_nd():
    f = step_flops(GPT2, plan(), global_batch_sequences=512)
    tokens = 512 * 1024
    assert f.tokens == tokens
    assert f.model == 3 * 284_884_992 * tokens
    assert f.hardware == f.model
    assert f.six_nd == 6 * 124_475_904 * tokens


def test_full_recompute_adds_one_forward_of_the_blocks():
    blocks = 12 * (2 * (768 * 2304 + 768 * 768 + 2 * 768 * 3072) + 4 * 1024 * 768)
    assert recompute_flops_per_token(GPT2, Recompute.FULL) == blocks
    f = step_flops(GPT2, plan(Recompute.FULL), global_batch_sequences=1)
    assert f.hardware - f.model == blocks * 1024


def test_selective_recompute_adds_the_attention_core():
    assert recompute_flops_per_token(GPT2, Recompute.SELECTIVE) == 12 * 4 * 1024 * 768


def test_gqa_and_swiglu_flops():
    """Llama-2-70B block: Q and O 8192², K and V 8192·1024 (8 kv heads), SwiGLU 3·8192·28672."""
    m = ModelSpec.model_validate("llama2-70b")
    per_block = (2 * (8192 * (8192 + 2 * 1024) + 8192 * 8192 + 3 * 8192 * 28672)
                 + 4 * 4096 * 8192)
    assert forward_flops_per_token(m) == 80 * per_block + 2 * 8192 * 32000
