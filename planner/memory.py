"""Per-GPU memory of one strategy: one pure function per term, evaluated at the moments of a step
where the peak can fall; the largest moment is the predicted ``torch.cuda.max_memory_allocated``.

Mechanisms mirror DeepSpeed 0.19.8 (file:line references in docs/memory-model.md):
- ZeRO-0 mixed precision runs FP16_(Unfused)Optimizer: a dummy step at init creates the Adam
  states; gradients are autograd tensors freed after every step (engine.py:2321,
  fp16/unfused_optimizer.py:412-433).
- bf16 with pipeline parallelism runs BF16_Optimizer: a full fp32 gradient buffer (bf16_optimizer.py:191).
- ZeRO-1/2 (stage_1_and_2.py): flat lp params, fp32 master partition, lazy Adam states, an ipg
  bucket of reduce_bucket_size elements allocated at the first gradient hook and freed at the end
  of backward (3256-3280, 924-932); ZeRO-2 keeps a P/dp gradient partition (2192) that also
  carries gradient accumulation; ZeRO-1 keeps full autograd gradients until the boundary.
- ZeRO-3 (stage3.py): the ipg bucket and a P/dp gradient partition buffer allocated at init and
  kept (780-803); gathered parameters live while within stage3_max_reuse_distance; the optimizer
  step goes one sub-group at a time (2909-2927).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum

from . import activations as act
from .plan import Plan
from .shape import Stage, layer_params, stage_params, stage_tensor_sizes, stages_to_check
from .spec import RuntimeSpec, Spec
from .units import FP32_BYTES, GiB, MiB, OPTIMIZER_STATE_BYTES, RECIPES, Offload, Precision, \
    ZeroStage

FP64_BYTES = 8


class Wrapper(Enum):
    """Which DeepSpeed optimizer wrapper a plan runs under (engine.py _do_optimizer_sanity_check)."""

    PLAIN = "plain"  #: fp32, no ZeRO: the bare torch optimizer, lazy states
    FP16_OPTIMIZER = "fp16_optimizer"  #: bf16/fp16 without ZeRO: fp32 master + states at init
    BF16_OPTIMIZER = "bf16_optimizer"  #: bf16 with pipeline parallelism: full fp32 grad buffer
    ZERO12 = "zero12"  #: DeepSpeedZeroOptimizer, stages 1 and 2
    ZERO3 = "zero3"  #: DeepSpeedZeroOptimizer_Stage3


def wrapper(plan: Plan) -> Wrapper:
    if plan.zero == ZeroStage.PARAMETERS:
        return Wrapper.ZERO3
    if plan.precision is Precision.BF16 and plan.pp > 1:
        return Wrapper.BF16_OPTIMIZER
    if plan.zero >= ZeroStage.OPTIMIZER:
        return Wrapper.ZERO12
    return Wrapper.PLAIN if plan.precision is Precision.FP32 else Wrapper.FP16_OPTIMIZER


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes on one GPU at one moment of the step."""

    parameters: float = 0.0  #: weights in the compute dtype (ZeRO-3: partition + gathered)
    gradients: float = 0.0  #: parameter gradients alive at this moment
    master_weights: float = 0.0  #: fp32 master copy
    optimizer_states: float = 0.0  #: Adam moments (SGD momentum)
    activations: float = 0.0  #: saved activations of every micro-batch in flight + block transients
    logits_loss: float = 0.0  #: logits, their fp32 copy, log-softmax and its gradients
    deepspeed_buffers: float = 0.0  #: ipg bucket, flatten copies, pipeline send/recv buffers
    optimizer_step: float = 0.0  #: fp32 gradients and temporaries of the optimizer step
    cublas_workspace: float = 0.0  #: PyTorch's cuBLAS workspaces (forward and autograd threads)
    moment: str = ""
    stage: int = 0

    @property
    def total(self) -> float:
        return float(sum(getattr(self, t) for t in TERMS))

    def as_gib(self) -> dict[str, float]:
        terms = {t: getattr(self, t) / GiB for t in TERMS}
        terms["total"] = self.total / GiB
        return terms


