"""Megatron-Core's share of the step time: the data-parallel traffic of its DDP and distributed
optimizer, its host bookkeeping and its fused optimizer step (docs/time-model.md)."""
from __future__ import annotations

import numpy as np

from planner.backends.megatron.memory import main_grad_bytes, optimizer_ranks
from planner.model.shape import Stage, routed_expert_params, stage_params
from planner.network import collectives as coll
from planner.network.topology import group_link
from planner.plan.strategy import Plan, where
from planner.spec.spec import Spec
from planner.spec.units import ZeroStage

#: Megatron-Core DDP's default bucket: max(40,000,000, 1,000,000 x dp) elements
#: (core/distributed/distributed_data_parallel.py, bucket_size unset)
MIN_BUCKET = 40_000_000
BUCKET_PER_RANK = 1_000_000


def host_us_per_micro_batch(spec: Spec, plan: Plan, stage: Stage):
    """No per-tensor or per-module bookkeeping beyond the kernels' own dispatch (counted for every
    backend): the DDP's gradient hooks only mark a bucket ready, and nothing is fetched."""
    return 0.0 * plan.dp


def dp_traffic_seconds(spec: Spec, plan: Plan, stage: Stage, order):
    """(per step, per micro-batch) data-parallel communication of one rank: once per step, the
    main gradients reduce-scattered in their dtype and the updated parameters all-gathered
    (distributed optimizer), or all-reduced (zero 0), in Megatron DDP's buckets.  Routed experts
    reduce over their expert-data-parallel group (dp / ep ranks, ep apart)."""
    m = spec.model
    n = stage_params(m, stage, plan.tp)
    stride = plan.degrees.strides(order)["dp"]
    if not m.moe_layers:
        return _traffic(spec, plan, n, plan.zero_ranks, stride // plan.cp), 0.0 * plan.dp
    experts = stage.n_layers * routed_expert_params(m)
    dense = _traffic(spec, plan, n - experts, plan.dp, stride)
    local = _traffic(spec, plan, experts / plan.ep, plan.dp // plan.ep, stride * plan.ep)
    return dense + local, 0.0 * plan.dp


def _traffic(spec: Spec, plan: Plan, n, ranks, stride):
    link = group_link(spec.cluster, ranks, stride)
    net = spec.cluster.gpu.efficiency.network
    g = main_grad_bytes(spec, plan)
    buckets = -(-n // np.maximum(MIN_BUCKET, BUCKET_PER_RANK * ranks))
    distributed = coll.reduce_scatter(g * n, link, net, buckets) \
        + coll.all_gather(plan.param_bytes * n, link, net, buckets)
    plain = coll.all_reduce(g * n, link, net, buckets)
    return where(ranks == 1, 0.0, where(plan.zero == ZeroStage.OPTIMIZER, distributed, plain))


def overlaps_dp(spec: Spec, plan: Plan):
    """Megatron's traffic is per step (priced whole: the overlap of the last micro-batch's
    reduce-scatter with backward, --overlap-grad-reduce, is not modelled)."""
    return plan.dp < 0


def optimizer_seconds(spec: Spec, plan: Plan, n, n_tensors, held=None):
    """Fused (multi-tensor) Adam over the rank's shard, memory-bound: about 32 bytes per
    parameter read and written (fp32 main parameter, gradient, two moments, the 16-bit copy)."""
    local = n / optimizer_ranks(plan)
    return local * 32 / spec.cluster.gpu.hbm_bytes_per_s


def offload_seconds(spec: Spec, plan: Plan, n):
    """Nothing is offloaded under this backend (rules.py)."""
    return 0.0 * plan.dp
