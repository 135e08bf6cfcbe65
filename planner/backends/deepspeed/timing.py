"""DeepSpeed's share of the step time: the data-parallel traffic each ZeRO stage issues (and
whether it overlaps backward by default), its host bookkeeping, the optimizer step under its
wrappers, and ZeRO-Offload's PCIe transfers and host Adam (docs/time-model.md)."""
from __future__ import annotations

import numpy as np

from planner.backends.deepspeed.memory import MEMORY_OPT_ALLREDUCE_SIZE, Wrapper, wrapper
from planner.model import fp8
from planner.model.activations import host_checkpoint_bytes
from planner.model.shape import (Stage, routed_expert_params, stage_params, stages_to_check,
                                 tensor_stats)
from planner.network import collectives as coll
from planner.network.topology import group_link
from planner.plan.strategy import Plan, where
from planner.spec.spec import Spec
from planner.spec.units import FP32_BYTES, ZeroStage


def host_us_per_micro_batch(spec: Spec, plan: Plan, stage: Stage):
    """DeepSpeed's host work per micro-batch, microseconds: per-tensor gradient hooks (ZeRO-1/2)
    or per-module fetch/release (ZeRO-3)."""
    rt = spec.runtime
    n_tensors = tensor_stats(spec.model, stage, plan.tp, 0).count
    modules = stage.n_layers * 6 + 3
    return where((plan.zero == ZeroStage.OPTIMIZER) | (plan.zero == ZeroStage.GRADIENTS),
                 n_tensors * rt.zero_hook_us,
                 where(plan.zero == ZeroStage.PARAMETERS, modules * 2 * rt.zero3_module_us, 0.0))


def zero3_fetch_units(spec: Spec, stage: Stage, tensors):
    """Collectives per pass of ZeRO-3's parameter gathers: one per parameter tensor (DeepSpeed
    before coalescing), per module (DeepSpeed's fetch_sub_module), or per block (FSDP units)."""
    granularity = spec.runtime.zero3_gather_granularity
    if granularity == "tensor":
        return tensors
    if granularity == "block":
        return stage.n_layers + 2
    return stage.n_layers * 6 + 3


