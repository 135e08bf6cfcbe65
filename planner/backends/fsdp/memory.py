"""PyTorch FSDP's memory mechanisms (FSDP2 ``fully_shard`` per transformer block, as torchtitan
applies it; llm-foundry's FSDP1 FULL_SHARD is the same sharding), and the moments of its step.

Mechanisms (torch 2.6 torch/distributed/fsdp/_fully_shard/, torch/distributed/pipelining/stage.py;
torchtitan parallelize apply_fsdp, Dec 2024 - Jun 2025; docs/memory-model.md):
- Sharded state, over the dp x cp ranks: the parameters in their original dtype (fp32: FSDP keeps
  no separate master copy), their gradients in that dtype (foreach_reduce casts the
  reduce-scatter output back), and AdamW's two fp32 moments: 16/d bytes per parameter.
- Each transformer block is a group; the embedding, final norm and LM head are the root group
  (torchtitan until July 2025), which FSDP never reshards after forward: its 16-bit parameters
  live through forward and backward, and its 16-bit gradients from the start of backward until
  the final callback.  Every group is resharded after backward, before the optimizer step.
- Without pipeline parallelism a block's 16-bit parameters are all-gathered for its forward and
  again for its backward, with the next block prefetched: two blocks alive.  In backward the
  block's 16-bit gradients and the reduce-scatter input in the reduce dtype (fp32, torchtitan's
  mixed_precision_reduce default) are alive beside them.
- With pipeline parallelism torchtitan does not reshard after forward, and the pipeline stage
  turns gradient sync off for every micro-batch until its last backward
  (stage.py backward_maybe_with_nosync): the stage's parameters stay unsharded in 16 bits and
  its gradients accumulate unsharded in the reduce dtype (to_accumulated_grad_if_needed): 6
  bytes per parameter of the stage on top of the shards.
- The optimizer step: PyTorch's foreach AdamW makes a 4-byte temporary per sharded parameter.
"""
from __future__ import annotations

from typing import Any

from planner.model import activations as act
from planner.model import fp8
from planner.model.memory_terms import (AnyPlan, MemoryBreakdown, cublas_workspace_bytes,
                                        stored_per_block_bytes)
from planner.model.shape import Stage, blocks_alive, layer_params, stage_params
from planner.plan.strategy import where
from planner.spec.spec import Spec
from planner.spec.units import FP32_BYTES, OPTIMIZER_STATE_BYTES

#: FSDP's reduce dtype: torchtitan's mixed_precision_reduce and Composer's DEFAULT policy are fp32
REDUCE_BYTES = FP32_BYTES


def _sizes(spec: Spec, plan: AnyPlan, stage: Stage):
    """(stage parameters, one block's, the root group's) on one tp rank."""
    n = stage_params(spec.model, stage, plan.tp)
    block = layer_params(spec.model).per_rank(plan.tp)
    return n, block, n - stage.n_layers * block


def _base(spec: Spec, plan: AnyPlan, stage: Stage, sizes) -> dict[str, Any]:
    """The shards and the unsharded 16-bit copies (the fp8 GEMM weights at one byte where the
    recipe all-gathers fp8, runtime.fp8_all_gather)."""
    n, block, root = sizes
    d = plan.zero_ranks
    gathered = fp8.gathered_bytes_per_param(spec, plan, n, stage.n_layers)
    unsharded = where(plan.pp > 1, n, 2 * block + root) * gathered
    return dict(parameters=unsharded,
                fp8_weights=fp8.weight_cache_bytes(spec, plan, stage.n_layers),
                master_weights=FP32_BYTES * n / d,
                optimizer_states=OPTIMIZER_STATE_BYTES[spec.training.optimizer] * n / d,
                cublas_workspace=cublas_workspace_bytes(spec), stage=stage.index)


def _gradients(plan: AnyPlan, sizes, in_backward: bool):
    """Gradients alive: the fp32 shards, plus under a pipeline the unsharded fp32 accumulation of
    every earlier micro-batch; in backward the current block's 16-bit gradients and, without a
    pipeline, its fp32 reduce-scatter input and the root group's 16-bit gradients."""
    n, block, root = sizes
    shards = FP32_BYTES * n / plan.zero_ranks
    pipelined = plan.pp > 1
    accumulated = where(pipelined & (plan.grad_accum > 1), REDUCE_BYTES * n, 0.0)
    if not in_backward:
        return shards + accumulated
    g = plan.grad_bytes
    transient = where(pipelined, g * block, g * block + REDUCE_BYTES * block + g * root)
    return shards + accumulated + transient


def stage_moments(spec: Spec, plan: AnyPlan, stage: Stage) -> list[tuple[MemoryBreakdown, Any]]:
    """The loss (on the head's stage), backward through the last block, and the optimizer step;
    each with whether it happens."""
    m = spec.model
    sizes = _sizes(spec, plan, stage)
    base = _base(spec, plan, stage, sizes)
    stored = blocks_alive(stage, plan.pp, plan.grad_accum, spec.runtime.virtual_stages) \
        * stored_per_block_bytes(spec, plan)
    head = act.head_saved_bytes(m, plan)
    moments = [
        (MemoryBreakdown(**base, gradients=_gradients(plan, sizes, False),
                         activations=stored + head,
                         logits_loss=act.logits_forward_peak_bytes(m, plan),
                         moment="forward through the loss"), stage.has_head),
        (MemoryBreakdown(**base, gradients=_gradients(plan, sizes, False),
                         activations=stored + head,
                         logits_loss=act.logits_backward_peak_bytes(m, plan),
                         moment="backward through the loss"), stage.has_head),
        (MemoryBreakdown(**base, gradients=_gradients(plan, sizes, True),
                         activations=stored + act.block_backward_transient_bytes(m, plan),
                         moment="backward through the last block"), True)]
    shard = FP32_BYTES * sizes[0] / plan.zero_ranks
    resharded = dict(base, parameters=0.0 * plan.dp)  # every group reshards after backward
    moments.append((MemoryBreakdown(**resharded, gradients=shard, optimizer_step=shard,
                                    moment="optimizer step"), True))
    return moments


def host_offload_bytes(spec: Spec, plan: AnyPlan):
    """No host memory: offload is refused under this backend (rules.py)."""
    return 0.0 * plan.dp