#: the memory terms, in report order
TERMS = tuple(f.name for f in fields(MemoryBreakdown) if f.name not in ("moment", "stage"))


# ------------------------------------------------------------------------ model-state terms

def parameter_bytes(plan: Plan, n: int) -> float:
    """Weights in the compute dtype.  ZeRO-0/1/2 keep all of them (a flat buffer the params view,
    stage_1_and_2.py:503-534); ZeRO-3 keeps its 1/dp partition (stage3.py:972), none on the GPU
    when parameters are offloaded."""
    b = RECIPES[plan.precision].param_bytes
    if plan.zero < ZeroStage.PARAMETERS:
        return n * b
    return 0.0 if plan.offload.params_off_gpu else n * b / plan.dp


def zero3_gathered_bytes(plan: Plan, n: int, tensors: list[int], rt: RuntimeSpec) -> float:
    """ZeRO-3 full parameters alive besides the partitions.

    dp = 1 gathers nothing: param.data aliases the partition (partition_parameters.py:74).
    Otherwise a gathered tensor is released only when its next use is farther than
    stage3_max_reuse_distance elements in the trace (partitioned_param_coordinator.py:634-665):
    forward and backward uses of the last ~reuse/2 elements stay gathered, plus the module in use,
    the prefetch bucket, and persistent tensors (<= stage3_param_persistence_threshold elements)
    that stay gathered for the whole step.
    """
    if plan.zero != ZeroStage.PARAMETERS or (plan.dp == 1 and not plan.offload.params_off_gpu):
        return 0.0
    b = RECIPES[plan.precision].param_bytes
    persistent = sum(t for t in tensors if t <= rt.stage3_param_persistence_threshold)
    largest = max(tensors)
    live = min(n - persistent, rt.stage3_max_reuse_distance / 2 + rt.stage3_prefetch_bucket_size
               + largest)
    return (live + persistent) * b


def master_weight_bytes(plan: Plan, n: int) -> float:
    """fp32 master copy.  ZeRO-1/2/3 clone the fp32 partition even for fp32 models
    (stage_1_and_2.py:560, stage3.py:1169); ZeRO-0 keeps it only for mixed precision."""
    if plan.offload.optimizer_off_gpu:
        return 0.0
    w = wrapper(plan)
    if w is Wrapper.PLAIN:
        return 0.0
    if w is Wrapper.FP16_OPTIMIZER:
        return FP32_BYTES * n
    return FP32_BYTES * n / plan.dp


def optimizer_state_bytes(spec: Spec, plan: Plan, n: int) -> float:
    """Adam's exp_avg and exp_avg_sq in fp32 (Kingma & Ba 2015), partitioned from ZeRO-1 on."""
    if plan.offload.optimizer_off_gpu:
        return 0.0
    per = OPTIMIZER_STATE_BYTES[spec.training.optimizer]
    partitioned = wrapper(plan) not in (Wrapper.PLAIN, Wrapper.FP16_OPTIMIZER)
    return per * n / (plan.dp if partitioned else 1)


def resident_gradient_bytes(plan: Plan, n: int) -> float:
    """Gradient storage alive for the whole step: ZeRO-3's P/dp partition buffer
    (stage3.py:791-803) and BF16_Optimizer's full fp32 accumulation buffer (bf16_optimizer.py:191)."""
    w = wrapper(plan)
    if w is Wrapper.ZERO3:
        return 0.0 if plan.offload.optimizer_off_gpu else RECIPES[plan.precision].grad_bytes * n / plan.dp
    if w is Wrapper.BF16_OPTIMIZER:
        return FP32_BYTES * n
    return 0.0


def accumulated_gradient_bytes(plan: Plan, n: int) -> float:
    """Gradients carried from earlier micro-batches into the activation peak of a later one
    (gradient accumulation, or the pipeline's micro-batches).  ZeRO-0 and ZeRO-1 accumulate full
    autograd gradients; ZeRO-2 its P/dp partition (stage_1_and_2.py:1039-1045); ZeRO-3 accumulates
    in the resident partition; BF16_Optimizer keeps the bf16 grads between micro-batches."""
    if plan.grad_accum == 1:
        return 0.0
    g = RECIPES[plan.precision].grad_bytes
    w = wrapper(plan)
    if w is Wrapper.ZERO3:
        return 0.0
    if w is Wrapper.ZERO12 and plan.zero == ZeroStage.GRADIENTS:
        return 0.0 if plan.offload.optimizer_off_gpu else g * n / plan.dp
    return g * n


