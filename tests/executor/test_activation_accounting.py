"""The planner's activation model against what autograd really keeps for the executor's model:
every tensor saved for backward during a forward pass (torch.autograd.graph.saved_tensors_hooks),
parameters excluded, counted once per storage.  After RoPE, q is a fresh (B, H, T, hd) tensor and
the attention kernel returns its output in that layout, so the output projection's input is a
copy (e·s·b·h per block) kept beside the kernel's saved output: the planner counts it
(planner/model/activations.py), on CPU and GPU alike."""
import pytest

torch = pytest.importorskip("torch")

from executor.model import GPT  # noqa: E402
from planner.model import activations as act  # noqa: E402
from planner.plan.strategy import Plan  # noqa: E402
from planner.spec.spec import ModelSpec  # noqa: E402
from planner.spec.units import (AttentionKernel, Precision, Recompute,  # noqa: E402
                                ZeroStage)

MB = 2
DTYPES = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16}


def saved_for_backward(m: ModelSpec, dtype) -> int:
    torch.manual_seed(0)
    model = GPT(m).to(dtype)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randint(0, m.vocab_size, (MB, m.seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, torch.randint(0, m.vocab_size, (MB, m.seq_len)))
    return sum(storages.values())


def predicted(m: ModelSpec, precision: Precision) -> float:
    """Blocks, final norm and head input, ids and targets, and log-softmax's output (the part
    of the loss autograd keeps once forward is done)."""
    plan = Plan(1, 1, 1, ZeroStage.NONE, precision, MB, 1, Recompute.NONE)
    return (m.n_layers * act.block_saved_bytes(m, plan) + act.head_saved_bytes(m, plan)
            + act.loss_dtype_bytes(m, plan) * MB * m.seq_len * m.vocab_size)


CASES = {
    "gpt2": {"preset": "tiny-gpt"},
    "gpt2-eager": {"preset": "tiny-gpt", "attention": "eager"},
    "llama-gqa": {"preset": "tiny-llama"},
    "llama-mha": {"preset": "tiny-llama", "n_kv_heads": 4},
    "llama-eager-gqa": {"preset": "tiny-llama", "attention": "eager"},
    "llama-eager-mha": {"preset": "tiny-llama", "attention": "eager", "n_kv_heads": 4},
}


@pytest.mark.parametrize("precision", [Precision.BF16, Precision.FP32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("case", CASES)
def test_saved_activations_match_the_planner(case, precision):
    m = ModelSpec.model_validate(CASES[case])
    if precision is Precision.FP32 and m.n_kv_heads != m.n_heads:
        pytest.skip("fp32 GQA: CUDA falls back to SDPA's math path, the CPU does not")
    got = saved_for_backward(m, DTYPES[precision])
    assert predicted(m, precision) == pytest.approx(got, rel=0.01)


@pytest.fixture(scope="module")
def one_rank_group(tmp_path_factory):
    """A process group of this process alone: a tensor-parallel layer's all-reduce is then the
    identity, and rank 0 of a tp=2 split computes (and saves) exactly what it would beside its
    partner."""
    import torch.distributed as dist
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    store = dist.FileStore(str(tmp_path_factory.mktemp("pg") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


@pytest.mark.parametrize("case", ["gpt2", "gpt2-eager", "llama-gqa", "llama-eager-gqa"])
def test_a_tensor_parallel_block_saves_what_the_planner_counts(case, one_rank_group):
    """One Megatron-sharded block (tp = 2, rank 0) in bf16: what autograd keeps is the planner's
    block_saved_bytes for a tp = 2 plan, which reads the local widths from LocalDims."""
    from executor.model import Block
    from executor.tensor_parallel import TPGroup, shard_block
    m = ModelSpec.model_validate(CASES[case])
    tp = 2
    plan = Plan(1, tp, 1, ZeroStage.NONE, Precision.BF16, MB, 1, Recompute.NONE)
    torch.manual_seed(0)
    block = shard_block(Block(m), m, TPGroup(0, tp, one_rank_group)).to(torch.bfloat16)
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    storages = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(MB, m.seq_len, m.d_model, dtype=torch.bfloat16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x)
    # eager attention's masked_fill keeps the T x T boolean causal mask, which the planner does
    # not count (the same bytes with or without tensor parallelism; whole models absorb it)
    mask = m.seq_len ** 2 if m.attention is AttentionKernel.EAGER else 0
    got = sum(storages.values()) - mask
    assert act.block_saved_bytes(m, plan) == pytest.approx(got, rel=0.01)
