"""Activation memory: the tensors autograd keeps between forward and backward, per micro-batch.

The accounting follows Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models", section 4, eq. 1-2: 34·s·b·h + 5·a·s²·b per layer with dropout), adapted to
the model the executor builds (and the calibration harness mirrors): no dropout, a fused attention
kernel (scaled_dot_product_attention), norms as PyTorch/HF implement them, logits upcast to fp32
before cross-entropy.  Each function returns bytes on one GPU for ``b`` sequences.

Symbols: s sequence length, b micro-batch, h d_model, q query width (n_heads x head_dim, h for
most models), k = kv width (GQA),
f d_ff, a heads, V vocab, t tensor-parallel degree, e bytes per activation element.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from planner.model.local import local_dims
from planner.model.shape import layer_average
from planner.plan.strategy import Plan, where
from planner.spec.spec import ModelSpec
from planner.spec.units import (FP32_BYTES, INDEX_BYTES, Activation, AttentionKernel,
                                ContextParallel, Norm, Position, Precision, Recompute)


@dataclass(frozen=True)
class _Dims:
    """The paper's symbols bound once, from the rank's local shape (planner/model/local.py):
    widths are this rank's share."""

    s: Any  #: local sequence length
    b: Any  #: micro-batch
    h: int  #: d_model (whole on every rank)
    q: Any  #: query width on this rank
    k: Any  #: key (and value) width on this rank
    f: Any  #: MLP inner width on this rank
    a: Any  #: heads on this rank
    V: Any  #: vocabulary rows on this rank
    e: Any  #: bytes per activation element
    r: Any  #: share of norm-region tensors this rank keeps: 1/t with sequence parallel, else 1
    fused: bool  #: fused norm / rotary / SwiGLU / cross-entropy kernels (model.fused_kernels)
    fused_loss: bool = False  #: fused, chunked cross-entropy (model.loss_fused)
    cp: Any = 1  #: context-parallel ranks (s is already the local 1/cp of the sequence)
    ulysses: Any = False  #: cp > 1 through Ulysses' all-to-alls


def _dims(m: ModelSpec, plan: Plan) -> _Dims:
    ld = local_dims(m, plan)
    return _Dims(s=ld.seq, b=ld.micro_batch, h=ld.d_model, q=ld.q_width, k=ld.kv_width,
                 f=ld.ffn, a=ld.heads, V=ld.vocab, e=plan.activation_bytes, r=ld.norm_share,
                 fused=m.fused_kernels, fused_loss=m.loss_fused, cp=plan.cp,
                 ulysses=(plan.cp > 1) & plan.is_cp_kind(ContextParallel.ULYSSES))


def norm_saved_bytes(m: ModelSpec, d: _Dims) -> float:
    """What one norm keeps, its output (the next matmul's input, saved there) included.

    LayerNorm (aten native_layer_norm) saves its input plus fp32 mean and rstd per token.
    RMSNorm as Llama implements it (x.float(); x * rsqrt(mean(x²) + eps); .type_as(x) * weight)
    keeps the fp32 copy of x, the fp32 rsqrt per token and the normalised tensor in the compute
    dtype (for fp32 training the copy and the cast are no-ops, so both are the fp32 tensors).
    """
    sbh = d.s * d.b * d.h
    if m.norm is Norm.LAYERNORM:
        kept = d.e * sbh + 2 * FP32_BYTES * d.s * d.b
    elif d.fused:
        kept = d.e * sbh + FP32_BYTES * d.s * d.b  # fused kernel: input and rstd
    else:
        kept = (FP32_BYTES + d.e) * sbh + FP32_BYTES * d.s * d.b
    return (kept + d.e * sbh) * d.r  # + the normalised output the following linear saves


def math_fallback(m: ModelSpec, plan: Plan) -> bool:
    """fp32 with GQA: FlashAttention has no fp32 kernel and PyTorch's memory-efficient kernel does
    not take enable_gqa, so SDPA runs its math path (repeat k/v, materialise softmax)."""
    gqa = m.attention is AttentionKernel.FLASH and m.n_kv_heads != m.n_heads
    return plan.is_precision(Precision.FP32) & gqa