def ipg_bucket_bytes(plan: Plan, rt: RuntimeSpec) -> float:
    """The contiguous-gradient bucket: reduce_bucket_size elements in the gradient dtype, whatever
    the model size (stage_1_and_2.py:3256-3280, stage3.py:780-784).  ZeRO-3 keeps it from init;
    ZeRO-1/2 from the first gradient hook to the end of backward (and, for ZeRO-1 with gradient
    accumulation, across micro-batches, since its epilogue only runs at the boundary), twice over
    with overlap_comm (buf_1, stage_1_and_2.py:3273-3278)."""
    if (plan.zero == ZeroStage.NONE or wrapper(plan) is Wrapper.BF16_OPTIMIZER
            or not rt.contiguous_gradients):
        return 0.0
    buffers = 2 if plan.zero < ZeroStage.PARAMETERS and rt.overlap_comm else 1
    return buffers * rt.reduce_bucket_size * RECIPES[plan.precision].grad_bytes


def flush_copy_bytes(plan: Plan, n: int, rt: RuntimeSpec) -> float:
    """Flattened copy made when a full bucket is reduced (allreduce_bucket's flatten,
    stage_1_and_2.py:2367; ZeRO-3's reduce-scatter torch.cat, coalesced_collectives.py:102-122);
    ZeRO-0 flattens all gradients at the end of backward (engine.py:3796)."""
    g = RECIPES[plan.precision].grad_bytes
    if plan.zero == ZeroStage.NONE:
        return min(n, 500_000_000) * g  # MEMORY_OPT_ALLREDUCE_SIZE chunks (engine.py:151)
    return min(n, rt.reduce_bucket_size) * g


def offload_gpu_buffer_bytes(plan: Plan, largest_tensor: int) -> float:
    """ZeRO-1/2 optimizer offload keeps a gradient staging buffer the size of the largest
    parameter on the GPU (temp_grad_buffer_for_gpu_offload, stage_1_and_2.py:659-661)."""
    if plan.offload.optimizer_off_gpu and plan.zero < ZeroStage.PARAMETERS:
        return largest_tensor * RECIPES[plan.precision].grad_bytes
    return 0.0


def optimizer_step_bytes(spec: Spec, plan: Plan, n: int, largest_tensor: int) -> float:
    """Transient memory of the optimizer step beyond the resident states.

    ZeRO-0 mixed precision: the bf16 grads plus their fp32 copies (unfused_optimizer.py:222) and,
    with PyTorch's foreach AdamW, a 4-byte/param sqrt temporary (torch/optim/adam.py); the fused
    flat optimizer makes an fp32 list and its flattened copy (fused_optimizer.py:285-289): 8 bytes.
    ZeRO-1/2: the gradient partition, its flattened copy and the fp32 gradient (3114-3132).
    ZeRO-3: one sub-group's b16 flat and fp32 gradient (stage3.py:2686), sub_group_size elements.
    Offloaded optimizers step on the host."""
    rt = spec.runtime
    g = RECIPES[plan.precision].grad_bytes
    foreach = FP32_BYTES if rt.torch_adam else 0
    w = wrapper(plan)
    if plan.offload.optimizer_off_gpu:
        return 0.0
    if w is Wrapper.PLAIN:
        return n * (g + foreach)
    if w is Wrapper.FP16_OPTIMIZER:
        return n * (g + 2 * FP32_BYTES)
    if w is Wrapper.BF16_OPTIMIZER:
        return n * g + foreach * n / plan.dp
    if w is Wrapper.ZERO12:
        part = n / plan.dp
        norm = g * part + FP64_BYTES * min(largest_tensor, part)
        flatten = part * (2 * g + FP32_BYTES)
        adam = part * (FP32_BYTES + foreach)
        return max(norm, flatten, adam)
    sub = min(rt.sub_group_size, n / plan.dp)
    return sub * (g + FP32_BYTES + foreach)


