"""The executor's GPT (executor/model.py): its parameters are the planner's for every preset, and
its pieces agree with independent formulations (flash vs eager attention, GQA vs repeated heads,
pipeline layers vs the whole model, a simulated tensor-parallel split vs the plain layers)."""
import copy
import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from executor.model import GPT, Block, RMSNorm, causal_lm_loss, rope  # noqa: E402
from planner.model.shape import layer_params, layer_tensor_sizes, param_counts  # noqa: E402
from planner.spec.catalog import model_presets  # noqa: E402
from planner.spec.spec import ModelSpec  # noqa: E402

PRESETS = sorted(model_presets())

#: small models covering both families and every switch the spec has
TINY = {
    "gpt2": dict(arch="gpt2", n_layers=2, d_model=32, n_heads=4, vocab_size=97, seq_len=16),
    "llama-gqa": dict(arch="llama", n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48,
                      vocab_size=97, seq_len=16),
    "llama-bias-tied": dict(arch="llama", n_layers=2, d_model=32, n_heads=4, n_kv_heads=1,
                            d_ff=40, vocab_size=97, seq_len=16, bias=True, tied_embeddings=True),
    "gpt2-rope-untied": dict(arch="gpt2", n_layers=2, d_model=32, n_heads=2, vocab_size=97,
                             seq_len=16, position="rope", tied_embeddings=False,
                             loss_dtype="param"),
    "qwen2-qkv-bias": dict(arch="llama", n_layers=2, d_model=32, n_heads=4, n_kv_heads=2,
                           d_ff=48, vocab_size=97, seq_len=16, qkv_bias=True),
}


def tiny(name: str, **overrides) -> ModelSpec:
    return ModelSpec(**{**TINY[name], **overrides})


def batch(m: ModelSpec, b: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, m.vocab_size, (b, m.seq_len), generator=g)
    y = torch.randint(0, m.vocab_size, (b, m.seq_len), generator=g)
    return x, y


# ------------------------------------------------------------------- parameter count cross-check

@pytest.mark.parametrize("preset", PRESETS)
def test_param_count_equals_planner(preset):
    """planner.model.shape counts exactly the tensors the model holds (a tied table once)."""
    m = ModelSpec(preset=preset)
    with torch.device("meta"):
        model = GPT(m)
    assert sum(p.numel() for p in model.parameters()) == param_counts(m).total
    assert model.num_params() == param_counts(m).total
    assert sum(p.numel() for p in model.blocks[0].parameters()) == layer_params(m).total
    assert (model.final.head.weight is model.embed.wte.weight) == m.tied_embeddings


@pytest.mark.parametrize("preset", PRESETS)
def test_tensor_sizes_equal_planner(preset):
    """ZeRO-3 gathers and persists per tensor: the planner's per-tensor sizes are the model's
    (a mixture-of-experts preset's: its MoE block's)."""
    m = ModelSpec(preset=preset)
    with torch.device("meta"):
        block = Block(m, moe=m.moe_layers > 0)
    assert sorted(p.numel() for p in block.parameters()) == sorted(layer_tensor_sizes(m, tp=1))


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_param_count_equals_planner(name):
    m = tiny(name)
    assert GPT(m).num_params() == param_counts(m).total


# -------------------------------------------------------------------------- forward / backward

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_backward(name, dtype):
    m = tiny(name)
    torch.manual_seed(0)
    model = GPT(m).to(dtype)
    x, y = batch(m)
    logits = model(x)
    assert logits.shape == (3, m.seq_len, m.vocab_size) and logits.dtype == dtype
    loss = model(x, y)
    assert loss.dtype == (torch.float32 if m.loss_dtype == "fp32" else dtype)
    loss.backward()
    for name_, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name_
        assert p.grad.abs().sum() > 0, name_


@pytest.mark.parametrize("name", sorted(TINY))
def test_loss_at_init_is_uniform(name):
    """GPT-2 init gives near-uniform predictions: loss ~ ln V."""
    m = tiny(name, vocab_size=512)
    torch.manual_seed(0)
    loss = GPT(m)(*batch(m))
    assert abs(loss.item() - math.log(m.vocab_size)) < 0.05


def test_residual_projections_are_scaled():
    """nanoGPT/GPT-2: c_proj weights ~ N(0, 0.02/sqrt(2L)); the rest N(0, 0.02)."""
    m = ModelSpec(arch="llama", n_layers=8, d_model=256, n_heads=4, d_ff=512, vocab_size=256,
                  seq_len=8)
    torch.manual_seed(0)
    block = GPT(m).blocks[0]
    scaled = 0.02 / math.sqrt(2 * m.n_layers)
    assert block.attn.proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert block.mlp.w2.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)


# ------------------------------------------------------------------- reference equivalences

