"""Plan -> DeepSpeed config: the one place DeepSpeed keys are written.

Keys and their meaning follow DeepSpeed 0.19.8 (deepspeed/runtime/config.py, zero/config.py,
zero/offload_config.py, precision_config.py, lr_schedules.py, pipe/engine.py,
tensor_parallel/config.py).  Nothing here imports torch or DeepSpeed, so ``--dry-run`` and the
tests can build every config the planner emits without a process group.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Optional

from planner.model.flops import tokens_per_step as planned_tokens_per_step
from planner.model.shape import param_counts
from planner.plan.strategy import Plan
from planner.spec.spec import ModelSpec, Spec
from planner.spec.units import Offload, Optimizer, Precision, Recompute, ZeroStage

from .errors import ExecutorError

#: DeepSpeed prints a line every ``steps_per_print`` steps; the executor reports progress itself.
QUIET_STEPS_PER_PRINT = 2**30

#: (parameters, peak learning rate): Brown et al. 2020 (GPT-3), table 2.1; the first row is
#: nanoGPT's "baby GPT" (config/train_shakespeare_char.py: 1e-3 for a 10M model).
LR_BY_PARAMS: tuple[tuple[float, float], ...] = (
    (10e6, 1e-3), (125e6, 6e-4), (350e6, 3e-4), (760e6, 2.5e-4), (1.3e9, 2e-4),
    (2.7e9, 1.6e-4), (6.7e9, 1.2e-4), (13e9, 1e-4), (175e9, 0.6e-4),
)
WARMUP_FRACTION = 0.02  #: of all steps (Chinchilla and GPT-3 warm up over ~0.1-1 % of tokens)
MAX_WARMUP_STEPS = 2000  #: nanoGPT's warmup_iters for GPT-2 124M


@dataclass(frozen=True)
class LRSchedule:
    """Optimizer hyper-parameters the spec does not carry (the executor's defaults or flags)."""

    peak_lr: float
    warmup_steps: int
    total_steps: int  #: optimizer steps of the whole run (the schedule's length)
    min_lr_ratio: float = 0.1  #: final lr / peak lr (nanoGPT: min_lr = lr / 10, per Chinchilla)
    decay: Literal["cosine", "linear"] = "cosine"
    weight_decay: float = 0.1  #: GPT-3, section 2.3 / appendix B
    beta1: float = 0.9
    beta2: float = 0.95  #: GPT-3 appendix B
    eps: float = 1e-8
    momentum: float = 0.9  #: SGD only

    def as_dict(self) -> dict:
        return asdict(self)


def training_tokens(spec: Spec) -> float:
    """The planner's count ('chinchilla' resolved by the spec's scaling law)."""
    from planner.capacity.scaling import training_tokens as planned_tokens
    tokens = planned_tokens(spec)
    if tokens is None:
        raise ExecutorError("training.budget: a budget-mode spec has no token count yet; execute "
                           "the spec the budget search resolved (its model and tokens)")
    return tokens


def tokens_per_step(spec: Spec, plan: Plan) -> int:
    """Tokens one optimizer step consumes (the planner's count: planner/model/flops.py)."""
    return planned_tokens_per_step(spec.model, spec.global_batch_sequences)


def default_peak_lr(m: ModelSpec) -> float:
    """The learning rate of the published model closest in size (log scale)."""
    n = float(param_counts(m).total)
    return min(LR_BY_PARAMS, key=lambda row: abs(math.log(row[0] / n)))[1]


def default_lr_schedule(spec: Spec, plan: Plan, **overrides: Any) -> LRSchedule:
    total = max(1, math.ceil(training_tokens(spec) / tokens_per_step(spec, plan)))
    values = dict(peak_lr=default_peak_lr(spec.model), total_steps=total,
                  warmup_steps=max(1, min(MAX_WARMUP_STEPS, round(WARMUP_FRACTION * total))))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return LRSchedule(**values)


# ----------------------------------------------------------------------------------- sections

def batch_section(plan: Plan) -> dict:
    return {
        # DeepSpeed multiplies by its data-parallel size: dp, since a pipeline or tensor
        # parallelism hands it the plan's process grid, and context parallelism its Ulysses
        # groups, for which it counts world / cp (DeepSpeedConfig._batch_assertion)
        "train_batch_size": plan.micro_batch * plan.grad_accum * plan.dp,
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.grad_accum,
    }


def offload_section(plan: Plan, nvme_path: Optional[str]) -> dict:
    """ZeRO-Offload (cpu) and ZeRO-Infinity (nvme): offload_config.py."""
    if plan.offload is Offload.NONE:
        return {}
    if plan.offload.uses_nvme and not nvme_path:
        raise ExecutorError(f"offload {plan.offload.value} needs an NVMe directory (--nvme-path)")
    device = "nvme" if plan.offload.uses_nvme else "cpu"
    target = {"device": device, **({"nvme_path": str(nvme_path)} if device == "nvme" else {})}
    out = {"offload_optimizer": dict(target)}
    if plan.offload.params_off_gpu:
        out["offload_param"] = dict(target)
    return out


def zero_section(spec: Spec, plan: Plan, nvme_path: Optional[str]) -> dict:
    rt = spec.runtime
    zero: dict[str, Any] = {
        "stage": int(plan.zero),
        "contiguous_gradients": rt.contiguous_gradients,
        "reduce_bucket_size": rt.reduce_bucket_size,
        "allgather_bucket_size": rt.allgather_bucket_size,
    }
    if rt.overlap_comm is not None:  # None keeps DeepSpeed's stage-dependent default
        zero["overlap_comm"] = rt.overlap_comm
    if plan.zero == ZeroStage.PARAMETERS and plan.cp > 1:
        # DeepSpeed's default, pinned: every ZeRO-3 bucket then reduces by reduce-scatter,
        # which averages over dp x cp ranks (executor/context_parallel.py loss_share)
        zero["reduce_scatter"] = True
    if plan.zero == ZeroStage.PARAMETERS:
        zero.update({
            "stage3_prefetch_bucket_size": rt.stage3_prefetch_bucket_size,
            "stage3_max_live_parameters": rt.stage3_max_live_parameters,
            "stage3_max_reuse_distance": rt.stage3_max_reuse_distance,
            "stage3_param_persistence_threshold": rt.stage3_param_persistence_threshold,
            "sub_group_size": rt.sub_group_size,
        })
    zero.update(offload_section(plan, nvme_path))
    return zero


def precision_section(plan: Plan) -> dict:
    """fp16 uses dynamic loss scaling: ``loss_scale: 0`` selects it (there is no 'dynamic' key);
    the scale starts at 2**initial_scale_power and halves on overflow (precision_config.py).
    fp8 is bf16 training whose block GEMMs torchao runs in fp8 (executor/fp8.py): the engine
    keeps bf16 weights and fp32 masters as for bf16."""
    if plan.precision in (Precision.BF16, Precision.FP8):
        return {"bf16": {"enabled": True}}
    if plan.precision is Precision.FP16:
        return {"fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 16,
                         "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}}
    return {}


def recompute_section(spec: Spec, plan: Plan) -> dict:
    """Full recompute: the non-pipeline model is wrapped block by block with a non-reentrant
    torch.utils.checkpoint (executor/parallel.py); the pipeline engine checkpoints every block
    itself (pipe/engine.py reads ``activation_checkpoint_interval`` and ``use_reentrant``).
    DeepSpeed's own checkpointing settings are written too, without partitioning (it needs a
    Megatron mpu) or CPU copies, so they describe what runs."""
    if plan.recompute is not Recompute.FULL:
        return {}
    return {"activation_checkpointing": {
        "partition_activations": False, "cpu_checkpointing": False,
        "contiguous_memory_optimization": False, "number_checkpoints": spec.model.n_layers,
        "synchronize_checkpoint_boundary": False, "profile": False}}


def pipeline_section(plan: Plan) -> dict:
    if plan.pp == 1:
        return {}
    full = plan.recompute is Recompute.FULL
    # with tensor parallelism the engine splits each stage-to-stage activation over the tp ranks,
    # which assumes the ranks hold the same tensor; under sequence parallelism each holds its
    # own slice of the sequence already, which it sends whole (pipe/engine.py pipe_partitioned)
    whole = not plan.sequence_parallel
    return {"pipeline": {"stages": plan.pp, "activation_checkpoint_interval": 1 if full else 0,
                         "use_reentrant": False, "pipe_partitioned": whole,
                         "grad_partitioned": whole}}


def context_parallel_section(plan: Plan) -> dict:
    """DeepSpeed-Ulysses: its groups reach the engine as an ``mpu`` (executor/
    context_parallel.py), not as config keys: ``sequence_parallel_size`` with
    ``data_parallel_size`` would make deepspeed.initialize build a (dp, sp) device mesh whose
    data-parallel group leaves the cp ranks out of ZeRO (deepspeed/__init__.py, utils/groups.py).
    What is written is the dtype of the gradient reductions over dp x cp, pinned at DeepSpeed's
    default (runtime/constants.py SEQ_PARALLEL_COMMUNICATION_DATA_TYPE; engine.py uses it for
    every reduction once the sequence-parallel size exceeds 1)."""
    if plan.cp == 1:
        return {}
    return {"seq_parallel_communication_data_type": "fp32"}


def optimizer_section(spec: Spec, plan: Plan, lr: LRSchedule) -> dict:
    """Adam(W): DeepSpeed picks FusedAdam, or DeepSpeedCPUAdam under offload, unless
    ``torch_adam`` asks for PyTorch's (engine.py get_optimizer_configuration).  "Adam" means AdamW
    unless ``adam_w_mode`` is false.  SGD is torch.optim.SGD, which ZeRO lists as untested."""
    kind = spec.training.optimizer
    if kind is Optimizer.SGD:
        return {"optimizer": {"type": "SGD", "params": {
            "lr": lr.peak_lr, "momentum": lr.momentum, "weight_decay": lr.weight_decay}},
            **({"zero_allow_untested_optimizer": True}
               if plan.zero >= ZeroStage.OPTIMIZER else {})}
    params: dict[str, Any] = {"lr": lr.peak_lr, "betas": [lr.beta1, lr.beta2], "eps": lr.eps,
                              "weight_decay": lr.weight_decay}
    if kind is Optimizer.ADAM:
        params["adam_w_mode"] = False
    if spec.runtime.torch_adam:
        params["torch_adam"] = True
    return {"optimizer": {"type": "AdamW" if kind is Optimizer.ADAMW else "Adam",
                          "params": params}}


def scheduler_section(lr: LRSchedule) -> dict:
    """Linear warmup from 0, then cosine (WarmupCosineLR) or linear (WarmupDecayLR) decay."""
    if lr.decay == "cosine":
        return {"scheduler": {"type": "WarmupCosineLR", "params": {
            "total_num_steps": lr.total_steps, "warmup_num_steps": lr.warmup_steps,
            "warmup_min_ratio": 0.0, "cos_min_ratio": lr.min_lr_ratio, "warmup_type": "linear"}}}
    return {"scheduler": {"type": "WarmupDecayLR", "params": {
        "total_num_steps": lr.total_steps, "warmup_num_steps": lr.warmup_steps,
        "warmup_min_lr": 0.0, "warmup_max_lr": lr.peak_lr, "warmup_type": "linear"}}}


def to_deepspeed_config(spec: Spec, plan: Plan, *, lr_schedule: Optional[LRSchedule] = None,
                        nvme_path: Optional[str] = None) -> dict:
    """The DeepSpeed config (a JSON-able dict) that realises ``plan`` for ``spec``."""
    lr = lr_schedule or default_lr_schedule(spec, plan)
    return {
        **batch_section(plan),
        "steps_per_print": QUIET_STEPS_PER_PRINT,
        "wall_clock_breakdown": False,
        "gradient_clipping": spec.training.gradient_clipping,
        "zero_optimization": zero_section(spec, plan, nvme_path),
        **precision_section(plan),
        **recompute_section(spec, plan),
        **pipeline_section(plan),
        **context_parallel_section(plan),
        **optimizer_section(spec, plan, lr),
        **scheduler_section(lr),
    }


__all__ = ["to_deepspeed_config", "LRSchedule", "default_lr_schedule",
           "tokens_per_step", "training_tokens"]