def cublas_workspace_bytes(spec: Spec) -> float:
    """One cuBLAS workspace per (handle, stream): forward runs on the main thread, backward on
    autograd's device thread, whose handle differs (CublasHandlePool.cpp), so two."""
    return 2 * spec.cluster.gpu.cublas_workspace_mib * MiB


# --------------------------------------------------------------------------------- moments

def pipeline_buffer_bytes(spec: Spec, plan: Plan, stage: Stage) -> float:
    """A non-last pipeline stage keeps each in-flight micro-batch's output for backward plus a
    gradient receive buffer (pipe/engine.py pipe_buffers)."""
    if plan.pp == 1 or stage.has_head:
        return 0.0
    m = spec.model
    e = RECIPES[plan.precision].activation_bytes
    return (stage.in_flight + 1) * e * m.seq_len * plan.micro_batch * m.d_model / plan.tp


def stage_moments(spec: Spec, plan: Plan, stage: Stage) -> list[MemoryBreakdown]:
    m, rt = spec.model, spec.runtime
    n = stage_params(m, stage, plan.tp)
    tensors = stage_tensor_sizes(m, stage, plan.tp)
    largest = max(tensors)
    w = wrapper(plan)
    base = dict(
        parameters=parameter_bytes(plan, n) + zero3_gathered_bytes(plan, n, tensors, rt),
        master_weights=master_weight_bytes(plan, n),
        optimizer_states=optimizer_state_bytes(spec, plan, n),
        cublas_workspace=cublas_workspace_bytes(spec),
        stage=stage.index,
    )
    resident_grads = resident_gradient_bytes(plan, n)
    carried = accumulated_gradient_bytes(plan, n)
    resident_buffers = (ipg_bucket_bytes(plan, rt) if w is Wrapper.ZERO3 else 0.0) \
        + offload_gpu_buffer_bytes(plan, largest) + pipeline_buffer_bytes(spec, plan, stage)
    carried_bucket = (ipg_bucket_bytes(plan, rt)
                      if plan.zero == ZeroStage.OPTIMIZER and plan.grad_accum > 1
                      and w is Wrapper.ZERO12 else 0.0)
    stored = stage.n_layers * act.stored_per_block_bytes(m, plan) * stage.in_flight
    moments = []

    if stage.has_head:
        head = act.head_saved_bytes(m, plan)
        for name, loss in (("forward through the loss", act.logits_forward_peak_bytes(m, plan)),
                           ("backward through the loss", act.logits_backward_peak_bytes(m, plan))):
            moments.append(MemoryBreakdown(
                **base, gradients=resident_grads + carried, activations=stored + head,
                logits_loss=loss, deepspeed_buffers=resident_buffers + carried_bucket,
                moment=name))

    # backward through the last block: the first gradient hooks have fired, so ZeRO-1/2 hold
    # their bucket; a bucket that fills mid-backward is flushed through a flat copy
    head_grads = 0.0
    if stage.has_head and w in (Wrapper.PLAIN, Wrapper.FP16_OPTIMIZER) and not m.tied_embeddings:
        head_grads = RECIPES[plan.precision].grad_bytes * m.vocab_size * m.d_model / plan.tp
    bucket = ipg_bucket_bytes(plan, rt) if w is not Wrapper.BF16_OPTIMIZER else 0.0
    hook_buffers = resident_buffers if w is Wrapper.ZERO3 else resident_buffers + bucket
    transient = act.block_backward_transient_bytes(m, plan)
    moments.append(MemoryBreakdown(
        **base, gradients=resident_grads + carried + head_grads, activations=stored + transient,
        deepspeed_buffers=hook_buffers, moment="backward through the last block"))
    flush = first_flush_moment(spec, plan, stage, n, base, hook_buffers, resident_grads + carried)
    if flush is not None:
        moments.append(flush)

    # end of backward: every gradient exists, activations are gone, buckets are reduced
    g = RECIPES[plan.precision].grad_bytes
    if w is Wrapper.ZERO12:
        partition = 0.0 if plan.offload.optimizer_off_gpu else g * n / plan.dp
        full = g * n if plan.zero == ZeroStage.OPTIMIZER else 0.0
        grads = full + partition + carried
        buffers = bucket + flush_copy_bytes(plan, n, rt)
    elif w is Wrapper.ZERO3:
        grads = resident_grads
        buffers = flush_copy_bytes(plan, n, rt)
    else:
        grads = resident_grads + g * n
        buffers = flush_copy_bytes(plan, n, rt)
    state_buffers = resident_buffers - pipeline_buffer_bytes(spec, plan, stage)
    moments.append(MemoryBreakdown(**base, gradients=grads,
                                   deepspeed_buffers=state_buffers + buffers,
                                   moment="end of backward (gradient reduction)"))
    moments.append(MemoryBreakdown(
        **base, gradients=resident_grads, deepspeed_buffers=state_buffers,
        optimizer_step=optimizer_step_bytes(spec, plan, n, largest), moment="optimizer step"))
    return moments


