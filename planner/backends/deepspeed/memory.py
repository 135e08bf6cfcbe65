"""DeepSpeed's memory mechanisms: which optimizer wrapper a plan runs under, the buffers it
allocates, and the moments of its step where the peak can fall (planner/estimate/memory.py takes
the largest).

Mechanisms mirror DeepSpeed 0.19.8 (file:line references in docs/memory-model.md):
- ZeRO-0 mixed precision runs FP16_(Unfused)Optimizer: a dummy step at init creates the Adam
  states; gradients are autograd tensors freed after every step (engine.py:2321,
  fp16/unfused_optimizer.py:412-433).
- bf16 with pipeline parallelism runs BF16_Optimizer: a full fp32 gradient buffer
  (bf16_optimizer.py:191).
- ZeRO-1/2 (stage_1_and_2.py): flat lp params, fp32 master partition, lazy Adam states, an ipg
  bucket of reduce_bucket_size elements allocated at the first gradient hook and freed at the end
  of backward (3256-3280, 924-932); ZeRO-2 keeps a P/dp gradient partition (2192) that also
  carries gradient accumulation; ZeRO-1 keeps full autograd gradients until the boundary.
- ZeRO-3 (stage3.py): the ipg bucket and a P/dp gradient partition buffer allocated at init and
  kept (780-803); gathered parameters live while within stage3_max_reuse_distance; the optimizer
  step goes one sub-group at a time (2909-2927).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from planner.model import activations as act
from planner.model import fp8
from planner.model.local import local_dims
from planner.model.memory_terms import (AnyPlan, MemoryBreakdown, cublas_workspace_bytes,
                                        parameter_bytes, stored_per_block_bytes)
from planner.model.shape import (Stage, TensorStats, layer_params, stage_params, stages_to_check,
                                 tensor_stats)
from planner.plan.strategy import where
from planner.spec.spec import RuntimeSpec, Spec
from planner.spec.units import FP32_BYTES, OPTIMIZER_STATE_BYTES, Precision, ZeroStage

#: DeepSpeed's engine flattens gradients for ZeRO-0's all-reduce in chunks of this many elements
#: (engine.py:151 MEMORY_OPT_ALLREDUCE_SIZE)
MEMORY_OPT_ALLREDUCE_SIZE = 500_000_000


class Wrapper(IntEnum):
    """Which DeepSpeed optimizer wrapper a plan runs under (engine.py _do_optimizer_sanity_check)."""

    PLAIN = 0  #: fp32, no ZeRO: the bare torch optimizer, lazy states
    FP16_OPTIMIZER = 1  #: bf16/fp16 without ZeRO: fp32 master + states at init
    BF16_OPTIMIZER = 2  #: bf16 with pipeline parallelism: full fp32 grad buffer
    ZERO12 = 3  #: DeepSpeedZeroOptimizer, stages 1 and 2
    ZERO3 = 4  #: DeepSpeedZeroOptimizer_Stage3


def wrapper(plan: AnyPlan):
    """A Wrapper for a plan, an array of Wrapper values for a batch."""
    w = where(plan.zero == ZeroStage.PARAMETERS, Wrapper.ZERO3,
              where(bf16_states(plan) & (plan.pp > 1), Wrapper.BF16_OPTIMIZER,
                    where(plan.zero >= ZeroStage.OPTIMIZER, Wrapper.ZERO12,
                          where(plan.is_precision(Precision.FP32), Wrapper.PLAIN,
                                Wrapper.FP16_OPTIMIZER))))
    return w if isinstance(w, np.ndarray) else Wrapper(w)


def bf16_states(plan: AnyPlan):
    """bf16 weights and gradients: bf16 plans, and fp8 plans (bf16 training whose block GEMMs
    run in fp8), which DeepSpeed configures identically."""
    return plan.is_precision(Precision.BF16) | plan.is_precision(Precision.FP8)


def _is(w, *kinds):
    """w is one of kinds (elementwise for a batch)."""
    if isinstance(w, np.ndarray):
        out = w == int(kinds[0])
        for k in kinds[1:]:
            out = out | (w == int(k))
        return out
    return w in kinds


def zero3_gathered_bytes(plan: AnyPlan, n, stats: TensorStats, rt: RuntimeSpec):
    """ZeRO-3 full parameters alive besides the partitions.

    dp = 1 gathers nothing: param.data aliases the partition (partition_parameters.py:74).
    Otherwise a gathered tensor is released only when its next use is farther than
    stage3_max_reuse_distance elements in the trace (partitioned_param_coordinator.py:634-665):
    forward and backward uses of the last ~reuse/2 elements stay gathered, plus the module in use,
    the prefetch bucket, and persistent tensors (<= stage3_param_persistence_threshold elements)
    that stay gathered for the whole step.
    """
    live = np.minimum(n - stats.small, rt.stage3_max_reuse_distance / 2
                      + rt.stage3_prefetch_bucket_size + stats.largest)
    gathers = (plan.zero == ZeroStage.PARAMETERS) & ((plan.zero_ranks > 1) | plan.params_off_gpu)
    return where(gathers, (live + stats.small) * plan.param_bytes, 0.0)


def partition(plan: AnyPlan, n, n_full=None):
    """Parameters of a ZeRO partition on one rank: 1/dp of the stage's.  With expert parallelism
    a rank holds 1/ep of the routed experts and partitions them over the dp / ep ranks of its
    expert-data-parallel group (stage_1_and_2.py _configure_moe_settings), so the share is
    still 1/dp of all of them: ``n_full`` counts every expert (default: n, a dense model).
    Context-parallel ranks hold the same model, so ZeRO partitions over dp x cp (DeepSpeed's
    sequence-data-parallel group, engine.py seq_data_parallel_group)."""
    return (n if n_full is None else n_full) / plan.zero_ranks


def master_weight_bytes(plan: AnyPlan, n, n_full=None):
    """fp32 master copy.  ZeRO-1/2/3 clone the fp32 partition even for fp32 models
    (stage_1_and_2.py:560, stage3.py:1169); ZeRO-0 keeps it only for mixed precision."""
    w = wrapper(plan)
    kept = where(_is(w, Wrapper.PLAIN), 0.0,
                 where(_is(w, Wrapper.FP16_OPTIMIZER), FP32_BYTES * n,
                       FP32_BYTES * partition(plan, n, n_full)))
    return where(plan.optimizer_off_gpu, 0.0, kept)


def optimizer_state_bytes(spec: Spec, plan: AnyPlan, n, n_full=None):
    """Adam's exp_avg and exp_avg_sq in fp32 (Kingma & Ba 2015), partitioned from ZeRO-1 on."""
    per = OPTIMIZER_STATE_BYTES[spec.training.optimizer]
    whole = _is(wrapper(plan), Wrapper.PLAIN, Wrapper.FP16_OPTIMIZER)
    return where(plan.optimizer_off_gpu, 0.0,
                 per * where(whole, n, partition(plan, n, n_full)))