def attention_saved_bytes(m: ModelSpec, d: _Dims, plan: Plan) -> float:
    """QKV projection output, rotary copies of q and k, the attention output, the kernel's stats.

    Flash / memory-efficient SDPA saves q, k, v (v is a view of the fused QKV output, which it
    keeps alive), the output and the fp32 log-sum-exp per head and token (Dao et al. 2022,
    algorithm 2): no s² tensor.  Eager attention keeps what its two batched matmuls need, as the
    contiguous copies matmul makes of q, k^T and v (with GQA, k and v repeated to every query
    head), and the softmax probabilities (a·s²·b elements), which selective recompute drops
    (Korthikanti et al. 2022, section 4.2).
    SDPA's math path (fp32 with GQA) is eager attention plus its scaled copy of q.

    Context parallelism: every tensor holds the rank's s/cp tokens (ring attention keeps its
    own q, k, v, output and statistics; the K/V blocks it receives are transient).  Under
    Ulysses the kernel's q, k and v are the all-to-all's outputs (whole sequence, heads / cp:
    the same elements), new tensors, so the projection's fused output and the rotated copies
    are freed once exchanged; the kernel's output is exchanged back into a new tensor that the
    output projection keeps beside the kernel's own saved output.  Eager attention's s² tensors
    cover the whole sequence for heads / cp heads: cp times the local s².
    """
    sb = d.s * d.b
    rope = m.position is Position.ROPE and not d.fused
    # cos and sin the rotation's multiplies keep, over the rotated share of each head
    tables = d.e * d.s * m.head_dim * m.rotary_fraction if rope else 0
    out = d.e * sb * d.q  # attention output, also the output projection's input
    qkv = d.e * sb * (d.q + 2 * d.k)
    flash = qkv + out + tables + FP32_BYTES * d.b * d.a * d.s
    if rope:
        # rotated q and k are new tensors, contiguous in (B, H, T, hd); the fused kernel returns
        # its output in q's layout, so the transpose-and-reshape to (B, T, H·hd) before the
        # output projection copies it, and the projection keeps that copy beside the kernel's
        # own saved output: one more e·s·b·q.  Without RoPE q is a view of the fused QKV output,
        # already (B, T, H, hd), and the reshape is a view.  Measured on the CPU
        # (tests/executor/test_activation_accounting.py); on the H200 harness runs it is the
        # ~0.69 GiB per 8,192 tokens a 22-layer d_model-2048 Llama lacked (issue 11).
        flash += d.e * sb * (d.q + d.k) + d.e * sb * d.q
    # Ulysses: the exchanged q, k, v, the kernel's output and its exchanged copy, the stats
    ulysses_flash = qkv + 2 * out + tables + FP32_BYTES * d.b * d.a * d.s
    flash = where(d.ulysses, ulysses_flash, flash)
    kv = d.q if m.n_kv_heads != m.n_heads else d.k  # GQA repeats k and v to every query head
    eager = out + tables + d.e * sb * (d.q + 2 * kv)  # the batched matmuls' q, k^T, v
    eager = eager + where(d.ulysses, out, 0.0)  # the output exchanged back
    math = math_fallback(m, plan)
    eager = eager + where(math, d.e * sb * d.q, 0.0)
    eager = eager + where(plan.is_recompute(Recompute.SELECTIVE), 0.0,
                          d.e * d.b * d.a * d.s * d.s * d.cp)
    if m.attention is AttentionKernel.FLASH:
        return where(math, eager, flash)
    return eager


def mlp_saved_bytes(m: ModelSpec, d: _Dims) -> float:
    """GELU: fc output and GELU output (2·s·b·f); SwiGLU: gate+up output, silu(gate), product (4)."""
    if m.activation is Activation.SWIGLU:
        per_f = 3 if d.fused else 4  # fused: gate+up and the product; silu recomputed
    else:
        per_f = 2
    return d.e * d.s * d.b * d.f * per_f


def extra_norms_saved_bytes(m: ModelSpec, d: _Dims) -> float:
    """Gemma 2's post-attention and post-MLP norms (``norms_per_block: 4``): each keeps what a
    norm keeps for its own backward, but its output goes to the residual add, which saves
    nothing, so no following linear keeps it."""
    if m.norms_per_block == 2:
        return 0.0
    return 2 * (norm_saved_bytes(m, d) - d.e * d.s * d.b * d.h * d.r)


def shared_input_bytes(m: ModelSpec, d: _Dims) -> float:
    """With a parallel residual (GPT-NeoX) both norms read the block's input: a LayerNorm saves
    that one tensor once, where a sequential block's second norm saves attention's sum.  An
    RMSNorm's fp32 copy is made per norm either way."""
    if not m.parallel_residual or m.norm is not Norm.LAYERNORM:
        return 0.0
    return d.e * d.s * d.b * d.h * d.r


def expert_slots(m: ModelSpec, tokens):
    """Expert slots one MoE layer computes on for ``tokens`` tokens (E x C): DeepSpeed-MoE's
    capacity C = max(ceil(top_k x capacity_factor x tokens / experts), min_capacity) per expert
    when it drops tokens (sharded_moe.py _capacity), else the busiest expert's load, top_k x
    tokens / experts x load_imbalance (at most all the tokens)."""
    moe = m.moe
    even = moe.top_k * tokens / moe.experts
    if moe.drop_tokens:
        c = np.maximum(np.ceil(even * moe.capacity_factor), moe.min_capacity)
    else:
        c = np.minimum(np.ceil(even * moe.load_imbalance), tokens)
    return moe.experts * c