def first_flush_moment(spec: Spec, plan: Plan, stage: Stage, n: int, base: dict,
                       buffers: float, grads: float) -> MemoryBreakdown | None:
    """ZeRO-2/3 reduce a full bucket during backward, through a flat copy of it.  When the stage
    has more parameters than one bucket, the first flush happens after about
    (reduce_bucket_size - head) / (block parameters) blocks have finished backward, so the
    activations of the remaining blocks are still alive."""
    rt, m = spec.runtime, spec.model
    if plan.zero < ZeroStage.GRADIENTS or not rt.contiguous_gradients or n <= rt.reduce_bucket_size:
        return None
    per_block = layer_params(m).per_rank(plan.tp)
    head = n - stage.n_layers * per_block
    done = min(stage.n_layers, -(-max(0, rt.reduce_bucket_size - head) // per_block))
    alive = (stage.n_layers - done) * act.stored_per_block_bytes(m, plan) * stage.in_flight
    g = RECIPES[plan.precision].grad_bytes
    partition = g * rt.reduce_bucket_size / plan.dp if plan.zero == ZeroStage.GRADIENTS else 0.0
    return MemoryBreakdown(
        **base, gradients=grads + partition,
        activations=alive + act.block_backward_transient_bytes(m, plan),
        deepspeed_buffers=buffers + flush_copy_bytes(plan, n, rt),
        moment="first gradient-bucket reduction in backward")


def peak_memory(spec: Spec, plan: Plan) -> MemoryBreakdown:
    """The largest moment over the stages that can be the most loaded (first and last)."""
    best = None
    for stage in stages_to_check(spec.model, plan.pp, plan.grad_accum):
        for moment in stage_moments(spec, plan, stage):
            if best is None or moment.total > best.total:
                best = moment
    return best


def host_offload_bytes(spec: Spec, plan: Plan) -> float:
    """Host RAM one GPU's rank needs for offload (pinned unless noted): fp32 master 4, fp32 grads 4,
    CPU-Adam states 8, b16 staging 2 bytes per partitioned parameter (stage_1_and_2.py:560-574,
    937-941; stage3.py:1157-1172, 1337-1342; cpu_adam.py:153-164); +2 with gradient accumulation
    (accumulated_grads_in_cpu) in ZeRO-1/2; +2 for offloaded ZeRO-3 parameters
    (param_groups_fp16_flat_cpu_memory, stage3.py:888-911)."""
    if not plan.offload.optimizer_off_gpu:
        return 0.0
    n = max(stage_params(spec.model, s, plan.tp)
            for s in stages_to_check(spec.model, plan.pp, plan.grad_accum))
    per_param = 18.0
    if plan.zero < ZeroStage.PARAMETERS and plan.grad_accum > 1:
        per_param += RECIPES[plan.precision].grad_bytes
    if plan.offload.params_off_gpu:
        per_param += RECIPES[plan.precision].param_bytes
    if plan.offload.uses_nvme:
        per_param -= 8.0  # the Adam states live on NVMe, swapped through pinned buffers
    return per_param * n / plan.dp
