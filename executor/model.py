"""The GPT the executor trains, built from a ``ModelSpec`` alone.

It mirrors the calibration harness (``shared/calibration/reference_harness.py``) tensor for
tensor, because the planner's memory model (``planner/activations.py``) and parameter count
(``planner/shape.py``) describe exactly these tensors: a fused QKV projection whose q, k, v are
views, RoPE as new q/k tensors, ``scaled_dot_product_attention`` (or the eager softmax path), a
GELU MLP or a fused gate/up SwiGLU, LayerNorm or Llama's RMSNorm, logits upcast before the loss.

It knows nothing of DeepSpeed's engine.  The one exception is a mixture-of-experts MLP, which
is DeepSpeed-MoE's layer (``deepspeed.moe.layer.MoE``: the router, the capacity-bounded index
dispatch and the all-to-alls are that layer's), imported only when the spec has experts; the
plain model holds every expert (ep 1) and needs no process group.  Parallelism is applied to it
from outside: ``pipeline_layers()`` hands the layers to a ``PipelineModule``;
executor/tensor_parallel.py column-shards ``qkv``/``fc``/``w13``, row-shards
``proj``/``fc2``/``w2`` and splits the token table and the head over the vocabulary (the
attention follows the local width of ``qkv``; ``loss_fn`` becomes the vocab-parallel loss);
executor/parallel.py rebuilds each ``MoEMLP`` with ``ep`` > 1, keeping this rank's experts;
executor/context_parallel.py wraps each attention's ``core`` in DeepSpeed-Ulysses'
all-to-alls and moves ``first_position`` to the rank's slice of the sequence; activation
checkpointing wraps the entries of ``blocks``.
"""
from __future__ import annotations

import math
import zlib
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from planner.spec.spec import ModelSpec
from planner.spec.units import Activation, AttentionKernel, Norm, Position

#: GPT-2's initializer range (Radford et al. 2019; HF GPT2Config.initializer_range)
INIT_STD = 0.02
ROPE_THETA = 10000.0


class RMSNorm(nn.Module):
    """Llama's RMSNorm as HF transformers writes it (Zhang & Sennrich 2019): normalise in fp32,
    cast back, then scale; the memory model counts the fp32 copy it keeps."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def make_norm(m: ModelSpec) -> nn.Module:
    return nn.LayerNorm(m.d_model) if m.norm is Norm.LAYERNORM else RMSNorm(m.d_model)


def rope(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding (Su et al. 2021) on (B, heads, T, hd), rotating (even, odd) pairs as the
    harness does; returns new tensors (the memory model counts them)."""
    T, hd = q.shape[-2], q.shape[-1]
    inv = 1.0 / (ROPE_THETA ** (torch.arange(0, hd, 2, device=q.device).float() / hd))
    freqs = torch.outer(torch.arange(T, device=q.device).float(), inv)
    cos, sin = freqs.cos().to(q.dtype), freqs.sin().to(q.dtype)

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., ::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2)

    return rotate(q), rotate(k)


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v with a causal mask, the s x s probabilities materialised;
    GQA repeats k and v to every query head (HF ``repeat_kv``)."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    T = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    probs = F.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    return probs @ v


class AttentionCore(nn.Module):
    """Attention proper, q, k, v (B, T, heads, hd) -> (B, T, heads, hd): RoPE at positions
    0 .. T-1, then SDPA or the eager softmax.  No weights.  It is the seam context parallelism
    wraps (executor/context_parallel.py): under DeepSpeed-Ulysses it receives the whole sequence
    and heads / cp of the heads after an all-to-all, so the positions it rotates by are the
    global ones."""

    def __init__(self, m: ModelSpec):
        super().__init__()
        self.rope = m.position is Position.ROPE
        self.flash = m.attention is AttentionKernel.FLASH

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.rope:
            q, k = rope(q, k)
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               enable_gqa=k.shape[1] != q.shape[1])
        else:
            y = eager_attention(q, k, v)
        return y.transpose(1, 2)