def moe_mlp_saved_bytes(m: ModelSpec, d: _Dims, plan: Plan) -> float:
    """What a mixture-of-experts MLP keeps, as DeepSpeed-MoE's layer runs it (sharded_moe.py,
    index dispatch; measured to 32 bytes with saved-tensor hooks, docs/hf-configs.md):

    the router's fp32 copy of its input (aliasing the input in fp32 training), its fp32 logits,
    probabilities and a third S x E fp32 tensor, the S x E mask, k x S slot indices (12 bytes
    each) and E x C + 1 source indices (int64), four fp32 values per token; the dispatched
    [E x C, d] expert input and each expert's MLP activations over its C slots; the k routed
    outputs [k, S, d] the combine weighs; the shared expert's MLP over every token and its gate.
    The block's norm output is no longer the input a linear saves unless the shared expert (or
    fp32, where the router's copy is the tensor itself) keeps it."""
    moe, e, S = m.moe, d.e, d.s * d.b
    slots = expert_slots(m, S)
    fp32 = e == FP32_BYTES  # an array for a batch
    router = where(fp32, 0.0, FP32_BYTES * d.h * S) + 3 * FP32_BYTES * S * moe.experts \
        + S * moe.experts + 12 * moe.top_k * S + INDEX_BYTES * (slots + 1) + 4 * FP32_BYTES * S
    norm_output = 0.0 if moe.shared_d_ff else where(fp32, 0.0, e * S * d.h * d.r)
    experts = e * slots * d.h + _mlp_per_token(m, d) * slots * moe.expert_d_ff
    shared = _mlp_per_token(m, d) * S * moe.shared_d_ff + (e * S if moe.shared_expert_gate else 0)
    routed = e * moe.top_k * S * d.h
    return router - norm_output + experts + shared + routed


def _mlp_per_token(m: ModelSpec, d: _Dims) -> float:
    """Bytes an MLP keeps per token per unit of its inner width (mlp_saved_bytes' factor)."""
    if m.activation is Activation.SWIGLU:
        return d.e * (3 if d.fused else 4)
    return d.e * 2


def _block_saved_bytes(m: ModelSpec, plan: Plan, moe: bool) -> float:
    d = _dims(m, plan)
    mlp = moe_mlp_saved_bytes(m, d, plan) if moe else mlp_saved_bytes(m, d)
    return (2 * norm_saved_bytes(m, d) + extra_norms_saved_bytes(m, d)
            - shared_input_bytes(m, d) + attention_saved_bytes(m, d, plan) + mlp)


def block_saved_bytes(m: ModelSpec, plan: Plan) -> float:
    """Everything one block keeps for backward when it is not recomputed: the average block when
    mixture-of-experts and dense blocks mix (planner/model/shape.py layer_params)."""
    return layer_average(m, lambda moe: _block_saved_bytes(m, plan, moe))


def block_input_bytes(m: ModelSpec, plan: Plan) -> float:
    """Full recompute keeps only each block's input (the checkpoint boundary)."""
    d = _dims(m, plan)
    return d.e * d.s * d.b * d.h * d.r


def matmul_output_widths(m: ModelSpec, d: _Dims) -> float:
    """Sum of the widths of one block's matmul outputs on this rank, in forward order: q, k, v
    (separate projections, as torchtitan's Llama has them), the output projection, the MLP's
    up (and gate) and down."""
    up = 2 * d.f if m.activation is Activation.SWIGLU else d.f
    return d.q + 2 * d.k + d.h + up + d.h


def op_saved_bytes(m: ModelSpec, plan: Plan) -> float:
    """Per-op selective checkpointing (torchtitan's "op" policy, torch.utils.checkpoint with
    create_selective_checkpoint_contexts): the block's input, the attention kernel's output and
    its fp32 log-sum-exp, and the outputs of every other matmul (the policy alternates over the
    model's matmuls: half of them on average); everything else is recomputed in backward."""
    d = _dims(m, plan)
    sb = d.s * d.b
    return (block_input_bytes(m, plan) + d.e * sb * d.q + FP32_BYTES * d.b * d.a * d.s
            + d.e * sb * matmul_output_widths(m, d) / 2)


def stored_per_block_bytes(m: ModelSpec, plan: Plan, cpu_checkpointing: bool = False) -> float:
    """What one block keeps on the GPU between its forward and backward: everything it saves,
    or under full recompute its input (in host memory instead with CPU checkpointing), or under
    per-op selective checkpointing what its policy saves."""
    checkpoint = 0.0 if cpu_checkpointing else block_input_bytes(m, plan)
    kept = where(plan.is_recompute(Recompute.OP), op_saved_bytes(m, plan),
                 block_saved_bytes(m, plan))
    return where(plan.is_recompute(Recompute.FULL), checkpoint, kept)


