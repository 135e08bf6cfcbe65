"""Megatron-style tensor parallelism (executor/tensor_parallel.py) without a process group: every
parameter is either split by the SHARDING table or replicated on purpose, each rank's shard holds
exactly the planner's per-rank count (presets at full size, on the meta device), and the shards
of every rank merge back into the whole tensor."""
import pytest

torch = pytest.importorskip("torch")

from executor.model import GPT  # noqa: E402
from executor.tensor_parallel import (TPGroup, shard, shard_model, sharding_of,  # noqa: E402
                                      unshard, unshard_state)
from planner.model.shape import layer_params, param_counts  # noqa: E402
from planner.spec.spec import ModelSpec  # noqa: E402

#: replicated on every tp rank on purpose (planner/model/shape.py LayerParams.replicated and the
#: position table): norms, row-parallel biases, learned positions
REPLICATED = ("ln1.", "ln2.", "final.norm.", "attn.proj.bias", "mlp.fc2.bias", "mlp.w2.bias",
              "wpe.weight")


def model_spec(preset: str, **overrides) -> ModelSpec:
    return ModelSpec.model_validate({"preset": preset, **overrides})


@pytest.mark.parametrize("preset", ["gpt2-124m", "tinyllama-1.1b", "llama2-7b", "tiny-gpt"])
def test_every_parameter_is_split_or_replicated_on_purpose(preset):
    with torch.device("meta"):
        names = [n for n, _ in GPT(model_spec(preset, n_layers=1)).named_parameters()]
    for name in names:
        assert (sharding_of(name) is None) == any(r in name for r in REPLICATED), name


@pytest.mark.parametrize("preset,tp", [("llama2-7b", 8), ("tinyllama-1.1b", 4), ("gpt2-124m", 2),
                                       ("llama2-70b", 8)])
def test_a_rank_holds_the_planners_per_rank_count(preset, tp):
    """One block, the token table and the head of one tensor-parallel rank, at full size."""
    m = model_spec(preset, n_layers=1)
    if m.vocab_size % tp:
        m = model_spec(preset, n_layers=1, vocab_size=m.vocab_size - m.vocab_size % tp)
    with torch.device("meta"):
        model = shard_model(GPT(m), TPGroup(rank=tp - 1, size=tp))
    c = param_counts(m)
    assert sum(p.numel() for p in model.blocks[0].parameters()) == layer_params(m).per_rank(tp)
    assert model.embed.wte.weight.numel() == c.embedding // tp
    head = sum(p.numel() for p in model.final.parameters())
    assert head == c.final_norm + c.head // tp  # a tied head reads the table: no parameters
    assert sum(p.numel() for p in model.parameters()) == (
        layer_params(m).per_rank(tp) + c.embedding // tp + c.positions + c.final_norm
        + c.head // tp)


@pytest.mark.parametrize("kind,shape", [("qkv", (64 + 2 * 32, 64)), ("gate_up", (2 * 96, 64)),
                                        ("column", (96, 64)), ("row", (64, 96)),
                                        ("vocab", (512, 64))])
@pytest.mark.parametrize("tp", [2, 4])
def test_shards_merge_back(kind, shape, tp):
    m = ModelSpec.model_validate({"arch": "llama", "n_layers": 1, "d_model": 64, "n_heads": 4,
                                  "n_kv_heads": 2, "d_ff": 96, "vocab_size": 512,
                                  "seq_len": 16})
    full = torch.randn(shape)
    shards = [shard(full, kind, m, r, tp) for r in range(tp)]
    assert all(s.numel() == full.numel() // tp for s in shards)
    assert torch.equal(unshard(shards, kind, m), full)


def test_qkv_shard_keeps_whole_heads_of_each_part():
    """Rank r holds its query heads, then its key heads, then its value heads (GQA)."""
    m = ModelSpec.model_validate({"arch": "llama", "n_layers": 1, "d_model": 8, "n_heads": 4,
                                  "n_kv_heads": 2, "d_ff": 16, "vocab_size": 32, "seq_len": 4})
    rows = torch.arange(8 + 4 + 4).float().unsqueeze(1)  # q rows 0-7, k 8-11, v 12-15
    assert shard(rows, "qkv", m, 1, 2).squeeze(1).tolist() == [4, 5, 6, 7, 10, 11, 14, 15]


def test_state_of_every_rank_merges_into_the_plain_model():
    m = ModelSpec.model_validate({"preset": "tiny-llama", "n_layers": 2, "vocab_size": 64})
    torch.manual_seed(0)
    plain = GPT(m).state_dict()
    parts = []
    for rank in range(2):
        torch.manual_seed(0)
        parts.append(shard_model(GPT(m), TPGroup(rank=rank, size=2)).state_dict())
    merged = unshard_state(parts, m)
    assert set(merged) == {k for k in plain if not (m.tied_embeddings and k == "final.head.weight")}
    assert all(torch.equal(merged[k], plain[k]) for k in merged)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt"])
def test_a_rank_built_on_meta_holds_its_share_of_the_plain_model(preset):
    """The executor's path: the GPT on the meta device, sharded, then each parameter given this
    rank's slice of the plain model's value for its name (no rank builds the whole model)."""
    from executor.parallel import materialize, plain_values
    m = ModelSpec.model_validate({"preset": preset, "n_layers": 2})
    plain = GPT(m, seed=3).state_dict()
    with torch.device("meta"):
        model = GPT(m, seed=3)
    tp = TPGroup(rank=1, size=2)
    shard_model(model, tp)
    materialize(model, m, lambda name: name, tp, plain_values(m, 3, None))
    for name, p in model.named_parameters():
        kind = sharding_of(name)
        expected = shard(plain[name], kind, m, 1, 2) if kind else plain[name]
        assert not p.is_meta and torch.equal(p, expected), name