def dp_traffic_seconds(spec: Spec, plan: Plan, stage: Stage, order):
    """(per step, per micro-batch) data-parallel communication of one rank.

    ZeRO-0 (and BF16_Optimizer) all-reduce the gradients once per step; ZeRO-1 reduce-scatters
    them once and all-gathers the updated parameters; ZeRO-2 reduce-scatters every micro-batch's
    gradients into its partition (stage_1_and_2.py reduce_ipg_grads); ZeRO-3 all-gathers the
    parameters in forward and again in backward and reduce-scatters the gradients, every
    micro-batch (ZeRO paper, section 7: 1.5x the data-parallel volume).  Gradient traffic goes
    in reduce_bucket_size buckets, each a collective paying the ring latency."""
    m = spec.model
    n = stage_params(m, stage, plan.tp)
    stride = plan.degrees.strides(order)["dp"]
    if not m.moe_layers:
        # context-parallel ranks hold the same model: gradients and ZeRO traffic run over the
        # dp x cp ranks (cp is inside dp in every order, so the group spans dp x stride ranks,
        # an even stride of stride / cp)
        return _dp_traffic(spec, plan, stage, n, plan.zero_ranks, stride // plan.cp)
    # DeepSpeed-MoE: the dense parameters reduce over dp; each rank's 1/ep of the routed experts
    # over its expert-data-parallel group, the dp / ep ranks ep apart holding the same experts
    experts = stage.n_layers * routed_expert_params(m)
    dense = _dp_traffic(spec, plan, stage, n - experts, plan.dp, stride)
    local = _dp_traffic(spec, plan, stage, experts / plan.ep, plan.dp // plan.ep,
                        stride * plan.ep)
    return dense[0] + local[0], dense[1] + local[1]


def _dp_traffic(spec: Spec, plan: Plan, stage: Stage, n, ranks, stride):
    """(per step, per micro-batch) traffic of n parameters' gradients (and ZeRO's parameters)
    over a group of ``ranks`` ranks ``stride`` apart."""
    rt = spec.runtime
    bf16_opt = wrapper(plan) == Wrapper.BF16_OPTIMIZER
    g = where(bf16_opt, FP32_BYTES, plan.grad_bytes)  # BF16_Optimizer reduces its fp32 buffer
    link = group_link(spec.cluster, ranks, stride)
    net = spec.cluster.gpu.efficiency.network
    all_reduce = coll.all_reduce(g * n, link, net, -(-n // MEMORY_OPT_ALLREDUCE_SIZE))
    gather = coll.all_gather(plan.param_bytes * n, link, net, -(-n // rt.allgather_bucket_size))
    scatter = coll.reduce_scatter(g * n, link, net, -(-n // rt.reduce_bucket_size))
    units = zero3_fetch_units(spec, stage, tensor_stats(spec.model, stage, plan.tp, 0).count)
    gathered = fp8.gathered_bytes_per_param(spec, plan, n, stage.n_layers) \
        if spec.runtime.fp8_all_gather else plan.param_bytes
    zero3 = 2 * coll.all_gather(gathered * n, link, net, units) + scatter
    z, single = plan.zero, ranks == 1
    per_step = where(single, 0.0,
                     where((z == ZeroStage.NONE) | bf16_opt, all_reduce,
                           where(z == ZeroStage.OPTIMIZER, scatter + gather,
                                 where(z == ZeroStage.GRADIENTS, gather, 0.0))))
    per_micro = where(single | (z < ZeroStage.GRADIENTS) | bf16_opt, 0.0,
                      where(z == ZeroStage.GRADIENTS, scatter, zero3))
    return per_step, per_micro


def overlap_on(spec: Spec, plan: Plan):
    """DeepSpeed's default: overlap_comm on for ZeRO-3 (prefetch), off for ZeRO-1/2; ZeRO-0's
    engine all-reduces after backward."""
    if spec.runtime.overlap_comm is not None:
        return bool(spec.runtime.overlap_comm) & (plan.zero >= ZeroStage.OPTIMIZER)
    return plan.zero == ZeroStage.PARAMETERS


def optimizer_seconds(spec: Spec, plan: Plan, n, n_tensors, held=None):
    """Memory-bound Adam over this rank's share: read fp32 master, grad, two moments, write them
    back and the low-precision copy (~32 bytes/param; +16 for PyTorch's foreach temporaries and
    the fp32 gradient cast), plus host work per tensor for unfused optimizers.  Without ZeRO the
    share is what the rank holds (``held``: with expert parallelism 1/ep of the experts), with
    ZeRO 1/dp of the stage's n."""
    whole = np.isin(wrapper(plan), [Wrapper.PLAIN, Wrapper.FP16_OPTIMIZER])
    local = where(whole, n if held is None else held, n / plan.zero_ranks)
    per_param = 32 + (16 if spec.runtime.torch_adam else 0)
    t = local * per_param / spec.cluster.gpu.hbm_bytes_per_s
    # ZeRO flattens each rank's share into one fp32 tensor; without ZeRO, PyTorch's AdamW and
    # FP16_UnfusedOptimizer walk the parameter tensors one by one on the host
    if spec.runtime.torch_adam:
        t = t + where(whole, n_tensors * spec.runtime.optimizer_tensor_us * 1e-6, 0.0)
    return where(plan.optimizer_off_gpu, 0.0, t)


def offload_seconds(spec: Spec, plan: Plan, n):
    """Optimizer offload: fp32 gradients down and b16 parameters up over PCIe, and
    DeepSpeedCPUAdam on the host (ZeRO-Offload, Ren et al. 2021)."""
    local = n / plan.zero_ranks
    pcie = spec.cluster.gpu.pcie_gbps * 1e9
    transfer = local * (FP32_BYTES + plan.param_bytes) / pcie
    optimizer = where(plan.optimizer_off_gpu,
                      transfer + local / spec.runtime.host_adam_params_per_s, 0.0)
    return optimizer + checkpoint_transfer_seconds(spec, plan)


def checkpoint_transfer_seconds(spec: Spec, plan: Plan):
    """CPU checkpointing: every block's checkpoint goes down in forward and back in backward,
    each micro-batch, over PCIe (counted unoverlapped: DeepSpeed copies them on the compute
    stream)."""
    if not spec.runtime.cpu_checkpointing:
        return 0.0
    layers = 0
    for stage in stages_to_check(spec.model, plan.pp, plan.grad_accum):
        layers = np.maximum(layers, stage.n_layers)
    per_block = host_checkpoint_bytes(spec.model, plan, True)
    return 2 * layers * plan.grad_accum * per_block / (spec.cluster.gpu.pcie_gbps * 1e9)
