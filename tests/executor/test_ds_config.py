"""Plan -> DeepSpeed config: every strategy the planner can emit is accepted by DeepSpeed's own
config parser (deepspeed.runtime.config.DeepSpeedConfig, 0.19.8), and what DeepSpeed reads back
is the plan."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
torch = pytest.importorskip("torch")
deepspeed = pytest.importorskip("deepspeed")

import deepspeed.runtime.config as ds_config_module  # noqa: E402
from deepspeed.runtime import constants as ds_constants  # noqa: E402
from deepspeed.runtime import lr_schedules  # noqa: E402
from deepspeed.runtime.activation_checkpointing.config import ACT_CHKPT  # noqa: E402
from deepspeed.runtime.zero.config import ZERO_OPTIMIZATION  # noqa: E402

from executor.ds_config import (LRSchedule, default_lr_schedule, default_peak_lr,  # noqa: E402
                                to_deepspeed_config)
from executor.errors import ExecutorError  # noqa: E402
from planner.plan.strategy import Plan  # noqa: E402
from planner.search.engine import candidates  # noqa: E402
from planner.search.rules import check  # noqa: E402
from planner.spec.loading import load_spec, spec_from_dict  # noqa: E402
from planner.spec.units import Offload, Optimizer, Precision, Recompute, ZeroStage  # noqa: E402

LAB_GPU = {"name": "lab", "memory_gib": 8, "peak_tflops": {"fp32": 1, "fp16": 2, "bf16": 2},
           "hbm_gbps": 100, "intra_node_gbps": 10}
#: top-level keys DeepSpeed reads (its constants; pipeline and tensor_parallel are parsed by name)
KNOWN_TOP_LEVEL = ({v for k, v in vars(ds_constants).items() if k.isupper() and isinstance(v, str)}
                   | {ZERO_OPTIMIZATION, ACT_CHKPT, "pipeline", "tensor_parallel"})


def lab_spec(model="tiny-llama", optimizer="adamw", **runtime):
    """Every search axis 'auto' (offload and sequence parallelism too), on two nodes of four, with
    every precision listed: 'auto' picks only the best one the GPU supports.  Eager attention so
    that 'auto' recompute includes selective."""
    return spec_from_dict({
        "model": {"preset": model, "attention": "eager"},
        "cluster": {"gpu": LAB_GPU, "nodes": 2, "gpus_per_node": 4},
        "training": {"tokens": 1e6, "global_batch_sequences": 16, "optimizer": optimizer},
        "search": {"dp": "auto", "tp": "auto", "pp": "auto", "zero": "auto", "micro_batch": "auto",
                   "recompute": "auto", "precision": ["fp32", "fp16", "bf16"], "offload": "auto",
                   "sequence_parallel": "auto"},
        "runtime": runtime})


def emitted(spec):
    return [p for p in candidates(spec) if check(spec, p) is None]


def parse(cfg: dict, plan: Plan, monkeypatch) -> "ds_config_module.DeepSpeedConfig":
    """DeepSpeedConfig as deepspeed.initialize builds it, without a process group: with a
    pipeline or tensor parallelism the engine gets the plan's grid as mpu (its data-parallel size
    is dp); otherwise the parser counts every process, which is dp."""
    fake_dist = SimpleNamespace(get_rank=lambda: 0, get_world_size=lambda group=None: plan.world_size)
    monkeypatch.setattr(ds_config_module, "dist", fake_dist)
    grid = plan.pp > 1 or plan.tp > 1  # the executor passes its process grid (executor/parallel.py)
    mpu = SimpleNamespace(get_data_parallel_world_size=lambda: plan.dp) if grid else None
    return ds_config_module.DeepSpeedConfig(cfg, mpu=mpu)


def device(offload) -> "str | None":
    if offload is None:
        return None
    return getattr(offload.device, "value", offload.device)  # DeepSpeed stores enum values


def check_round_trip(spec, plan, cfg, ds) -> None:
    assert set(cfg) <= KNOWN_TOP_LEVEL, set(cfg) - KNOWN_TOP_LEVEL
    assert ds.train_micro_batch_size_per_gpu == plan.micro_batch
    assert ds.gradient_accumulation_steps == plan.grad_accum
    # the executor hands DeepSpeed the plan's grid whenever tp or pp > 1: its batch check counts
    # the data-parallel ranks, and one step consumes the spec's global batch
    assert ds.train_batch_size == spec.global_batch_sequences
    assert ds.zero_optimization_stage == int(plan.zero)
    assert ds.bfloat16_config.enabled == (plan.precision is Precision.BF16)
    assert ds.float16_config.enabled == (plan.precision is Precision.FP16)
    if plan.precision is Precision.FP16:
        assert ds.float16_config.loss_scale == 0  # dynamic loss scaling
    assert ds.gradient_clipping == spec.training.gradient_clipping
    want = {Offload.NONE: None, Offload.OPTIMIZER_CPU: "cpu", Offload.PARAMS_CPU: "cpu",
            Offload.OPTIMIZER_NVME: "nvme", Offload.PARAMS_NVME: "nvme"}[plan.offload]
    assert device(ds.zero_config.offload_optimizer) == want
    assert device(ds.zero_config.offload_param) == (want if plan.offload.params_off_gpu else None)
    assert ds.tensor_parallel_config.autotp_size == 0  # Megatron-style tp, not AutoTP
    if plan.pp > 1:
        assert ds.pipeline["stages"] == plan.pp
        assert ds.pipeline["activation_checkpoint_interval"] == int(plan.recompute is Recompute.FULL)
    # the optimizer and scheduler sections are read only at engine start: build them here
    weights = [torch.nn.Parameter(torch.zeros(2))]
    params = dict(ds.optimizer_params)
    torch_cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "SGD": torch.optim.SGD}
    params.pop("torch_adam", None)
    params.pop("adam_w_mode", None)
    optimizer = torch_cls[ds.optimizer_name](weights, **params)
    getattr(lr_schedules, ds.scheduler_name)(optimizer, **ds.scheduler_params)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt"])
def test_every_emitted_plan_parses(model, monkeypatch):
    spec = lab_spec(model)
    plans = emitted(spec)
    axes = {"tp": {p.tp for p in plans}, "pp": {p.pp for p in plans},
            "zero": {p.zero for p in plans}, "offload": {p.offload for p in plans},
            "recompute": {p.recompute for p in plans},
            "precision": {p.precision for p in plans}}
    assert axes["pp"] >= {1, 2, 4} and axes["tp"] >= {1, 2}
    assert axes["zero"] == set(ZeroStage) and axes["offload"] == set(Offload)
    # fp8 and per-op recompute are not on the lab spec's axes ('auto' recompute never tries op)
    assert axes["recompute"] == set(Recompute) - {Recompute.OP}
    assert axes["precision"] == set(Precision) - {Precision.FP8}
    for plan in plans:
        cfg = to_deepspeed_config(spec, plan, nvme_path="/tmp/nvme")
        check_round_trip(spec, plan, cfg, parse(cfg, plan, monkeypatch))


@pytest.mark.parametrize("optimizer,runtime", [
    ("adam", {}), ("sgd", {}), ("adamw", {"torch_adam": True}),
    ("adamw", {"overlap_comm": True}), ("adamw", {"overlap_comm": False}),
], ids=["adam", "sgd", "torch-adam", "overlap-on", "overlap-off"])
def test_optimizer_and_runtime_variants_parse(optimizer, runtime, monkeypatch):
    spec = lab_spec(optimizer=optimizer, **runtime)
    plans = emitted(spec)
    # one plan per (zero, offload, tp, pp) is enough here: batch shapes were covered above
    seen = {}
    for p in plans:
        seen.setdefault((p.zero, p.offload, p.tp, p.pp, p.precision), p)
    for plan in seen.values():
        cfg = to_deepspeed_config(spec, plan, nvme_path="/tmp/nvme")
        ds = parse(cfg, plan, monkeypatch)
        check_round_trip(spec, plan, cfg, ds)
        if optimizer == "adam":
            assert ds.optimizer_params["adam_w_mode"] is False  # "Adam" means AdamW otherwise
        if optimizer == "sgd" and plan.zero > 0:
            assert ds.zero_allow_untested_optimizer
        assert ds.optimizer_params.get("torch_adam", False) == spec.runtime.torch_adam
        if "overlap_comm" in runtime:
            assert ds.zero_config.overlap_comm is runtime["overlap_comm"]


def test_runtime_buckets_reach_zero_config(monkeypatch):
    spec = lab_spec(reduce_bucket_size=12345, allgather_bucket_size=23456,
                    stage3_prefetch_bucket_size=3456, stage3_max_live_parameters=4567,
                    stage3_param_persistence_threshold=567, stage3_max_reuse_distance=678,
                    sub_group_size=789, contiguous_gradients=False)
    plan = Plan(8, 1, 1, ZeroStage.PARAMETERS, Precision.BF16, 2, 1, Recompute.NONE)
    z = parse(to_deepspeed_config(spec, plan), plan, monkeypatch).zero_config
    assert (z.reduce_bucket_size, z.allgather_bucket_size, z.prefetch_bucket_size,
            z.max_live_parameters, z.param_persistence_threshold, z.max_reuse_distance,
            z.sub_group_size, z.contiguous_gradients) == (12345, 23456, 3456, 4567, 567, 678,
                                                          789, False)


def test_nvme_offload_needs_a_path():
    spec = lab_spec()
    plan = Plan(8, 1, 1, ZeroStage.PARAMETERS, Precision.BF16, 2, 1, Recompute.NONE,
                Offload.PARAMS_NVME)
    with pytest.raises(ExecutorError, match="NVMe directory"):
        to_deepspeed_config(spec, plan)


def test_schedule_defaults():
    """GPT-3 table 2.1 learning rates; steps = tokens / tokens per step; DeepSpeed's scheduler
    with the emitted parameters warms up to the peak and ends at min_lr_ratio of it."""
    from planner.spec.spec import ModelSpec
    assert default_peak_lr(ModelSpec.model_validate({"preset": "gpt2-124m"})) == 6e-4
    assert default_peak_lr(ModelSpec.model_validate({"preset": "tinyllama-1.1b"})) == 2e-4
    spec = load_spec("specs/tiny_cpu.yaml")
    plan = Plan(2, 1, 1, ZeroStage.GRADIENTS, Precision.FP32, 16, 1, Recompute.NONE)
    lr = default_lr_schedule(spec, plan)
    assert lr.total_steps == 489  # ceil(2e6 / (2 * 16 * 128))
    cfg = to_deepspeed_config(spec, plan, lr_schedule=lr)
    weights = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW(weights, lr=cfg["optimizer"]["params"]["lr"])
    sched = lr_schedules.WarmupCosineLR(opt, **cfg["scheduler"]["params"])
    lrs = []
    for _ in range(lr.total_steps):
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(lr.peak_lr, rel=1e-4)  # cosine starts one step past it
    assert lrs[-1] == pytest.approx(lr.peak_lr * lr.min_lr_ratio)
    linear = LRSchedule(peak_lr=1e-3, warmup_steps=2, total_steps=10, decay="linear")
    assert to_deepspeed_config(spec, plan, lr_schedule=linear)["scheduler"]["type"] == "WarmupDecayLR"


def test_sgd_optimizer_section():
    spec = lab_spec(optimizer="sgd")
    plan = Plan(8, 1, 1, ZeroStage.OPTIMIZER, Precision.BF16, 2, 1, Recompute.NONE)
    cfg = to_deepspeed_config(spec, plan)
    assert spec.training.optimizer is Optimizer.SGD
    assert cfg["optimizer"]["type"] == "SGD" and "betas" not in cfg["optimizer"]["params"]
