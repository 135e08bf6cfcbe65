"""The fsdp backend (planner/backends/fsdp/): FSDP2's sharded state, its unsharded blocks and root
group, and, under a pipeline, the stage kept unsharded with its gradients accumulated unsharded;
checked by hand and against torchtitan's measured peaks."""
import pytest

from planner.backends.fsdp import FSDP
from planner.estimate.memory import peak_memory
from planner.model.shape import layer_params, stage_params, stages_to_check
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
        "runtime": {"backend": "fsdp", **runtime}})


def plan(dp=8, pp=1, ga=None):
    return Plan(dp=dp, tp=1, pp=pp, zero=ZeroStage.PARAMETERS, precision=Precision.BF16,
                micro_batch=1, grad_accum=ga or 512 // dp, recompute=Recompute.FULL,
                offload=Offload.NONE)


def moment(s, p, name, stage_index=0):
    stage = stages_to_check(s.model, p.pp, p.grad_accum)[stage_index]
    return stage, next(m for m, _ in FSDP.stage_moments(s, p, stage) if m.moment == name)


@pytest.mark.parametrize("dp", [8, 64])
def test_the_sharded_state_is_16_bytes_per_parameter_over_d(dp):
    """fp32 parameter shards (no separate master copy), fp32 gradient shards and AdamW's two fp32
    moments: 16/d bytes per parameter; the foreach step adds a 4/d temporary."""
    s, p = spec(nodes=dp // 8), plan(dp=dp)
    stage, step = moment(s, p, "optimizer step")
    n = stage_params(s.model, stage, 1)
    assert (step.master_weights + step.optimizer_states + step.gradients) / n \
        == pytest.approx(16 / dp)
    assert step.optimizer_step / n == pytest.approx(4 / dp)


def test_without_a_pipeline_two_blocks_and_the_root_group_are_unsharded():
    s, p = spec(), plan()
    stage, back = moment(s, p, "backward through the last block")
    n, block = stage_params(s.model, stage, 1), layer_params(s.model).per_rank(1)
    root = n - stage.n_layers * block
    assert back.parameters == pytest.approx(2 * (2 * block + root))
    # fp32 shards, the block's bf16 gradients and fp32 reduce-scatter input, the root's bf16 grads
    assert back.gradients == pytest.approx(4 * n / 8 + 2 * block + 4 * block + 2 * root)


def test_under_a_pipeline_the_stage_stays_unsharded_and_its_gradients_accumulate():
    """torchtitan keeps a pipeline stage's parameters unsharded (bf16) all step, and the stage
    turns gradient sync off until its last backward: fp32 unsharded accumulation."""
    s, p = spec(nodes=4), plan(dp=8, pp=4, ga=64)
    stage, back = moment(s, p, "backward through the last block")
    n, block = stage_params(s.model, stage, 1), layer_params(s.model).per_rank(1)
    assert back.parameters == pytest.approx(2 * n)
    assert back.gradients == pytest.approx(4 * n / 8 + 4 * n + 2 * block)
    flat = peak_memory(spec(nodes=4), plan(dp=32, ga=16))
    assert peak_memory(s, p).total > flat.total


def test_torchtitans_405b_pipeline_runs_measured_peak_is_predicted():
    """torchtitan's Llama 3.1 405B on 512 H100s (fsdp x tp8 x pp8, bench/data/published_fp8_cp
    .yaml): measured max reserved 75-85 GiB.  Priced with DeepSpeed ZeRO-3's buffers the planner
    said 42 GiB (-44 to -50 %); FSDP's unsharded stage and gradients bring every row within 11 %
    (-10 % to +1 %)."""
    import sys

    import yaml

    from planner.estimate.predict import estimate
    from planner.spec.units import GiB
    from tests.conftest import ROOT
    sys.path.insert(0, str(ROOT / "bench"))
    import published_fp8_cp as pub
    errors, before = [], []
    for row in yaml.safe_load(pub.DATA.read_text())["rows"]:
        if not row["id"].startswith("tt2412-l31_405b") or "peak_mem_gib" not in row["measured"]:
            continue
        try:
            data, p, _ = pub.build(row)
        except pub.Skip:
            continue
        measured = row["measured"]["peak_mem_gib"]
        assert data["runtime"]["backend"] == "fsdp"
        errors.append(estimate(spec_from_dict(data), p, with_time=False).reserved_bytes / GiB
                      / measured - 1)
        data["runtime"] = {k: v for k, v in data["runtime"].items()
                           if k not in ("backend", "fsdp_version")}
        data["runtime"]["zero3_gather_granularity"] = "block"
        before.append(estimate(spec_from_dict(data), p, with_time=False).reserved_bytes / GiB
                      / measured - 1)
    assert len(errors) == 5
    assert max(abs(e) for e in errors) <= 0.11, errors
    assert max(before) < -0.40, before


def test_the_search_offers_fsdps_layouts_only_and_never_for_execute(tmp_path):
    result = search(spec(nodes=2))
    assert result.backend is FSDP and result.feasible
    assert all(e.plan.zero == ZeroStage.PARAMETERS and e.plan.offload is Offload.NONE
               for e in result.feasible)
    assert spec().runtime.zero3_gather_granularity == "block"
    assert spec().runtime.host_sync_fraction == 0.8
    f = llama7b_spec_file(tmp_path / "fsdp.yaml", "{backend: fsdp}")
    out = invoke(f, "--execute", "--dry-run")
    assert out.exit_code == 1 and "runtime.backend fsdp is plan-only" in out.stderr


def test_fused_loss_follows_fused_kernels_unless_written():
    from planner.model import activations as act
    base = {"model": {**MODEL, "fused_kernels": True},
            "cluster": {"gpu": "H100-SXM", "nodes": 1, "gpus_per_node": 8},
            "training": {"tokens": 1e12, "global_batch_sequences": 512}}
    fused = spec_from_dict(base).model
    eager = spec_from_dict({**base, "model": {**base["model"], "fused_loss": False}}).model
    assert fused.loss_fused and not eager.loss_fused and eager.fused_kernels
    p = plan()
    # eager: the bf16 logits, their fp32 copy and log-softmax's fp32 output; fused: the logits
    assert act.logits_forward_peak_bytes(eager, p) == pytest.approx(
        5 * act.logits_forward_peak_bytes(fused, p))


def test_torchtitans_compiled_runs_of_2024_are_priced_with_their_eager_loss():
    """torchtitan (Dec 2024) compiled each block and left the loss eager: its compile rows
    without tensor or pipeline parallelism (8B at 8k-262k tokens) are within 10 % of their
    measured peak; priced with a fused loss they were 16-42 % under.  (The 70B tp8 rows, -15 %
    and -20 %, are a class still off.)"""
    import sys

    import yaml

    from planner.estimate.predict import estimate
    from planner.spec.units import GiB
    from tests.conftest import ROOT
    sys.path.insert(0, str(ROOT / "bench"))
    import published_fp8_cp as pub
    errors, fused = [], []
    for row in yaml.safe_load(pub.DATA.read_text())["rows"]:
        if row["source"] != "torchtitan-2412" or not row["parallel"].get("torch_compile") \
                or "peak_mem_gib" not in row["measured"] or row["parallel"].get("pp", 1) > 1 \
                or row["parallel"].get("tp", 1) > 1:
            continue
        data, p, _ = pub.build(row)
        measured = row["measured"]["peak_mem_gib"]
        assert data["model"]["fused_loss"] is False
        errors.append(estimate(spec_from_dict(data), p, with_time=False).reserved_bytes / GiB
                      / measured - 1)
        data["model"].pop("fused_loss")
        fused.append(estimate(spec_from_dict(data), p, with_time=False).reserved_bytes / GiB
                     / measured - 1)
    assert len(errors) >= 8
    assert max(abs(e) for e in errors) <= 0.10, errors
    assert max(fused) < -0.15, fused


def test_fsdp1_hooks_run_per_wrapped_unit_and_fsdp2_per_parameter():
    """FSDP1's flat parameter: one fetch/release per block plus the root, per pass; FSDP2's
    per-parameter DTensors: one per parameter tensor; both at runtime.zero3_module_us."""
    from planner.backends.fsdp.timing import host_us_per_micro_batch
    from planner.model.shape import tensor_stats
    p = plan()
    stage = stages_to_check(spec().model, 1, p.grad_accum)[0]
    us = spec().runtime.zero3_module_us
    one = host_us_per_micro_batch(spec(fsdp_version=1), p, stage)
    two = host_us_per_micro_batch(spec(fsdp_version=2), p, stage)
    assert one == (stage.n_layers + 2) * 2 * us
    assert two == tensor_stats(spec().model, stage, 1, 0).count * 2 * us
    assert host_us_per_micro_batch(spec(), p, stage) == two  # unwritten: FSDP2
    assert one < two


def test_fsdp_version_belongs_to_the_fsdp_backend():
    from planner.errors import SpecError
    with pytest.raises(SpecError, match="fsdp_version"):
        spec_from_dict({
            "model": MODEL, "cluster": {"gpu": "H100-SXM", "nodes": 1, "gpus_per_node": 8},
            "training": {"tokens": 1e12, "global_batch_sequences": 512},
            "runtime": {"backend": "deepspeed", "fsdp_version": 1}})


def test_published_fsdp_runs_take_the_api_they_state():
    from pathlib import Path

    from planner.validate.published import load_published
    path = Path(__file__).resolve().parents[1] / "data/published_runs_sample.yaml"
    versions = {r.id: r.spec.runtime.fsdp_version for r in load_published(path)
                if r.spec.runtime.backend == "fsdp"}
    assert versions["torchtitan-a100-llama-2-70b-lbs2-ac-full"] == 2  # FSDP2 (fully_shard)
    assert versions["llmfoundry-mpt7b-h100-bf16-s2048-g8"] == 1  # FULL_SHARD
    assert versions["tinyllama-1.1b-16xa100-40gb"] == 1