def resident_gradient_bytes(plan: AnyPlan, n):
    """Gradient storage alive for the whole step: ZeRO-3's P/dp partition buffer
    (stage3.py:791-803) and BF16_Optimizer's full fp32 accumulation buffer (bf16_optimizer.py:191)."""
    w = wrapper(plan)
    z3 = where(plan.optimizer_off_gpu, 0.0, plan.grad_bytes * n / plan.zero_ranks)
    return where(_is(w, Wrapper.ZERO3), z3, where(_is(w, Wrapper.BF16_OPTIMIZER),
                                                  FP32_BYTES * n, 0.0))


def accumulated_gradient_bytes(plan: AnyPlan, n, n_full=None):
    """Gradients carried from earlier micro-batches into the activation peak of a later one
    (gradient accumulation, or the pipeline's micro-batches).  ZeRO-0 and ZeRO-1 accumulate full
    autograd gradients; ZeRO-2 its P/dp partition (stage_1_and_2.py:1039-1045); ZeRO-3 accumulates
    in the resident partition; BF16_Optimizer keeps the bf16 grads between micro-batches."""
    g, w = plan.grad_bytes, wrapper(plan)
    zero2 = where(plan.optimizer_off_gpu, 0.0, g * partition(plan, n, n_full))
    carried = where(_is(w, Wrapper.ZERO3), 0.0,
                    where(_is(w, Wrapper.ZERO12) & (plan.zero == ZeroStage.GRADIENTS), zero2,
                          g * n))
    return where(plan.grad_accum == 1, 0.0, carried)


def ipg_bucket_bytes(plan: AnyPlan, rt: RuntimeSpec):
    """The contiguous-gradient bucket: reduce_bucket_size elements in the gradient dtype, whatever
    the model size (stage_1_and_2.py:3256-3280, stage3.py:780-784).  ZeRO-3 keeps it from init;
    ZeRO-1/2 from the first gradient hook to the end of backward (and, for ZeRO-1 with gradient
    accumulation, across micro-batches, since its epilogue only runs at the boundary), twice over
    with overlap_comm (buf_1, stage_1_and_2.py:3273-3278)."""
    if not rt.contiguous_gradients:
        return 0.0 * plan.dp
    buffers = where((plan.zero < ZeroStage.PARAMETERS) & bool(rt.overlap_comm), 2, 1)
    none = (plan.zero == ZeroStage.NONE) | _is(wrapper(plan), Wrapper.BF16_OPTIMIZER)
    return where(none, 0.0, buffers * rt.reduce_bucket_size * plan.grad_bytes)


