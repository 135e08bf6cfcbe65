"""The megatron backend (planner/backends/megatron/): Megatron-Core's gradient buffer and
distributed optimizer priced per Megatron-LM's own table, the interleaved schedule's in-flight
chunks, its rules, and the spec fields that select it."""
import pytest

from planner.backends.megatron import MEGATRON
from planner.errors import SpecError
from planner.estimate.memory import peak_memory
from planner.estimate.predict import estimate
from planner.model.shape import blocks_alive, stage_params, stages_to_check
from planner.plan.strategy import Plan
from planner.search.engine import search
from planner.spec.loading import spec_from_dict
from planner.spec.units import Offload, Precision, Recompute, ZeroStage

from ..conftest import invoke, llama7b_spec_file

MODEL = {"preset": "llama2-7b", "seq_len": 2048}


def spec(nodes=1, **runtime):
    return spec_from_dict({
        "model": MODEL, "cluster": {"gpu": "H100-SXM", "nodes": nodes, "gpus_per_node": 8},
        "training": {"tokens": 1e12, "global_batch_sequences": 512},
        "runtime": {"backend": "megatron", **runtime}})


def plan(dp=8, tp=1, pp=1, zero=ZeroStage.OPTIMIZER, ga=None, precision=Precision.BF16):
    return Plan(dp=dp, tp=tp, pp=pp, zero=zero, precision=precision, micro_batch=1,
                grad_accum=ga or 512 // dp, recompute=Recompute.FULL, offload=Offload.NONE)


def model_state_bytes_per_param(s, p):
    """Parameters, gradients, fp32 main parameters, Adam moments and the step's fp32 gradient
    shard at the optimizer-step moment, per parameter of the rank."""
    stage = stages_to_check(s.model, p.pp, p.grad_accum)[0]
    step = next(m for m, _ in MEGATRON.stage_moments(s, p, stage) if m.moment == "optimizer step")
    n = stage_params(s.model, stage, p.tp)
    return (step.parameters + step.gradients + step.master_weights + step.optimizer_states
            + step.optimizer_step) / n


@pytest.mark.parametrize("dp", [1, 8, 64])
def test_distributed_optimizer_bytes_per_parameter_are_megatrons_table(dp):
    """Megatron-LM docs/source/api-guide/dist_optimizer.md: bf16 parameters with fp32 gradients
    take 6 + 12/d bytes per parameter, 16-bit gradients 4 + 16/d (d the data-parallel size;
    without the distributed optimizer, d = 1: 18 and 20)."""
    nodes = max(1, dp // 8)
    p = plan(dp=dp, ga=512 // dp)
    assert model_state_bytes_per_param(spec(nodes), p) == pytest.approx(6 + 12 / dp)
    assert model_state_bytes_per_param(spec(nodes, grad_reduce_in_fp32=False), p) \
        == pytest.approx(4 + 16 / dp)
    fp16 = plan(dp=dp, ga=512 // dp, precision=Precision.FP16)  # fp16 gradients by default
    assert model_state_bytes_per_param(spec(nodes), fp16) == pytest.approx(4 + 16 / dp)
    assert model_state_bytes_per_param(spec(nodes, grad_reduce_in_fp32=True), fp16) \
        == pytest.approx(6 + 12 / dp)
    plain = plan(dp=dp, ga=512 // dp, zero=ZeroStage.NONE)
    assert model_state_bytes_per_param(spec(nodes), plain) == pytest.approx(18)
    assert model_state_bytes_per_param(spec(nodes, grad_reduce_in_fp32=False), plain) \
        == pytest.approx(20)


def test_the_gradient_buffer_is_counted_while_activations_are_alive():
    """The main_grad buffer exists from init, so the activation peak carries all of it: 4 bytes
    per parameter with fp32 gradients, 2 with bf16 ones."""
    p = plan()
    stage = stages_to_check(spec().model, 1, p.grad_accum)[0]
    fp32, bf16 = (next(m for m, _ in MEGATRON.stage_moments(spec(**rt), p, stage)
                       if m.moment == "backward through the loss")
                  for rt in ({}, {"grad_reduce_in_fp32": False}))
    n = stage_params(spec().model, stage, 1)
    assert fp32.activations > 0 and fp32.activations == bf16.activations
    assert fp32.gradients == pytest.approx(4 * n) and bf16.gradients == pytest.approx(2 * n)
    assert fp32.total - bf16.total == pytest.approx(2 * n)


@pytest.mark.parametrize("pp,v", [(4, 2), (8, 4), (8, 8)])
def test_interleaving_keeps_pp_v_plus_pp_minus_one_chunks_on_the_first_stage(pp, v):
    """Rank 0 runs 2(pp - 1) + (v - 1) pp warm-up chunk forwards before its first backward
    (Megatron-Core's interleaved schedule): pp v + pp - 1 chunks of L/(pp v) blocks alive, the
    factor 1 + (pp - 1)/(pp v) over 1F1B (Korthikanti et al. 2022).  The last stage holds
    (v - 1) pp + 1 chunks where 1F1B holds one micro-batch."""
    s1, sv = spec(nodes=4), spec(nodes=4, virtual_stages=v)
    p = plan(dp=32 // pp, pp=pp, ga=64)
    first, last = stages_to_check(s1.model, pp, p.grad_accum)
    plain = blocks_alive(first, p.pp, p.grad_accum, 1)
    assert blocks_alive(first, p.pp, p.grad_accum, v) == pytest.approx(
        plain * (1 + (pp - 1) / (pp * v)))
    assert blocks_alive(last, p.pp, p.grad_accum, v) == pytest.approx(
        ((v - 1) * pp + 1) * last.n_layers / v)
    assert peak_memory(sv, p).total > peak_memory(s1, p).total


def test_the_search_offers_megatrons_layouts_only_and_never_for_execute():
    result = search(spec(nodes=2))
    assert result.backend is MEGATRON and result.feasible
    assert all(e.plan.zero <= ZeroStage.OPTIMIZER and e.plan.offload is Offload.NONE
               for e in result.feasible)
    assert result.by_reason["megatron ZeRO stage"] > 0
    assert all("plan-only" in e.not_executable for e in result.feasible[:5])
    assert search(spec(nodes=2), executable=True).best is None


def test_megatron_prices_less_gradient_memory_than_deepspeeds_bf16_pipeline_optimizer():
    """DeepSpeed's BF16_Optimizer under pipeline parallelism keeps bf16 gradients beside its fp32
    buffer (6 bytes per parameter); Megatron-Core keeps the fp32 main_grad buffer alone (4)."""
    p = plan(dp=2, pp=4, ga=256)
    mega = estimate(spec(), p, with_time=False).memory
    data = {"model": MODEL, "cluster": {"gpu": "H100-SXM", "nodes": 1, "gpus_per_node": 8},
            "training": {"tokens": 1e12, "global_batch_sequences": 512}}
    deep = estimate(spec_from_dict(data), p, with_time=False).memory
    n = stage_params(spec().model, stages_to_check(spec().model, 4, 256)[0], 1)
    assert deep.gradients == pytest.approx(6 * n) and mega.gradients == pytest.approx(4 * n)


def test_the_host_runs_ahead_unless_the_spec_says_otherwise():
    assert spec().runtime.host_sync_fraction == 0.0
    assert spec(host_sync_fraction=0.5).runtime.host_sync_fraction == 0.5
    slow = estimate(spec(host_sync_fraction=1.0), plan()).time.step.total
    assert estimate(spec(), plan()).time.step.total < slow


def test_megatron_options_need_the_megatron_backend():
    base = {"model": MODEL, "cluster": {"gpu": "H100-SXM", "nodes": 1, "gpus_per_node": 8},
            "training": {"tokens": 1e12, "global_batch_sequences": 512}}
    with pytest.raises(SpecError, match="runtime.grad_reduce_in_fp32: a Megatron-Core option"):
        spec_from_dict({**base, "runtime": {"grad_reduce_in_fp32": False}})
    with pytest.raises(SpecError, match="runtime.cpu_checkpointing: DeepSpeed's"):
        spec_from_dict({**base, "runtime": {"backend": "megatron", "cpu_checkpointing": True}})


def test_execute_refuses_a_plan_only_backend_in_one_line(tmp_path):
    f = llama7b_spec_file(tmp_path / "mega.yaml", "{backend: megatron}")
    planned = invoke(f)
    assert planned.exit_code == 0 and "megatron" in planned.output
    result = invoke(f, "--execute", "--dry-run")
    assert result.exit_code == 1
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "runtime.backend megatron is plan-only" in err


def test_interleaving_needs_a_backend_that_has_it():
    """DeepSpeed's pipeline engine runs plain 1F1B: virtual_stages > 1 under it is refused, one
    line naming the field, rather than priced as a schedule DeepSpeed cannot run."""
    base = {"model": MODEL, "cluster": {"gpu": "H100-SXM", "nodes": 1, "gpus_per_node": 8},
            "training": {"tokens": 1e12, "global_batch_sequences": 512}}
    with pytest.raises(SpecError, match="runtime.virtual_stages: 2 interleaved chunks per stage, "
                                        "but DeepSpeed's pipeline engine runs plain 1F1B"):
        spec_from_dict({**base, "runtime": {"virtual_stages": 2}})
    assert spec(virtual_stages=2).runtime.virtual_stages == 2


def test_megatron_runs_transformer_engines_attention_unless_told_otherwise():
    """runtime.attention_kernel: te (Transformer Engine's DotProductAttention) is the megatron
    backend's default and prices attention at the GPU's attention_te_fwd/bwd; flash2 (the other
    backends' default) at attention_fwd/bwd; a written value wins either way."""
    from planner.estimate.timing import attention_seconds
    s = spec()
    eff = s.cluster.gpu.efficiency
    assert eff.attention_te_fwd != eff.attention_fwd  # the H100 catalog holds both
    te = attention_seconds(s, plan())
    flash2 = attention_seconds(spec(attention_kernel="flash2"), plan())
    assert te[0] / flash2[0] == pytest.approx(eff.attention_fwd / eff.attention_te_fwd)
    assert te[1] / flash2[1] == pytest.approx(eff.attention_bwd / eff.attention_te_bwd)
    ds = spec_from_dict({**_data(), "runtime": {}})
    assert attention_seconds(ds, plan()) == pytest.approx(flash2)
    assert attention_seconds(spec_from_dict({**_data(), "runtime": {"attention_kernel": "te"}}),
                             plan()) == pytest.approx(te)


def _data():
    return {"model": MODEL, "cluster": {"gpu": "H100-SXM", "nodes": 1, "gpus_per_node": 8},
            "training": {"tokens": 1e12, "global_batch_sequences": 512}}


def test_a_gpu_without_te_values_prices_both_kernels_alike():
    from planner.estimate.timing import attention_seconds
    data = {**_data(), "cluster": {"gpu": "A100-80GB-SXM", "nodes": 1, "gpus_per_node": 8}}
    te = spec_from_dict({**data, "runtime": {"attention_kernel": "te"}})
    assert te.cluster.gpu.efficiency.attention_te_fwd is None
    assert attention_seconds(te, plan()) == attention_seconds(spec_from_dict(data), plan())


def test_execute_refuses_transformer_engines_attention(tmp_path):
    """The executor runs PyTorch's SDPA: a spec that prices Transformer Engine's attention is
    refused by --execute in one line, and by DeepSpeed's executor rules for any plan."""
    from planner.backends.deepspeed import DEEPSPEED
    from planner.search.rules import check
    f = llama7b_spec_file(tmp_path / "te.yaml", "{attention_kernel: te}")
    out = invoke(f, "--execute", "--dry-run")
    assert out.exit_code == 1 and len(out.stderr.strip().splitlines()) == 1
    assert "runtime.attention_kernel te" in out.stderr
    te = spec_from_dict({**_data(), "runtime": {"attention_kernel": "te"}})
    p = plan(zero=ZeroStage.GRADIENTS)
    refused = check(te, p, DEEPSPEED, executable=True)
    assert refused is not None and "runtime.attention_kernel te" in refused.reason
    assert check(te, p, DEEPSPEED, executable=False) is None
    assert check(spec_from_dict(_data()), p, DEEPSPEED, executable=True) is None
