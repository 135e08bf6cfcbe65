"""Megatron-Core's memory mechanisms: its DDP gradient buffer, its distributed optimizer, the
interleaved pipeline schedule's in-flight chunks, and the moments of its step.

Mechanisms (Megatron-LM / Megatron-Core, docs/memory-model.md has the references):
- Parameters live in one contiguous buffer in the compute dtype; gradients accumulate into a
  contiguous ``main_grad`` buffer allocated at init and kept for the whole run
  (core/distributed/param_and_grad_buffer.py).  Its dtype is fp32 for bf16 training unless the
  run reduces in bf16 (Megatron-LM's arguments.py forces accumulate_allreduce_grads_in_fp32 for
  bf16; --grad-reduce-in-bf16 and Megatron-Bridge's performance recipes,
  ``ddp.grad_reduce_in_fp32 = False``, turn it off); fp16 keeps fp16 gradients unless
  --accumulate-allreduce-grads-in-fp32.  Reduce-scatter and
  all-gather work in place in these buffers: no bucket copies beside them.
- The distributed optimizer (``zero: 1`` here) keeps fp32 main parameters and Adam's two
  moments for 1/(dp x cp) of the parameters; bytes per parameter are 6 + 12/d with fp32
  gradients and 4 + 16/d with 16-bit ones (Megatron-LM docs/source/api-guide/dist_optimizer.md,
  whose table counts the fp32 copy of the gradient shard that the step makes,
  ``shard_main_param.grad = shard_model_grad.float()``, as optimizer memory; here it is a
  transient of the step moment).  ``zero: 0`` is the plain mixed-precision optimizer: the same
  with d = 1.
- A pipeline stage's sent outputs are freed once sent (schedules.py deallocate_output_tensor),
  so no send/receive buffers beside the activations.  Under the interleaved schedule (v model
  chunks per rank) rank r runs 2(pp - r - 1) + (v - 1) pp warm-up chunk forwards before its
  first backward (schedules.py forward_backward_pipelining_with_interleaving), so it holds that
  many + 1 chunks of L/(pp v) layers: on the first stage pp v + pp - 1 chunks, the factor
  1 + (pp - 1)/(pp v) over 1F1B of Korthikanti et al. 2022.
- Transformer Engine's fp8 weight caches, the activations, the logits and cuBLAS workspaces are
  the framework-free terms (planner/model/).
"""
from __future__ import annotations

from typing import Any

from planner.model import activations as act
from planner.model import fp8
from planner.model.memory_terms import (AnyPlan, MemoryBreakdown, cublas_workspace_bytes,
                                        parameter_bytes, stored_per_block_bytes)
from planner.model.shape import Stage, blocks_alive, stage_params
from planner.plan.strategy import where
from planner.spec.spec import Spec
from planner.spec.units import FP32_BYTES, OPTIMIZER_STATE_BYTES, Precision, ZeroStage


def main_grad_bytes(spec: Spec, plan: AnyPlan):
    """Bytes per parameter of the main_grad buffer: fp32 when runtime.grad_reduce_in_fp32 says so
    or, unset, for bf16 (and fp8, bf16 training) as Megatron-LM's arguments.py forces; otherwise
    the parameters' dtype (fp16 keeps fp16 gradients unless told, fp32 training fp32)."""
    setting = spec.runtime.grad_reduce_in_fp32
    bf16 = plan.is_precision(Precision.BF16) | plan.is_precision(Precision.FP8)
    fp32 = bf16 if setting is None else (bool(setting) | plan.is_precision(Precision.FP32))
    return where(fp32, FP32_BYTES, plan.grad_bytes)


def optimizer_ranks(plan: AnyPlan):
    """Ranks the distributed optimizer shards over: dp x cp (context-parallel ranks hold the
    same model); 1 without it (zero 0)."""
    return where(plan.zero == ZeroStage.OPTIMIZER, plan.zero_ranks, 1)


def main_param_bytes(plan: AnyPlan, n_full):
    """fp32 main parameters of this rank's shard; fp32 training steps the model's own."""
    sixteen_bit = plan.param_bytes < FP32_BYTES
    return where(sixteen_bit, FP32_BYTES * n_full / optimizer_ranks(plan), 0.0)


def optimizer_state_bytes(spec: Spec, plan: AnyPlan, n_full):
    return OPTIMIZER_STATE_BYTES[spec.training.optimizer] * n_full / optimizer_ranks(plan)


def step_transient_bytes(spec: Spec, plan: AnyPlan, n_full):
    """The fp32 copy of the gradient shard the step makes when main gradients are 16-bit (with
    fp32 main gradients ``.float()`` is the buffer itself)."""
    return where(main_grad_bytes(spec, plan) < FP32_BYTES,
                 FP32_BYTES * n_full / optimizer_ranks(plan), 0.0)


def _base(spec: Spec, plan: AnyPlan, stage: Stage, n_full) -> dict[str, Any]:
    n = stage_params(spec.model, stage, plan.tp, plan.ep)
    return dict(parameters=parameter_bytes(plan, n),
                fp8_weights=fp8.weight_cache_bytes(spec, plan, stage.n_layers),
                gradients=main_grad_bytes(spec, plan) * n,
                master_weights=main_param_bytes(plan, n_full),
                optimizer_states=optimizer_state_bytes(spec, plan, n_full),
                cublas_workspace=cublas_workspace_bytes(spec), stage=stage.index)


def stage_moments(spec: Spec, plan: AnyPlan, stage: Stage) -> list[tuple[MemoryBreakdown, Any]]:
    """The loss (on the head's stage), backward through the last block, and the optimizer step;
    each with whether it happens."""
    m = spec.model
    n_full = stage_params(m, stage, plan.tp)
    base = _base(spec, plan, stage, n_full)
    stored = blocks_alive(stage, plan.pp, plan.grad_accum, spec.runtime.virtual_stages) \
        * stored_per_block_bytes(spec, plan)
    losses = (("forward through the loss", act.logits_forward_peak_bytes(m, plan)),
              ("backward through the loss", act.logits_backward_peak_bytes(m, plan)))
    moments = [(MemoryBreakdown(**base, activations=stored + act.head_saved_bytes(m, plan),
                                logits_loss=loss, moment=name), stage.has_head)
               for name, loss in losses]
    moments.append((MemoryBreakdown(**base, activations=stored
                                    + act.block_backward_transient_bytes(m, plan),
                                    moment="backward through the last block"), True))
    moments.append((MemoryBreakdown(**base, optimizer_step=step_transient_bytes(spec, plan, n_full),
                                    moment="optimizer step"), True))
    return moments


def host_offload_bytes(spec: Spec, plan: AnyPlan):
    """No host memory: offload is refused under this backend (rules.py)."""
    return 0.0 * plan.dp