@pytest.mark.parametrize("name", sorted(TINY))
def test_flash_and_eager_attention_agree(name):
    m = tiny(name)
    torch.manual_seed(0)
    flash = GPT(m.model_copy(update={"attention": "flash"}))
    eager = GPT(m.model_copy(update={"attention": "eager"}))
    eager.load_state_dict(flash.state_dict())
    x, y = batch(m)
    lf, le = flash(x, y), eager(x, y)
    assert lf.item() == pytest.approx(le.item(), abs=1e-5)
    lf.backward()
    le.backward()
    gf, ge = flash.blocks[0].attn.qkv.weight.grad, eager.blocks[0].attn.qkv.weight.grad
    torch.testing.assert_close(gf, ge, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attention", ["flash", "eager"])
def test_gqa_equals_mha_with_repeated_kv_heads(attention):
    """A GQA model is an MHA model whose k/v heads are copies, each shared by a query group."""
    gqa_spec = tiny("llama-gqa", attention=attention)
    mha_spec = gqa_spec.model_copy(update={"n_kv_heads": gqa_spec.n_heads})
    torch.manual_seed(0)
    gqa, mha = GPT(gqa_spec), GPT(mha_spec)
    state = gqa.state_dict()
    hd, groups = gqa_spec.head_dim, gqa_spec.n_heads // gqa_spec.n_kv_heads
    for i in range(gqa_spec.n_layers):
        key = f"blocks.{i}.attn.qkv.weight"
        q, k, v = state[key].split([gqa_spec.d_model, gqa_spec.kv_dim, gqa_spec.kv_dim])
        rep = [t.view(gqa_spec.n_kv_heads, hd, -1).repeat_interleave(groups, 0).flatten(0, 1)
               for t in (k, v)]
        state[key] = torch.cat([q, *rep])
    mha.load_state_dict(state)
    x, _ = batch(gqa_spec)
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(TINY))
def test_pipeline_layers_chain_equals_forward(name):
    m = tiny(name)
    torch.manual_seed(0)
    model = GPT(m)
    x, y = batch(m)
    h = x
    layers = model.pipeline_layers()
    assert len(layers) == m.n_layers + 2
    for layer in layers:
        h = layer(h)
    torch.testing.assert_close(h, model(x), atol=0, rtol=0)
    assert causal_lm_loss(h, y, m.loss_dtype).item() == model(x, y).item()


def _column_shard(linear: nn.Linear, parts: list[int], rank: int, tp: int) -> nn.Linear:
    """Rank's slice of every fused part of a column-parallel linear (Megatron-LM)."""
    w = torch.cat([p.chunk(tp)[rank] for p in linear.weight.split(parts)])
    out = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None)
    out.weight.data.copy_(w)
    if linear.bias is not None:
        out.bias.data.copy_(torch.cat([p.chunk(tp)[rank] for p in linear.bias.split(parts)]))
    return out


def _row_shard(linear: nn.Linear, rank: int, tp: int) -> nn.Linear:
    """Row-parallel: the input dimension is split; the bias is added once (rank 0)."""
    w = linear.weight.chunk(tp, dim=1)[rank]
    out = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None)
    out.weight.data.copy_(w)
    if linear.bias is not None:
        out.bias.data.copy_(linear.bias if rank == 0 else torch.zeros_like(linear.bias))
    return out


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa"])
def test_sharded_block_equals_plain(name):
    """AutoTP-style sharding (column-parallel qkv / fc / w13 by fused part, row-parallel proj /
    fc2 / w2) summed over ranks reproduces the plain attention and MLP (picotron's check)."""
    m, tp = tiny(name), 2
    torch.manual_seed(0)
    block = GPT(m).blocks[0]
    x = torch.randn(2, m.seq_len, m.d_model)
    attn_sum, mlp_sum = 0, 0
    for rank in range(tp):
        shard = copy.deepcopy(block)
        shard.attn.qkv = _column_shard(block.attn.qkv, [m.d_model, m.kv_dim, m.kv_dim], rank, tp)
        shard.attn.proj = _row_shard(block.attn.proj, rank, tp)
        if hasattr(block.mlp, "w13"):
            shard.mlp.w13 = _column_shard(block.mlp.w13, [m.d_ff, m.d_ff], rank, tp)
            shard.mlp.w2 = _row_shard(block.mlp.w2, rank, tp)
        else:
            shard.mlp.fc = _column_shard(block.mlp.fc, [m.d_ff], rank, tp)
            shard.mlp.fc2 = _row_shard(block.mlp.fc2, rank, tp)
        attn_sum = attn_sum + shard.attn(x)
        mlp_sum = mlp_sum + shard.mlp(x)
    torch.testing.assert_close(attn_sum, block.attn(x), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mlp_sum, block.mlp(x), atol=1e-5, rtol=1e-4)


def test_rmsnorm_matches_torch():
    x = torch.randn(4, 8, 32)
    norm = RMSNorm(32)
    norm.weight.data.uniform_(0.5, 1.5)
    torch.testing.assert_close(norm(x), F.rms_norm(x, (32,), norm.weight, eps=1e-5))


def test_rope_matches_complex_rotation():
    """Rotating (even, odd) pairs equals multiplying them, as complex numbers, by e^{i t theta}
    (Su et al. 2021; Meta's Llama reference uses this complex form)."""
    B, H, T, hd = 2, 3, 10, 8
    q, k = torch.randn(B, H, T, hd), torch.randn(B, H, T, hd)
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    phase = torch.polar(torch.ones(T, hd // 2), torch.outer(torch.arange(T).float(), inv))

    def reference(t):
        pairs = torch.view_as_complex(t.reshape(B, H, T, hd // 2, 2))
        return torch.view_as_real(pairs * phase).flatten(-2)

    rq, rk = rope(q, k)
    torch.testing.assert_close(rq, reference(q))
    torch.testing.assert_close(rk, reference(k))


# ------------------------------------------------------------------------------------ sampling

def test_generate_shape_and_range():
    m = tiny("gpt2")
    torch.manual_seed(0)
    model = GPT(m).eval()
    prompt = torch.zeros(2, 3, dtype=torch.long)
    out = model.generate(prompt, max_new_tokens=m.seq_len + 4, temperature=0.8, top_k=5,
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3 + m.seq_len + 4)  # longer than the context: cropped, not an error
    assert torch.equal(out[:, :3], prompt)
    assert 0 <= out.min() and out.max() < m.vocab_size
    greedy = [model.generate(prompt, 5, temperature=0) for _ in range(2)]
    assert torch.equal(greedy[0], greedy[1])
    assert torch.equal(greedy[0][:, 3], model(prompt)[:, -1].argmax(-1))