def flush_copy_bytes(plan: AnyPlan, n, rt: RuntimeSpec):
    """Flattened copy made when a full bucket is reduced (allreduce_bucket's flatten,
    stage_1_and_2.py:2367; ZeRO-3's reduce-scatter torch.cat, coalesced_collectives.py:102-122);
    ZeRO-0 flattens all gradients at the end of backward in MEMORY_OPT_ALLREDUCE_SIZE chunks
    (engine.py:151, 3796)."""
    chunk = where(plan.zero == ZeroStage.NONE, MEMORY_OPT_ALLREDUCE_SIZE, rt.reduce_bucket_size)
    return np.minimum(n, chunk) * plan.grad_bytes


def offload_gpu_buffer_bytes(plan: AnyPlan, largest_tensor):
    """ZeRO-1/2 optimizer offload keeps a gradient staging buffer the size of the largest
    parameter on the GPU (temp_grad_buffer_for_gpu_offload, stage_1_and_2.py:659-661)."""
    keeps = plan.optimizer_off_gpu & (plan.zero < ZeroStage.PARAMETERS)
    return where(keeps, largest_tensor * plan.grad_bytes, 0.0)


def optimizer_step_bytes(spec: Spec, plan: AnyPlan, n, largest_tensor, n_full=None):
    """Transient memory of the optimizer step beyond the resident states.

    ZeRO-0 mixed precision: the bf16 grads plus their fp32 copies (unfused_optimizer.py:222) and,
    with PyTorch's foreach AdamW, a 4-byte/param sqrt temporary (torch/optim/adam.py); the fused
    flat optimizer makes an fp32 list and its flattened copy (fused_optimizer.py:285-289): 8 bytes.
    ZeRO-1/2: the gradient partition, its flattened copy and the fp32 gradient (3114-3132).
    ZeRO-3: one sub-group's b16 flat and fp32 gradient (stage3.py:2686), sub_group_size elements.
    Offloaded optimizers step on the host."""
    rt = spec.runtime
    g, w = plan.grad_bytes, wrapper(plan)
    foreach = FP32_BYTES if rt.torch_adam else 0
    part = partition(plan, n, n_full)
    zero12 = np.maximum(np.maximum(g * part + 8 * np.minimum(largest_tensor, part),
                                   part * (2 * g + FP32_BYTES)), part * (FP32_BYTES + foreach))
    sub = np.minimum(rt.sub_group_size, part)
    by_wrapper = where(_is(w, Wrapper.PLAIN), n * (g + foreach),
                       where(_is(w, Wrapper.FP16_OPTIMIZER), n * (g + 2 * FP32_BYTES),
                             where(_is(w, Wrapper.BF16_OPTIMIZER), n * g + foreach * part,
                                   where(_is(w, Wrapper.ZERO12), zero12,
                                         sub * (g + FP32_BYTES + foreach)))))
    return where(plan.optimizer_off_gpu, 0.0, by_wrapper)


def pipeline_buffer_bytes(spec: Spec, plan: AnyPlan, stage: Stage):
    """A non-last pipeline stage keeps each in-flight micro-batch's output for backward plus a
    gradient receive buffer (pipe/engine.py pipe_buffers)."""
    m = spec.model
    ld = local_dims(m, plan)
    size = (stage.in_flight + 1) * plan.activation_bytes * ld.tokens * ld.d_model / ld.tp
    return where((plan.pp == 1) | stage.has_head, 0.0, size)


# --------------------------------------------------------------------------------- moments

@dataclass(frozen=True)
class _StageState:
    """What every moment of a stage shares."""

    n: Any  #: parameters the rank holds (1/ep of the routed experts)
    n_full: Any  #: every expert counted: its 1/dp is the ZeRO partition
    stats: TensorStats
    base: dict
    resident_grads: Any
    carried: Any
    resident_buffers: Any
    stored: Any