class CausalSelfAttention(nn.Module):
    def __init__(self, m: ModelSpec):
        super().__init__()
        self.h, self.kv, self.hd = m.n_heads, m.n_kv_heads, m.head_dim
        self.qkv = nn.Linear(m.d_model, (self.h + 2 * self.kv) * self.hd, bias=m.qkv_bias)
        self.core = AttentionCore(m)
        self.proj = nn.Linear(m.d_model, m.d_model, bias=m.out_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        B, T, _ = qkv.shape  # with sequence or context parallelism x holds a slice of it
        # a column-sharded qkv (tensor parallel) holds h/tp query and kv/tp key/value heads
        tp = (self.h + 2 * self.kv) * self.hd // qkv.shape[-1]
        h, kv = self.h // tp, self.kv // tp
        q, k, v = qkv.split([h * self.hd, kv * self.hd, kv * self.hd], dim=-1)
        y = self.core(q.view(B, T, h, self.hd), k.view(B, T, kv, self.hd),
                      v.view(B, T, kv, self.hd))
        return self.proj(y.reshape(B, T, h * self.hd))


class MLP(nn.Module):
    """GPT-2's MLP: d -> d_ff -> d with tanh-approximated GELU (``d_ff``: an expert's width)."""

    def __init__(self, m: ModelSpec, d_ff: Optional[int] = None):
        super().__init__()
        d_ff = d_ff or m.d_ff
        self.fc = nn.Linear(m.d_model, d_ff, bias=m.mlp_bias)
        self.fc2 = nn.Linear(d_ff, m.d_model, bias=m.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc(x), approximate="tanh"))


