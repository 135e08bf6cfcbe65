"""Step time of one strategy: compute (GEMMs at a shape-dependent efficiency, fused attention,
memory-bound element-wise work), tensor/pipeline/data-parallel communication over the cluster
topology (alpha-beta), the 1F1B pipeline bubble, the optimizer step, offload, and the host's
kernel-dispatch time.  Every term is a pure function; docs/time-model.md gives the formulas."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

import numpy as np

from planner.backends.base import Backend
from planner.backends.registry import backend_for
from planner.model import activations as act
from planner.model import fp8
from planner.model.flops import causal_pairs, step_flops, utilisation
from planner.model.local import local_dims
from planner.model.shape import (Stage, layer_average, mlp_matrices, stage_params,
                                 stages_to_check, tensor_stats)
from planner.network import collectives as coll
from planner.network.topology import group_link
from planner.plan.degrees import ORDERS
from planner.plan.strategy import PRECISIONS, Plan, where
from planner.spec.profile import constant_value
from planner.spec.spec import Spec
from planner.spec.units import (TERA, Activation, AttentionKernel, ContextParallel, Fp8Recipe,
                                Norm, Position, Precision, Recompute)


@dataclass(frozen=True)
class StepTime:
    """Seconds per optimizer step on the slowest pipeline stage, by where the time goes."""

    compute: Any = 0.0  #: GEMMs, attention, element-wise work, host dispatch when it dominates
    tp_comm: Any = 0.0  #: tensor-parallel all-reduces (never overlapped)
    ep_comm: Any = 0.0  #: expert-parallel all-to-alls of the MoE layers (never overlapped)
    cp_comm: Any = 0.0  #: context parallelism: Ulysses all-to-alls, or ring exchange not hidden
    pp_comm: Any = 0.0  #: pipeline activation/gradient transfers
    bubble: Any = 0.0  #: 1F1B fill and drain: (p - 1) / v micro-batch slots
    dp_comm: Any = 0.0  #: exposed data-parallel gradient / ZeRO parameter traffic
    optimizer: Any = 0.0  #: the optimizer step (memory-bound) and its host work
    offload: Any = 0.0  #: PCIe transfers and host-side Adam when the optimizer is offloaded
    placement: Any = "tp,dp,pp"

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self) if f.name != "placement")

    def as_dict(self) -> dict[str, float]:
        d = {f.name: float(getattr(self, f.name)) for f in fields(self) if f.name != "placement"}
        d["total"] = float(self.total)
        return d


# ------------------------------------------------------------------------------- compute

def gemm_efficiency(spec: Spec, plan: Plan, m: float, n: float, k: float) -> float:
    """Fraction of dense peak a GEMM of this shape reaches: small dimensions leave tensor cores
    idle (tile quantisation, too few waves); saturates at gemm_max for large shapes.  fp32 runs
    on the SIMT units, which saturate at much smaller shapes."""
    eff = spec.cluster.gpu.efficiency
    fp32 = plan.is_precision(Precision.FP32)
    top = where(fp32, eff.gemm_fp32_max, eff.gemm_max)
    half = where(fp32, eff.gemm_fp32_half_dim, eff.gemm_half_dim)
    return top * (m / (m + half)) * (n / (n + half)) * (k / (k + half))


def _peak_key(p: Precision) -> str:
    """The peak a precision's GEMMs run at outside fp8's: fp8 training is bf16 training whose
    block GEMMs alone run in fp8 (planner/model/fp8.py)."""
    return "bf16" if p is Precision.FP8 else p.value


def peak_flops(spec: Spec, plan: Plan) -> float:
    """Dense peak for the precision (bf16's for fp8 plans: the head, attention and MFU); fp32
    matmuls run on TF32 tensor cores where the GPU has them (PyTorch's allow_tf32 / DeepSpeed
    default for fp32 training is not assumed: fp32 peak)."""
    peaks = spec.cluster.gpu.peak_tflops
    if isinstance(plan.precision, Precision):
        return peaks[_peak_key(plan.precision)] * TERA
    table = np.array([peaks.get(_peak_key(p), np.nan) for p in PRECISIONS]) * TERA
    return table[plan.precision]


def fp8_gemm_seconds(spec: Spec, shapes) -> float:
    """Forward + backward of these GEMMs on fp8 tensor cores: the fp8 peak at the fp8 efficiency
    curve (gemm_fp8_max, gemm_fp8_half_dim)."""
    eff, peaks = spec.cluster.gpu.efficiency, spec.cluster.gpu.peak_tflops
    if "fp8" not in peaks:
        return np.inf
    top = eff.gemm_fp8_max if eff.gemm_fp8_max is not None \
        else eff.gemm_max * fp8.FP8_MAX_RATIO
    half = eff.gemm_fp8_half_dim if eff.gemm_fp8_half_dim is not None \
        else fp8.FP8_HALF_DIM_RATIO * eff.gemm_half_dim
    if fp8.recipe(spec) is Fp8Recipe.TORCHAO_ROWWISE:
        top = top * fp8.ROWWISE_GEMM_RATIO
    peak = peaks["fp8"] * TERA
    return sum(3 * 2 * m * n * k / (peak * top * (m / (m + half)) * (n / (n + half))
                                    * (k / (k + half))) for m, n, k in shapes)


def block_gemm_seconds(spec: Spec, plan: Plan, shapes) -> float:
    """A block's own GEMMs: in fp8 for fp8 plans, else at the precision's peak."""
    plain = gemm_seconds(spec, plan, shapes)
    fp8 = plan.is_precision(Precision.FP8)
    if not np.any(fp8):
        return plain
    return where(fp8, fp8_gemm_seconds(spec, shapes), plain)


def block_gemms(spec: Spec, plan: Plan) -> list[tuple[int, int, int]]:
    """(M, N, K) of one block's forward GEMMs on one tp rank: fused QKV, output projection,
    MLP up (gate and up fused for SwiGLU) and down; M = tokens of a micro-batch."""
    ld = local_dims(spec.model, plan)
    tokens, d = ld.tokens, ld.d_model
    up = (mlp_matrices(spec.model) - 1) * ld.ffn
    return [(tokens, ld.q_width + 2 * ld.kv_width, d), (tokens, d, ld.q_width),
            (tokens, up, d), (tokens, d, ld.ffn)]


def gemm_seconds(spec: Spec, plan: Plan, shapes: list[tuple[int, int, int]]) -> float:
    """Forward + backward (data and weight gradients: 3x the forward's FLOPs) of these GEMMs."""
    peak = peak_flops(spec, plan)
    return sum(3 * 2 * m * n * k / (peak * gemm_efficiency(spec, plan, m, n, k)) for m, n, k in shapes)


#: the GPU efficiencies (forward, backward) of each fused attention kernel generation
#: (runtime.attention_kernel): FlashAttention-2, its first generation (flash-attn 1.x and the
#: Triton port MPT ran), Transformer Engine's (Megatron-Core, NeMo)
ATTENTION_CONSTANTS = {"flash2": ("attention_fwd", "attention_bwd"),
                       "flash1": ("attention_flash1_fwd", "attention_flash1_bwd"),
                       "te": ("attention_te_fwd", "attention_te_bwd")}


def ring_merge_bytes(spec: Spec, plan: Plan) -> tuple[float, float]:
    """HBM traffic (forward, backward) of PyTorch's ring attention merging its steps, one block
    and micro-batch on the busiest cp rank (the last: every later step takes its whole query
    slice).  torch.distributed.tensor.experimental.context_parallel (torchtitan's CP, so backend
    fsdp) runs each step's SDPA call, then on the same stream upcasts the step's output to fp32
    and folds it into the running output with separate element-wise ops (_SDPAMerger:
    out - sigmoid(lse_step - lse) * (out - out_step), about 36 bytes per element beyond the
    upcast), concatenates K and V for the next step, and downcasts at the end.  Its backward
    accumulates dq, dk and dv in fp32 per step, rebuilding the half it updates with torch.cat
    (_partial_update), and concatenates dk and dv in fp32 to pass them on.  Transformer
    Engine's ring (Megatron-Core, NeMo: backend megatron) corrects the output with one fused
    kernel per step on a second stream, under the next step's attention: not priced."""
    ld, e, cp = local_dims(spec.model, plan), plan.activation_bytes, plan.cp
    out = ld.tokens * ld.q_width  # elements of the rank's attention output (and dq)
    kv = ld.tokens * ld.kv_width  # of its K (and of V)
    later = cp - 1
    fwd = (2 * e + 8) * out + later * ((e + 36) * out + 2 * e * 2 * kv)
    bwd = (8 + e) * out + (8 + 3 * e) * 2 * kv + cp * ((8 + e) * out + (20 + 2.5 * e) * 2 * kv)
    torch_ring = (cp > 1) & plan.is_cp_kind(ContextParallel.RING) \
        & (spec.runtime.backend == "fsdp")
    return where(torch_ring, fwd, 0.0), where(torch_ring, bwd, 0.0)


def attention_seconds(spec: Spec, plan: Plan) -> tuple[float, float]:
    """(forward, backward) of one block's attention core.  Fused kernels skip the masked half of
    a causal s x s product (Dao 2023); FlashAttention's backward does 2.5x the forward's matmuls.
    Eager attention runs QK^T and PV as batched GEMMs over the full square plus a memory-bound
    softmax over a·s² elements per sequence.  PyTorch's ring attention adds the memory traffic
    of merging its steps (ring_merge_bytes).

    Context parallelism gives each of the cp ranks 1/cp of the pairs: Ulysses attends over the
    whole sequence with heads / cp heads; ring attention over its own queries against every
    K/V block, load-balanced for causality (Megatron-Core / Transformer Engine split the
    sequence into 2·cp chunks, rank i holding chunks i and 2·cp - 1 - i)."""
    mdl, peak = spec.model, peak_flops(spec, plan)
    ld = local_dims(mdl, plan)
    b, q, cp = ld.micro_batch, ld.q_width, ld.cp
    eff = spec.cluster.gpu.efficiency
    if mdl.attention is AttentionKernel.FLASH:
        fwd_flops = 4 * b * causal_pairs(mdl) * q / cp  # 4·b·s²·h halved by causality (or band)
        fp32 = plan.is_precision(Precision.FP32)
        kernel = ATTENTION_CONSTANTS[spec.runtime.attention_impl]
        fwd, bwd = constant_value(spec, kernel[0]), constant_value(spec, kernel[1])
        fwd = where(fp32, eff.attention_fp32, fwd)
        bwd = where(fp32, eff.attention_fp32, bwd)
        merge_f, merge_b = ring_merge_bytes(spec, plan)
        hbm = spec.cluster.gpu.hbm_bytes_per_s
        return (fwd_flops / (peak * fwd) + merge_f / hbm,
                2.5 * fwd_flops / (peak * bwd) + merge_b / hbm)
    s = ld.seq * cp  # eager attention under Ulysses: the whole sequence, heads / cp
    fwd_flops = 4 * b * s * s * q / cp
    gemm = fwd_flops / (peak * gemm_efficiency(spec, plan, s, s, mdl.head_dim))
    e = plan.activation_bytes
    softmax_bytes = 4 * e * b * ld.heads / cp * s * s  # scale+mask+softmax read/write
    mem = softmax_bytes / spec.cluster.gpu.hbm_bytes_per_s
    return gemm + mem, 2 * gemm + 2 * mem


def elementwise_bytes_per_token(spec: Spec, plan: Plan) -> float:
    """HBM traffic of one block's memory-bound kernels in forward, per token on one tp rank.

    Fused kernels (one read and one write per norm, activation, residual add and rotary
    embedding) or PyTorch's eager ops as the executor's model runs them: RMSNorm's upcast, square,
    mean, rsqrt-multiply, downcast and weight multiply; RoPE's four multiplies, add, stack; SwiGLU's
    silu and product; the residual adds."""
    mdl, e, ld = spec.model, plan.activation_bytes, local_dims(spec.model, plan)
    h, f, qk = ld.d_model, ld.ffn, ld.q_width + ld.kv_width
    fused = spec.model.fused_kernels
    n = mdl.norms_per_block
    if mdl.norm is Norm.LAYERNORM or fused:
        norms = n * 2 * e * h
    else:
        norms = n * ((e + 4) + 4 + 4 + (4 + 4) + (4 + e) + 2 * e + e) * h
    rope = (2 * e * qk if fused else 10 * e * qk) if mdl.position is Position.ROPE else 0
    if mdl.activation is Activation.SWIGLU:
        act = 3 * e * f if fused else 5 * e * f
    else:
        act = 2 * e * f
    adds = 2 * 3 * e * h
    return norms + rope + act + adds


def loss_bytes_per_token(spec: Spec, plan: Plan) -> float:
    """Logits traffic on the last stage: the fp32 upcast, log-softmax, nll and their backward
    (about eight logits-sized passes); a fused cross-entropy reads the logits once each way."""
    e, v = plan.activation_bytes, local_dims(spec.model, plan).vocab
    # a logit soft-cap (Gemma 2) divides, tanhs and multiplies the logits: three passes each way
    softcap = 2 * 3 * 2 * e * v if spec.model.logit_softcap is not None else 0
    if spec.model.loss_fused:
        return 2 * (e + e) * v + softcap
    return (e + 4 + 4 + 4 + 4 + 4 + 4 + 4 + 4 + e) * v + softcap


def moe_gemm_seconds(spec: Spec, plan: Plan) -> float:
    """A mixture-of-experts MLP, forward + backward: each local expert's two (SwiGLU: fused gate
    and up, then down) GEMMs over its slots, filled or not (DeepSpeed-MoE computes all E x C
    slots), the shared expert's over every token, and the router's d_model x experts GEMM, which
    DeepSpeed runs in fp32 (sharded_moe.py TopKGate: input.float() @ wg.weight.float()) on the
    fp32 units."""
    m, ld = spec.model, local_dims(spec.model, plan)
    moe, tokens, d = m.moe, ld.tokens, ld.d_model
    up = mlp_matrices(m) - 1
    # after the dispatch all-to-all a rank runs its experts / ep local experts, each on the C
    # slots every one of the ep ranks sent it (Experts.forward chunks the [ep, E/ep, C, d] input
    # per local expert): the same FLOPs as E experts x C slots, in fewer, taller GEMMs
    rows = act.expert_slots(m, tokens) / moe.experts * plan.ep
    local = moe.experts / plan.ep
    expert = gemm_seconds(spec, plan, [(rows, up * moe.expert_d_ff, d),
                                       (rows, d, moe.expert_d_ff)])
    shared = gemm_seconds(spec, plan, [(tokens, up * moe.shared_d_ff, d),
                                       (tokens, d, moe.shared_d_ff)]) if moe.shared_d_ff else 0.0
    eff = spec.cluster.gpu.efficiency
    half = eff.gemm_fp32_half_dim
    f32 = spec.cluster.gpu.peak_tflops.get("fp32", 1.0) * TERA * eff.gemm_fp32_max * (
        tokens / (tokens + half)) * (moe.experts / (moe.experts + half)) * (d / (d + half))
    router = 3 * 2 * tokens * d * moe.experts / f32
    return local * expert + shared + router


def moe_elementwise_bytes(spec: Spec, plan: Plan) -> float:
    """HBM traffic of a MoE layer's routing in forward: the router's fp32 copy of its input and
    softmax and masks over S x experts, the dispatch gather of E x C rows, the combine's k routed
    rows weighed in fp32 and summed."""
    m, ld, e = spec.model, local_dims(spec.model, plan), plan.activation_bytes
    moe, tokens, d = m.moe, ld.tokens, ld.d_model
    slots = act.expert_slots(m, tokens)
    router = tokens * d * (e + 4) + 6 * 4 * tokens * moe.experts
    return router + 2 * e * slots * d + moe.top_k * tokens * d * (2 * e + 2 * 4)


def _block_seconds(spec: Spec, plan: Plan, moe: bool) -> float:
    """One block (dense, or with experts), one micro-batch: forward + backward, plus the
    recomputed forward."""
    shapes = block_gemms(spec, plan)
    attn_f, attn_b = attention_seconds(spec, plan)
    tokens = local_dims(spec.model, plan).tokens
    elem_bytes = elementwise_bytes_per_token(spec, plan) * tokens
    if moe:
        shapes = shapes[:2]  # attention's projections; the MLP is the experts'
        elem_bytes = elem_bytes + moe_elementwise_bytes(spec, plan)
    elem_bytes = 3 * elem_bytes + fp8.cast_bytes_per_micro_batch(spec, plan)
    elem = elem_bytes / spec.cluster.gpu.hbm_bytes_per_s
    gemm = block_gemm_seconds(spec, plan, shapes) \
        + (moe_gemm_seconds(spec, plan) if moe else 0.0)
    # per-op selective: every other matmul and all the element-wise work run again, the
    # attention kernel does not
    extra = where(plan.is_recompute(Recompute.FULL), gemm / 3 + attn_f + elem / 3,
                  where(plan.is_recompute(Recompute.SELECTIVE), attn_f,
                        where(plan.is_recompute(Recompute.OP), gemm / 6 + elem / 3, 0.0)))
    return gemm + attn_f + attn_b + elem + extra


def block_forward_backward_seconds(spec: Spec, plan: Plan) -> float:
    """One block, one micro-batch: forward + backward, plus the recomputed forward; the average
    block when mixture-of-experts and dense blocks mix (planner/model/shape.py layer_params)."""
    return layer_average(spec.model, lambda moe: _block_seconds(spec, plan, moe))


def head_seconds(spec: Spec, plan: Plan) -> float:
    """LM head GEMM (vocab-parallel) and the loss's memory traffic for one micro-batch."""
    ld = local_dims(spec.model, plan)
    tokens = ld.tokens
    # a rank's vocabulary shard is rounded up (the last shard is padded), never to 0 rows: a
    # vocabulary smaller than tp still costs each rank a 1-row GEMM, not 0/0
    gemm = gemm_seconds(spec, plan, [(tokens, np.ceil(ld.vocab), ld.d_model)])
    return gemm + loss_bytes_per_token(spec, plan) * tokens / spec.cluster.gpu.hbm_bytes_per_s


# ------------------------------------------------------------------------------ host work

#: host dispatch of the eager (unfused) Llama components, forward + backward, in units of one
#: eager GPT-2 block's twelfth (the unit cpu_op_us prices): an RMSNorm as the executor and the
#: harness write it (fp32 upcast, pow, mean, rsqrt, two multiplies, downcast), RoPE recomputing
#: its tables every call, SwiGLU's chunk, silu and product.  Measured from the executor's block
#: code by bench/host_dispatch.py (bench/results/host_dispatch.txt): the whole eager Llama block
#: costs 1.6x GPT-2's, not the 3.2x that counting their kernels gives, because most of a block's
#: host time is per module and per autograd node, not per element-wise kernel
EAGER_HOST_UNITS = {"rmsnorm": 2.3, "rope": 5.6, "swiglu": 1.3}


def kernels_per_block(spec: Spec, ep=1) -> float:
    """Host dispatch units of one block's forward, in eager GPT-2 kernels (its norms, GEMMs,
    attention, activation, adds: 12): fused kernels count one each; the eager Llama components
    their measured host cost (EAGER_HOST_UNITS).  Backward is priced as twice the forward."""
    mdl = spec.model
    fused = spec.model.fused_kernels
    norms = 2 * (1 if mdl.norm is Norm.LAYERNORM or fused else EAGER_HOST_UNITS["rmsnorm"])
    rope = (2 if fused else EAGER_HOST_UNITS["rope"]) if mdl.position is Position.ROPE else 0
    act = 1 if fused or mdl.activation is Activation.GELU else EAGER_HOST_UNITS["swiglu"]
    dense = norms + rope + act + 4 + 3 + 2
    if not mdl.moe_layers:
        return dense
    # a MoE layer: the router (~20 kernels: fp32 cast, GEMM, softmax, top-k, masks, cumsum,
    # capacity), dispatch and combine (~10), each expert's MLP instead of one, the shared expert
    moe = mdl.moe
    per_mlp = act + 2
    local = moe.experts / ep  # a rank launches its local experts' kernels only
    sparse = dense - per_mlp + 30 + local * per_mlp + (per_mlp + 2 if moe.shared_d_ff else 0)
    return ((mdl.n_layers - mdl.moe_layers) * dense + mdl.moe_layers * sparse) / mdl.n_layers


def host_seconds_per_micro_batch(spec: Spec, plan: Plan, stage: Stage,
                                 backend: Optional[Backend] = None) -> float:
    """Host time to issue one micro-batch: 3x the forward's kernels per block (forward, backward,
    recompute counted once more), plus the backend's own bookkeeping (hooks, fetch/release)."""
    rt = spec.runtime
    passes = 3 + where(plan.is_recompute(Recompute.FULL) | plan.is_recompute(Recompute.OP), 1, 0)
    # context parallelism per block and pass: Ulysses' four all-to-alls and their reshapes; a
    # ring's per-step attention calls, sends/receives and softmax corrections
    ring = plan.is_cp_kind(ContextParallel.RING)
    cp_kernels = where(plan.cp > 1, where(ring, 4 * (plan.cp - 1) + 2, 12), 0)
    kernels = stage.n_layers * (kernels_per_block(spec, plan.ep) + cp_kernels) * passes + 20
    backend = backend or backend_for(spec)
    return (kernels * rt.cpu_op_us + backend.host_us_per_micro_batch(spec, plan, stage)) * 1e-6


# --------------------------------------------------------------------------- communication

def tp_seconds_per_micro_batch(spec: Spec, plan: Plan, stage: Stage, order) -> float:
    """Megatron tensor parallelism: two all-reduces of s·b·h per block in forward, two in backward
    and two more in a recomputed forward (with sequence parallelism the same volume as
    reduce-scatter + all-gather); one for the vocab-parallel embedding/loss."""
    ld = local_dims(spec.model, plan)
    size = plan.activation_bytes * ld.tokens * ld.d_model
    link = group_link(spec.cluster, plan.tp, plan.degrees.strides(order)["tp"])
    per = coll.all_reduce(size, link, spec.cluster.gpu.efficiency.network)
    count = 4 + where(plan.is_recompute(Recompute.FULL), 2, 0)
    return (stage.n_layers * count + 2) * per


def ep_seconds_per_micro_batch(spec: Spec, plan: Plan, stage: Stage, order) -> float:
    """DeepSpeed-MoE's two all-to-alls per MoE layer in forward (dispatch, combine), two in
    backward and two more in a recomputed forward, each moving the [experts x C, d_model] slot
    tensor among the ep ranks of the group (sharded_moe.py _AllToAll).  The ep group is ep
    consecutive ranks of the data-parallel group."""
    m = spec.model
    if not m.moe_layers:
        return 0.0 * plan.ep
    ld = local_dims(m, plan)
    size = plan.activation_bytes * act.expert_slots(m, ld.tokens) * ld.d_model
    link = group_link(spec.cluster, plan.ep, plan.degrees.strides(order)["dp"])
    per = coll.all_to_all(size, link, spec.cluster.gpu.efficiency.network)
    calls = 4 + where(plan.is_recompute(Recompute.FULL), 2, 0)
    return stage.n_layers * m.moe_layers / m.n_layers * calls * per


def cp_seconds_per_micro_batch(spec: Spec, plan: Plan, stage: Stage, order) -> float:
    """Context parallelism's exchanges for one micro-batch on one stage, as far as they are not
    hidden.

    Ulysses (Jacobs et al. 2023, DeepSpeed deepspeed/sequence/layer.py DistributedAttention):
    all-to-alls of q, k and v before the local attention (sequence split -> head split) and of
    its output after, each a rank's [s/cp, width] slice; backward moves the gradients the same
    way; a recomputed forward repeats the forward's.  They run on the compute stream, exposed.

    Ring (Megatron-Core context parallelism through Transformer Engine's fused attention, cp
    communication type p2p; torchtitan's ring): cp - 1 steps, each sending the K/V block a rank
    holds to the next rank while attending to the one it has; backward passes K/V and their
    gradients (twice the bytes).  Each step's transfer hides under that step's attention, so
    what shows is the transfer time beyond the attention time."""
    ld = local_dims(spec.model, plan)
    e, cp = plan.activation_bytes, ld.cp
    # an order that does not name cp leaves it at degree 1
    link = group_link(spec.cluster, cp, plan.degrees.strides(order).get("cp", 1))
    net = spec.cluster.gpu.efficiency.network
    rc = where(plan.is_recompute(Recompute.FULL), 1, 0)
    tokens = ld.tokens
    a2a = [coll.all_to_all(e * tokens * w, link, net)
           for w in (ld.q_width, ld.kv_width, ld.kv_width, ld.q_width)]
    ulysses = (2 + rc) * sum(a2a)
    kv = e * tokens * 2 * ld.kv_width
    attn_f, attn_b = attention_seconds(spec, plan)
    steps = np.maximum(cp - 1, 0)
    fwd = np.maximum(0.0, steps * coll.p2p(kv, link, net) - attn_f)
    bwd = np.maximum(0.0, steps * coll.p2p(2 * kv, link, net) - attn_b)
    ring = (1 + rc) * fwd + bwd
    per_layer = where(plan.is_cp_kind(ContextParallel.RING), ring, ulysses)
    return where(cp > 1, stage.n_layers * per_layer, 0.0)


def pp_seconds_per_micro_batch(spec: Spec, plan: Plan, order) -> float:
    """Send the activation forward and its gradient back across a stage boundary."""
    ld = local_dims(spec.model, plan)
    size = plan.activation_bytes * ld.tokens * ld.d_model / ld.tp
    link = group_link(spec.cluster, plan.pp, plan.degrees.strides(order)["pp"])
    return 2 * coll.p2p(size, link, spec.cluster.gpu.efficiency.network)


# ------------------------------------------------------------------------------ step time

def stage_micro_batch_seconds(spec: Spec, plan: Plan, stage: Stage,
                              backend: Optional[Backend] = None):
    """(GPU compute, host dispatch) of one micro-batch on one stage."""
    gpu = stage.n_layers * block_forward_backward_seconds(spec, plan) \
        + stage.has_head * head_seconds(spec, plan)
    return gpu, host_seconds_per_micro_batch(spec, plan, stage, backend)


def step_time_for_order(spec: Spec, plan: Plan, order,
                        backend: Optional[Backend] = None) -> StepTime:
    """The step on the slowest stage: m micro-batch slots, the bubble, the exposed
    data-parallel traffic, the optimizer and offload."""
    backend = backend or backend_for(spec)
    worst = None
    for stage in stages_to_check(spec.model, plan.pp, plan.grad_accum):
        gpu, host = stage_micro_batch_seconds(spec, plan, stage, backend)
        comp = np.maximum(host, gpu + spec.runtime.host_sync_fraction * host)
        tp_t = tp_seconds_per_micro_batch(spec, plan, stage, order)
        ep_t = ep_seconds_per_micro_batch(spec, plan, stage, order)
        cp_t = cp_seconds_per_micro_batch(spec, plan, stage, order)
        pp_t = pp_seconds_per_micro_batch(spec, plan, order)
        per_step, per_micro = backend.dp_traffic_seconds(spec, plan, stage, order)
        n = stage_params(spec.model, stage, plan.tp)
        held = stage_params(spec.model, stage, plan.tp, plan.ep)
        here = dict(held=held, slot=comp + tp_t + ep_t + cp_t + pp_t, comp=comp, tp=tp_t, ep=ep_t,
                    cp=cp_t, pp=pp_t,
                    per_step=per_step,
                    per_micro=per_micro, n=n, layers=stage.n_layers,
                    tensors=tensor_stats(spec.model, stage, plan.tp, 0).count)
        if worst is None:
            worst = here
        else:
            slower = here["slot"] > worst["slot"]
            worst = {k: where(slower, here[k], worst[k]) for k in worst}
    m = plan.grad_accum
    # prefetch/bucketing hides traffic under the same micro-batch's compute; the first gather
    # and the last reduction (one block's share) stay exposed, and while the collectives run,
    # their kernels hold SMs the compute would have used (overlap_slowdown of its rate)
    slowdown = spec.cluster.gpu.efficiency.overlap_slowdown
    hidden = np.maximum(0.0, worst["per_micro"] - worst["comp"]) \
        + worst["per_micro"] / np.maximum(1, worst["layers"]) \
        + slowdown * np.minimum(worst["per_micro"], worst["comp"])
    exposed_micro = where(backend.overlaps_dp(spec, plan), hidden, worst["per_micro"])
    bubble = (plan.pp - 1) / spec.runtime.virtual_stages * worst["slot"]
    return StepTime(compute=m * worst["comp"], tp_comm=m * worst["tp"], ep_comm=m * worst["ep"],
                    cp_comm=m * worst["cp"], pp_comm=m * worst["pp"],
                    bubble=bubble, dp_comm=m * exposed_micro + worst["per_step"],
                    optimizer=backend.optimizer_seconds(spec, plan, worst["n"],
                                                        worst["tensors"], worst["held"]),
                    offload=backend.offload_seconds(spec, plan, worst["n"]),
                    placement=",".join(order))


def step_time(spec: Spec, plan: Plan, backend: Optional[Backend] = None) -> StepTime:
    """The faster of the rank placements worth trying (elementwise for a batch)."""
    backend = backend or backend_for(spec)
    times = [step_time_for_order(spec, plan, order, backend) for order in ORDERS]
    if not isinstance(plan.dp, np.ndarray):
        return min(times, key=lambda st: st.total)
    best = times[0]
    for other in times[1:]:
        faster = other.total < best.total
        best = StepTime(**{f.name: np.where(faster, getattr(other, f.name), getattr(best, f.name))
                           for f in fields(StepTime)})
    return best


@dataclass(frozen=True)
class Throughput:
    step: StepTime
    tokens_per_s: float
    mfu: float  #: model FLOPs (no recompute) / (step time x GPUs x dense peak)
    hfu: float  #: the same with recompute's extra forward counted


def throughput(spec: Spec, plan: Plan, backend: Optional[Backend] = None) -> Throughput:
    """Step time, tokens/s and utilisation; arrays for a PlanBatch."""
    st = step_time(spec, plan, backend)
    flops = step_flops(spec.model, plan, spec.global_batch_sequences)
    peak = peak_flops(spec, plan)
    return Throughput(st, flops.tokens / st.total,
                      utilisation(flops.model, st.total, plan.world_size, peak),
                      utilisation(flops.hardware, st.total, plan.world_size, peak))


__all__ = ["StepTime", "Throughput", "step_time", "throughput"]