def _state(spec: Spec, plan: AnyPlan, stage: Stage) -> _StageState:
    m, rt = spec.model, spec.runtime
    n = stage_params(m, stage, plan.tp, plan.ep)
    n_full = stage_params(m, stage, plan.tp)
    stats = tensor_stats(m, stage, plan.tp, rt.stage3_param_persistence_threshold)
    gathered = zero3_gathered_bytes(plan, n, stats, rt)
    if spec.runtime.fp8_all_gather:  # fp8 GEMM weights gathered at one byte
        gathered = gathered / plan.param_bytes * fp8.gathered_bytes_per_param(
            spec, plan, n, stage.n_layers)
    base = dict(parameters=parameter_bytes(plan, n) + gathered,
                fp8_weights=fp8.weight_cache_bytes(spec, plan, stage.n_layers),
                master_weights=master_weight_bytes(plan, n, n_full),
                optimizer_states=optimizer_state_bytes(spec, plan, n, n_full),
                cublas_workspace=cublas_workspace_bytes(spec), stage=stage.index)
    resident_buffers = where(_is(wrapper(plan), Wrapper.ZERO3), ipg_bucket_bytes(plan, rt), 0.0) \
        + offload_gpu_buffer_bytes(plan, stats.largest) + pipeline_buffer_bytes(spec, plan, stage)
    stored = stage.n_layers * stored_per_block_bytes(spec, plan) * stage.in_flight
    return _StageState(n, n_full, stats, base, resident_gradient_bytes(plan, n),
                       accumulated_gradient_bytes(plan, n, n_full), resident_buffers, stored)


def loss_moments(spec: Spec, plan: AnyPlan, st: _StageState):
    """Forward and backward through the loss (only on the stage with the head)."""
    m, rt = spec.model, spec.runtime
    carried_bucket = where((plan.zero == ZeroStage.OPTIMIZER) & (plan.grad_accum > 1)
                           & _is(wrapper(plan), Wrapper.ZERO12), ipg_bucket_bytes(plan, rt), 0.0)
    head = act.head_saved_bytes(m, plan)
    for name, loss in (("forward through the loss", act.logits_forward_peak_bytes(m, plan)),
                       ("backward through the loss", act.logits_backward_peak_bytes(m, plan))):
        yield MemoryBreakdown(**st.base, gradients=st.resident_grads + st.carried,
                              activations=st.stored + head, logits_loss=loss,
                              deepspeed_buffers=st.resident_buffers + carried_bucket, moment=name)


def _hook_buffers(plan: AnyPlan, rt: RuntimeSpec, st: _StageState):
    """Buffers once the first gradient hooks fired: ZeRO-1/2 now hold their bucket."""
    w = wrapper(plan)
    return where(_is(w, Wrapper.ZERO3, Wrapper.BF16_OPTIMIZER), st.resident_buffers,
                 st.resident_buffers + ipg_bucket_bytes(plan, rt))


def _backward_transient(spec: Spec, plan: AnyPlan):
    """One block's backward, with its checkpoint back from the host under CPU checkpointing."""
    m, rt = spec.model, spec.runtime
    return act.block_backward_transient_bytes(m, plan) \
        + act.cpu_checkpoint_transient_bytes(m, plan, rt.cpu_checkpointing)


def last_block_moment(spec: Spec, plan: AnyPlan, stage: Stage, st: _StageState):
    """Backward through the last block; without ZeRO an untied head's gradient exists already."""
    m = spec.model
    ld = local_dims(m, plan)
    head_grads = 0.0
    if not m.tied_embeddings:
        head_grads = where(stage.has_head & _is(wrapper(plan), Wrapper.PLAIN,
                                                Wrapper.FP16_OPTIMIZER),
                           plan.grad_bytes * ld.vocab * ld.d_model, 0.0)
    return MemoryBreakdown(**st.base, gradients=st.resident_grads + st.carried + head_grads,
                           activations=st.stored + _backward_transient(spec, plan),
                           deepspeed_buffers=_hook_buffers(plan, spec.runtime, st),
                           moment="backward through the last block")