class SwiGLU(nn.Module):
    """Shazeer 2020's SwiGLU with gate and up fused in one matrix ([gate | up] along the output)."""

    def __init__(self, m: ModelSpec, d_ff: Optional[int] = None):
        super().__init__()
        d_ff = d_ff or m.d_ff
        self.w13 = nn.Linear(m.d_model, 2 * d_ff, bias=m.mlp_bias)
        self.w2 = nn.Linear(d_ff, m.d_model, bias=m.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


def make_mlp(m: ModelSpec, d_ff: Optional[int] = None) -> nn.Module:
    """The model's MLP (GELU or SwiGLU) of inner width ``d_ff`` (default the model's)."""
    return SwiGLU(m, d_ff) if m.activation is Activation.SWIGLU else MLP(m, d_ff)


#: weight of the routers' load-balancing loss in the training objective, loss + coef x sum of
#: the MoE layers' l_aux: DeepSpeed-MoE's GPT recipes (Megatron-DeepSpeed
#: examples_deepspeed/MoE/ds_pretrain_gpt_1.3B_MoE128.sh, --moe-loss-coeff 0.01) and the value
#: Megatron-Core's MoE README recommends (--moe-aux-loss-coeff 1e-2)
MOE_AUX_LOSS_COEF = 0.01


class MoEMLP(nn.Module):
    """Mixture-of-experts MLP: DeepSpeed-MoE's layer over ``experts`` copies of the model's MLP
    of width ``expert_d_ff`` (its router ``wg`` is Linear(d_model, experts, bias=False)), plus
    Qwen2-MoE's shared expert and its sigmoid gate when the spec has them:
    out = moe(x) + sigmoid(gate(x)) * shared(x).

    With ``ep`` > 1 the layer holds experts/ep of them (DeepSpeed names its local experts 0 ..
    experts/ep - 1; executor/parallel.py maps them to the plain model's).  Routing is made
    deterministic, so every layout routes a micro-batch alike: the true second choice, not
    DeepSpeed's default Gumbel-sampled one (``top2_2nd_expert_sampling=False``: Mixtral's and
    Qwen2-MoE's softmax-then-top-k), and for top-1 the first tokens kept on overflow rather
    than random ones (``use_rts=False``).  ``forward`` keeps the layer's load-balancing loss
    in ``aux_loss`` (GPT.moe_aux_loss sums them)."""

    def __init__(self, m: ModelSpec, ep: int = 1):
        super().__init__()
        from deepspeed.moe.layer import MoE
        moe = m.moe
        self.moe = MoE(hidden_size=m.d_model, expert=make_mlp(m, moe.expert_d_ff),
                       num_experts=moe.experts, ep_size=ep, k=moe.top_k,
                       capacity_factor=moe.capacity_factor,
                       eval_capacity_factor=moe.capacity_factor,
                       min_capacity=moe.min_capacity, drop_tokens=moe.drop_tokens,
                       use_rts=False, top2_2nd_expert_sampling=False)
        self.shared = make_mlp(m, moe.shared_d_ff) if moe.shared_d_ff else None
        self.shared_gate = (nn.Linear(m.d_model, 1, bias=False)
                            if moe.shared_d_ff and moe.shared_expert_gate else None)
        self.aux_loss: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, self.aux_loss, _ = self.moe(x)
        if self.shared is not None:
            shared = self.shared(x)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(x)) * shared
            out = out + shared
        return out


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)); ``moe``: the MLP
    is a mixture of experts."""

    def __init__(self, m: ModelSpec, moe: bool = False):
        super().__init__()
        self.ln1, self.ln2 = make_norm(m), make_norm(m)
        self.attn = CausalSelfAttention(m)
        self.mlp = MoEMLP(m) if moe else make_mlp(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class EmbeddingLayer(nn.Module):
    """Token ids (B, T) -> hidden states (B, T, d): token table plus learned positions, if any."""

    def __init__(self, m: ModelSpec):
        super().__init__()
        self.wte = nn.Embedding(m.vocab_size, m.d_model)
        learned = m.position is Position.LEARNED
        self.wpe = nn.Embedding(m.max_positions, m.d_model) if learned else None
        #: the global position of idx[:, 0]: a context-parallel rank holds a later slice
        self.first_position = 0

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)
        if self.wpe is not None:
            first = self.first_position
            x = x + self.wpe(torch.arange(first, first + idx.shape[1], device=idx.device))
        return x


class TokenTable(nn.Module):
    """The token table alone (ids -> vectors, or with ``logits`` vectors -> logits): what a
    pipeline ties between its first and last stage, so the last holds no position table."""

    def __init__(self, m: ModelSpec):
        super().__init__()
        self.wte = nn.Embedding(m.vocab_size, m.d_model)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.wte(idx)


class PositionLayer(nn.Module):
    """Adds the learned position table to token vectors (a pipeline's first stage, after the
    tied token table)."""

    def __init__(self, wpe: nn.Embedding):
        super().__init__()
        self.wpe = wpe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.wpe(torch.arange(x.shape[1], device=x.device))


class HeadLayer(nn.Module):
    """Hidden states -> logits: the final norm and the LM head.  ``lm_head=False`` keeps only the
    norm, for a pipeline whose logits come from the tied token table (see ``tied_logits``)."""

    def __init__(self, m: ModelSpec, lm_head: bool = True):
        super().__init__()
        self.norm = make_norm(m)
        self.head = nn.Linear(m.d_model, m.vocab_size, bias=False) if lm_head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.head(x) if self.head is not None else x


def tied_logits(table: TokenTable, x: torch.Tensor) -> torch.Tensor:
    """Logits from the token table: the ``forward_fn`` of a pipeline's second TiedLayerSpec of
    ``TokenTable`` (Megatron-DeepSpeed's ``_logits_helper`` pattern)."""
    return F.linear(x, table.wte.weight)


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor,
                   loss_dtype: str = "fp32") -> torch.Tensor:
    """Mean next-token cross-entropy; ``fp32`` upcasts the logits first (ModelSpec.loss_dtype)."""
    if loss_dtype == "fp32":
        logits = logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class CausalLMLoss:
    """``causal_lm_loss`` with the model's loss dtype bound (picklable, unlike a lambda)."""

    def __init__(self, loss_dtype: str = "fp32"):
        self.loss_dtype = loss_dtype

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return causal_lm_loss(logits, targets, self.loss_dtype)


#: weights drawn at the GPT-2 residual scale (Radford et al. 2019, section 2.3; nanoGPT c_proj):
#: the attention output and every MLP's down projection (a dense block's, each expert's and the
#: shared expert's, all added into the residual stream)
RESIDUAL_PROJECTIONS = ("attn.proj.weight", ".fc2.weight", ".w2.weight")