def host_checkpoint_bytes(m: ModelSpec, plan: Plan, cpu_checkpointing: bool) -> float:
    """Host memory per block for CPU checkpointing under full recompute: its input."""
    return where(plan.is_recompute(Recompute.FULL) & cpu_checkpointing,
                 block_input_bytes(m, plan), 0.0)


def block_backward_transient_bytes(m: ModelSpec, plan: Plan) -> float:
    """Extra memory while one block runs backward: the residual-stream gradient, the largest pair
    of intermediate gradients alive at once (in the MLP), and with full recompute the block's
    rematerialised activations (Chen et al. 2016, "Training Deep Nets with Sublinear Memory")."""
    d = _dims(m, plan)
    per_f = 4 if m.activation is Activation.SWIGLU else 2
    grads = d.e * d.s * d.b * (d.h + per_f * d.f)
    if m.moe_layers:  # a MoE block: its experts' intermediate gradients over their slots
        slots = expert_slots(m, d.s * d.b)
        moe = d.e * (d.s * d.b * d.h + slots * (d.h + per_f * m.moe.expert_d_ff))
        grads = moe if m.moe_layers == m.n_layers else np.maximum(grads, moe)
    rerun = plan.is_recompute(Recompute.FULL) | plan.is_recompute(Recompute.OP)
    return grads + cp_transient_bytes(m, d, plan) + where(rerun, block_saved_bytes(m, plan), 0.0)


def cp_transient_bytes(m: ModelSpec, d: _Dims, plan: Plan) -> float:
    """Context parallelism's buffers alive while one block's attention runs backward.  Ulysses:
    the gradients of q, k and v in the head layout and their exchanged copies (the all-to-all
    writes a new tensor).  Ring: the K/V block being received beside the one in use, and in
    backward their gradients travelling with them (Transformer Engine's p2p ring double-buffers
    K/V and dK/dV)."""
    sb = d.s * d.b
    ulysses = 2 * d.e * sb * (d.q + 2 * d.k)
    ring = 2 * 2 * d.e * sb * 2 * d.k
    per = where(plan.is_cp_kind(ContextParallel.RING), ring, ulysses)
    return where(plan.cp > 1, per, 0.0)


def cpu_checkpoint_transient_bytes(m: ModelSpec, plan: Plan, cpu_checkpointing: bool) -> float:
    """With CPU checkpointing, the block being recomputed has its input back on the GPU."""
    return host_checkpoint_bytes(m, plan, cpu_checkpointing)


def head_saved_bytes(m: ModelSpec, plan: Plan) -> float:
    """The final norm and the LM head's input, plus token ids and targets (int64)."""
    d = _dims(m, plan)
    return norm_saved_bytes(m, d) + 2 * INDEX_BYTES * d.s * d.b


def loss_dtype_bytes(m: ModelSpec, plan: Plan):
    return FP32_BYTES if m.loss_dtype == "fp32" else plan.activation_bytes


def logits_forward_peak_bytes(m: ModelSpec, plan: Plan) -> float:
    """At the loss in forward: the logits, their fp32 copy and log_softmax's output coexist."""
    d = _dims(m, plan)
    n = d.s * d.b * d.V
    if d.fused_loss:  # chunked cross-entropy: no full-size fp32 copies
        return n * d.e + softcap_saved_bytes(m, plan)
    loss = loss_dtype_bytes(m, plan)
    upcast = where(loss != d.e, loss, 0)
    return n * (d.e + upcast + loss) + softcap_saved_bytes(m, plan)


def softcap_saved_bytes(m: ModelSpec, plan: Plan) -> float:
    """A logit soft-cap, c·tanh(logits/c) in the compute dtype before the loss (Gemma 2 as
    transformers runs it): tanh's output is kept for its backward, one more logits-sized tensor
    through forward and backward of the loss."""
    if m.logit_softcap is None:
        return 0.0
    d = _dims(m, plan)
    return d.e * d.s * d.b * d.V


def logits_backward_peak_bytes(m: ModelSpec, plan: Plan) -> float:
    """Backward through cross-entropy: log_softmax's saved output, the gradient nll_loss hands it
    and the gradient it returns are three logits-sized tensors in the loss dtype at once
    (aten _log_softmax_backward_data).  Vocab-parallel: V/t per rank."""
    d = _dims(m, plan)
    if d.fused_loss:  # the logits and their gradient, computed chunk by chunk in the forward
        return 2 * d.e * d.s * d.b * d.V + softcap_saved_bytes(m, plan)
    return 3 * loss_dtype_bytes(m, plan) * d.s * d.b * d.V + softcap_saved_bytes(m, plan)