def first_flush_moment(spec: Spec, plan: AnyPlan, stage: Stage, st: _StageState):
    """ZeRO-2/3 reduce a full bucket during backward, through a flat copy of it.  When the stage
    has more parameters than one bucket, the first flush happens after about
    (reduce_bucket_size - head) / (block parameters) blocks have finished backward, so the
    activations of the remaining blocks are still alive.  (Returns the moment and whether it
    happens.)"""
    rt, m = spec.runtime, spec.model
    applies = (plan.zero >= ZeroStage.GRADIENTS) & bool(rt.contiguous_gradients) \
        & (st.n > rt.reduce_bucket_size)
    per_block = layer_params(m).per_rank(plan.tp)
    head = st.n - stage.n_layers * per_block
    done = np.minimum(stage.n_layers, -(-np.maximum(0, rt.reduce_bucket_size - head) // per_block))
    alive = (stage.n_layers - done) * stored_per_block_bytes(spec, plan) * stage.in_flight
    partition = where(plan.zero == ZeroStage.GRADIENTS,
                      plan.grad_bytes * rt.reduce_bucket_size / plan.zero_ranks, 0.0)
    moment = MemoryBreakdown(
        **st.base, gradients=st.resident_grads + st.carried + partition,
        activations=alive + _backward_transient(spec, plan),
        deepspeed_buffers=_hook_buffers(plan, rt, st) + flush_copy_bytes(plan, st.n, rt),
        moment="first gradient-bucket reduction in backward")
    return moment, applies


def end_of_backward_moment(spec: Spec, plan: AnyPlan, stage: Stage, st: _StageState):
    """Every gradient exists, activations are gone, buckets are reduced."""
    rt = spec.runtime
    g, w, n = plan.grad_bytes, wrapper(plan), st.n
    part = where(plan.optimizer_off_gpu, 0.0, g * partition(plan, n, st.n_full))
    full = where(plan.zero == ZeroStage.OPTIMIZER, g * n, 0.0)
    zero12 = _is(w, Wrapper.ZERO12)
    grads = where(zero12, full + part + st.carried,
                  where(_is(w, Wrapper.ZERO3), st.resident_grads, st.resident_grads + g * n))
    bucket = where(zero12, ipg_bucket_bytes(plan, rt), 0.0)
    state_buffers = st.resident_buffers - pipeline_buffer_bytes(spec, plan, stage)
    return MemoryBreakdown(**st.base, gradients=grads,
                           deepspeed_buffers=state_buffers + bucket + flush_copy_bytes(plan, n, rt),
                           moment="end of backward (gradient reduction)")


def optimizer_step_moment(spec: Spec, plan: AnyPlan, stage: Stage, st: _StageState):
    state_buffers = st.resident_buffers - pipeline_buffer_bytes(spec, plan, stage)
    return MemoryBreakdown(**st.base, gradients=st.resident_grads, deepspeed_buffers=state_buffers,
                           optimizer_step=optimizer_step_bytes(spec, plan, st.n,
                                                               st.stats.largest, st.n_full),
                           moment="optimizer step")


def stage_moments(spec: Spec, plan: AnyPlan, stage: Stage) -> list[tuple[MemoryBreakdown, Any]]:
    """Every moment of the step on this stage, each with whether it happens (a flag or, for a
    batch, a mask)."""
    st = _state(spec, plan, stage)
    moments = [(mo, stage.has_head) for mo in loss_moments(spec, plan, st)]
    moments.append((last_block_moment(spec, plan, stage, st), True))
    moments.append(first_flush_moment(spec, plan, stage, st))
    moments.append((end_of_backward_moment(spec, plan, stage, st), True))
    moments.append((optimizer_step_moment(spec, plan, stage, st), True))
    return moments


def host_offload_bytes(spec: Spec, plan: AnyPlan):
    """Host RAM one GPU's rank needs for offload (pinned unless noted): fp32 master 4, fp32 grads 4,
    CPU-Adam states 8, b16 staging 2 bytes per partitioned parameter (stage_1_and_2.py:560-574,
    937-941; stage3.py:1157-1172, 1337-1342; cpu_adam.py:153-164); +2 with gradient accumulation
    (accumulated_grads_in_cpu) in ZeRO-1/2; +2 for offloaded ZeRO-3 parameters
    (param_groups_fp16_flat_cpu_memory, stage3.py:888-911)."""
    n = 0
    for stage in stages_to_check(spec.model, plan.pp, plan.grad_accum):
        n = np.maximum(n, stage_params(spec.model, stage, plan.tp))
    per_param = 18.0 \
        + where((plan.zero < ZeroStage.PARAMETERS) & (plan.grad_accum > 1), plan.grad_bytes, 0) \
        + where(plan.params_off_gpu, plan.param_bytes, 0) \
        - where(plan.uses_nvme, 8.0, 0)  # NVMe: the Adam states swap through pinned buffers
    checkpoints = 0.0
    if spec.runtime.cpu_checkpointing:  # the full-recompute checkpoints of every block in flight
        held = 0
        for stage in stages_to_check(spec.model, plan.pp, plan.grad_accum):
            held = np.maximum(held, stage.n_layers * stage.in_flight)
        checkpoints = held * act.host_checkpoint_bytes(spec.model, plan, True)
    return where(plan.optimizer_off_gpu, per_param * n / plan.zero_ranks, 0.0) + checkpoints