def initial_value(m: ModelSpec, name: str, shape, seed: int) -> torch.Tensor:
    """The initial value of the whole parameter ``name`` (a plain GPT's name): GPT-2's
    initialisation (nanoGPT ``_init_weights``): N(0, 0.02) for linear and embedding weights, the
    residual projections at 0.02 / sqrt(2 n_layers) so the residual stream's variance does not
    grow with depth, zero biases, norms at one (weights) and zero (biases).

    Each parameter draws from its own generator, seeded by the run's seed and its name, so a
    tensor-parallel or pipeline rank can build exactly its share of the plain model, one
    parameter at a time, without building the rest."""
    if name.endswith("bias"):
        return torch.zeros(shape)
    if len(shape) == 1:  # the only one-dimensional weights are the norms'
        return torch.ones(shape)
    std = INIT_STD / math.sqrt(2 * m.n_layers) if name.endswith(RESIDUAL_PROJECTIONS) \
        else INIT_STD
    generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode()))
                                              % 2**63)
    return torch.empty(shape).normal_(0.0, std, generator=generator)


def initialise(model: nn.Module, m: ModelSpec, seed: int, value=None) -> None:
    """Every parameter of a plain GPT at its initial value (or ``value(name, shape)``)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(value(name, p.shape) if value else initial_value(m, name, p.shape, seed))


class GPT(nn.Module):
    def __init__(self, m: ModelSpec, seed: int = 0):
        super().__init__()
        self.spec = m
        #: (logits, targets) -> loss; tensor parallelism swaps in its vocab-parallel loss
        self.loss_fn = CausalLMLoss(m.loss_dtype)
        self.embed = EmbeddingLayer(m)
        self.blocks = nn.ModuleList(Block(m, m.is_moe_layer(i)) for i in range(m.n_layers))
        self.final = HeadLayer(m)
        if m.tied_embeddings:
            self.final.head.weight = self.embed.wte.weight
        if not self.embed.wte.weight.is_meta:  # on the meta device: shapes only
            initialise(self, m, seed)

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Loss when ``targets`` are given, else logits (B, T, V)."""
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        logits = self.final(x)
        if targets is None:
            return logits
        return self.loss_fn(logits, targets)

    def moe_aux_loss(self) -> Optional[torch.Tensor]:
        """The routers' load-balancing losses of the last forward, summed over the MoE layers
        (DeepSpeed-MoE's l_aux, fp32); None for a dense model.  The training objective adds
        ``MOE_AUX_LOSS_COEF`` times it to the loss ``forward`` returns."""
        losses = [b.mlp.aux_loss for b in self.blocks if isinstance(b.mlp, MoEMLP)]
        return torch.stack(losses).sum() if losses else None

    def pipeline_layers(self) -> list[nn.Module]:
        """[EmbeddingLayer, *blocks, HeadLayer]: each forward maps one tensor to the next, the last
        to logits; ``causal_lm_loss`` is the pipeline's loss_fn."""
        return [self.embed, *self.blocks, self.final]

    def num_params(self) -> int:
        """Distinct parameters (a tied table counted once), as planner.model.shape.param_counts."""
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``idx`` (B, T) (nanoGPT's sampler, no KV
        cache); temperature 0 is greedy.  The context is cropped to the model's seq_len."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.spec.seq_len:]
            logits = self(context)[:, -1, :].float()
            idx = torch.cat((idx, self._sample(logits, temperature, top_k, generator)), dim=1)
        return idx

    @staticmethod
    def _sample(logits: torch.Tensor, temperature: float, top_k: Optional[int],
                generator: Optional[torch.Generator]) -> torch.Tensor:
        if temperature <= 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, [-1]]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)


__all__ = ["GPT", "Block", "AttentionCore", "MoEMLP", "MOE_AUX_LOSS_COEF", "make_mlp",
           "EmbeddingLayer",
           "TokenTable", "PositionLayer", "HeadLayer", "RMSNorm", "causal_lm_loss",
           "CausalLMLoss", "tied_logits", "initial_value", "initialise"]
