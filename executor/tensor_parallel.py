"""Megatron-style tensor parallelism applied to the executor's GPT from outside (Shoeybi et al.
2019, "Megatron-LM", section 3; torchtitan's ``parallelize_llama`` shape).

Every block's QKV projection and MLP input are column-parallel (each rank keeps its heads,
key/value heads and FFN shard; the fused [q | k | v] and SwiGLU [gate | up] are split part by
part), the attention output and MLP output projections row-parallel (an all-reduce after them).
The token table is vocab-parallel (each rank holds V/tp rows; a lookup outside them is zero and
the all-reduce fills it in), the LM head too, and the loss is a vocab-parallel cross-entropy that
never gathers the logits (Megatron's ``_VocabParallelCrossEntropy``).  Norms, row-parallel biases
and learned positions stay whole on every rank: exactly the split planner/model/shape.py counts.

Sharding works on real or meta tensors: the executor shards a GPT built on the meta device, then
gives each parameter this rank's slice of the plain model's value for that name
(executor/parallel.py ``materialize``), so a tensor-parallel run starts from the weights of the
unsharded one and no rank ever holds the whole model.  ``SHARDING`` is the one table of how each
parameter is split; it also merges the shards back for the fp32 export.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from planner.spec.spec import ModelSpec
from planner.spec.units import Activation

from .model import GPT, Block, EmbeddingLayer, HeadLayer, PositionLayer, RMSNorm, TokenTable


@dataclass(frozen=True)
class TPGroup:
    """This rank's place in its tensor-parallel group."""

    rank: int
    size: int
    group: Any = None  #: a torch.distributed process group; None only when size is 1
    #: Megatron sequence parallelism (Korthikanti et al. 2022, section 4.2.2): between the
    #: tensor-parallel regions each rank holds seq_len / tp tokens
    sequence_parallel: bool = False


# ------------------------------------------------------------------------------ collectives

def _all_reduce(x: torch.Tensor, tp: TPGroup, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if tp.size > 1:
        dist.all_reduce(x, op=op, group=tp.group)
    return x


class _CopyToTP(torch.autograd.Function):
    """Megatron's f: identity in forward, all-reduce of the gradient in backward."""

    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp = tp
        return x

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad.contiguous(), ctx.tp), None


class _ReduceFromTP(torch.autograd.Function):
    """Megatron's g: all-reduce in forward, identity in backward."""

    @staticmethod
    def forward(ctx, x, tp):
        return _all_reduce(x.contiguous(), tp)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _seq_slice(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    return x.chunk(tp.size, dim=1)[tp.rank].contiguous()


def _gather_seq(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(tp.size)]
    dist.all_gather(parts, x.contiguous(), group=tp.group)
    return torch.cat(parts, dim=1)


def _reduce_scatter_seq(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    """Sum over tp, keep this rank's slice of the sequence (an all-reduce and a slice: gloo has
    no reduce-scatter; the bytes on the wire double, the result is the same)."""
    return _seq_slice(_all_reduce(x.contiguous().clone(), tp), tp)


class _GatherFromSeq(torch.autograd.Function):
    """Sequence-parallel region -> tensor-parallel region: all-gather the sequence in forward,
    reduce-scatter the gradient in backward (Megatron's g with sequence parallelism)."""

    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp = tp
        return _gather_seq(x, tp)

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter_seq(grad, ctx.tp), None


class _ScatterToSeq(torch.autograd.Function):
    """Tensor-parallel partial sums -> sequence-parallel region: reduce-scatter in forward,
    all-gather the gradient in backward."""

    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp = tp
        return _reduce_scatter_seq(x, tp)

    @staticmethod
    def backward(ctx, grad):
        return _gather_seq(grad, ctx.tp), None


def enter_tp(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    """The input of a column-parallel layer: the whole sequence, its gradient summed over tp."""
    if tp.size == 1:
        return x
    return _GatherFromSeq.apply(x, tp) if tp.sequence_parallel else _CopyToTP.apply(x, tp)


def leave_tp(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    """The output of a row-parallel layer: partial sums summed over tp (sequence-sliced under
    sequence parallelism)."""
    if tp.size == 1:
        return x
    return _ScatterToSeq.apply(x, tp) if tp.sequence_parallel else _ReduceFromTP.apply(x, tp)


def copy_to_tp(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    return _CopyToTP.apply(x, tp) if tp.size > 1 else x


def reduce_from_tp(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    return _ReduceFromTP.apply(x, tp) if tp.size > 1 else x


# ------------------------------------------------------------------------------- sharding

#: how each parameter (by name suffix) is split over tp: "column" splits the output rows,
#: "row" the input columns, "qkv" and "gate_up" split each fused part on its own, "vocab" the
#: table rows; anything else is replicated
SHARDING = {
    "attn.qkv.weight": "qkv", "attn.qkv.bias": "qkv",
    "attn.proj.weight": "row",
    "mlp.fc.weight": "column", "mlp.fc.bias": "column", "mlp.fc2.weight": "row",
    "mlp.w13.weight": "gate_up", "mlp.w13.bias": "gate_up", "mlp.w2.weight": "row",
    "wte.weight": "vocab", "head.weight": "vocab",
}


def sharding_of(name: str) -> Optional[str]:
    for suffix, kind in SHARDING.items():
        if name == suffix or name.endswith("." + suffix):
            return kind
    return None


def _parts(kind: str, m: ModelSpec) -> list[int]:
    """Widths of the fused parts along dim 0 (one part for plain column/vocab splits)."""
    if kind == "qkv":
        return [m.n_heads * m.head_dim, m.kv_dim, m.kv_dim]
    if kind == "gate_up":
        return [m.d_ff, m.d_ff]
    return []


def shard(full: torch.Tensor, kind: str, m: ModelSpec, rank: int, size: int) -> torch.Tensor:
    """This rank's shard of a full parameter."""
    if kind == "row":
        return full.chunk(size, dim=1)[rank]
    parts = _parts(kind, m) or [full.shape[0]]
    pieces = full.split(parts, dim=0)
    return torch.cat([p.chunk(size, dim=0)[rank] for p in pieces], dim=0)


def unshard(shards: list[torch.Tensor], kind: str, m: ModelSpec) -> torch.Tensor:
    """The full parameter from its shards in tp-rank order (the inverse of ``shard``)."""
    if kind == "row":
        return torch.cat(shards, dim=1)
    size = len(shards)
    parts = [w // size for w in _parts(kind, m)] or [shards[0].shape[0]]
    split = [s.split(parts, dim=0) for s in shards]
    return torch.cat([torch.cat([s[i] for s in split], dim=0) for i in range(len(parts))], dim=0)


def _check_divisible(m: ModelSpec, size: int) -> None:
    for what, n in (("n_heads", m.n_heads), ("n_kv_heads", m.n_kv_heads), ("d_ff", m.d_ff),
                    ("vocab_size", m.vocab_size)):
        if n % size:
            raise ValueError(f"tensor parallelism over {size} ranks needs {what} ({n}) divisible "
                             f"by {size}")


# -------------------------------------------------------------------------------- modules

def _mark(p: nn.Parameter) -> nn.Parameter:
    """DeepSpeed counts a parameter so marked on every tp rank in gradient norms, and a
    replicated one once (runtime/utils.py is_model_parallel_parameter)."""
    p.tensor_model_parallel = True
    return p


class ColumnParallelLinear(nn.Module):
    """y_local = x W_local^T + b_local; the input's gradient is summed over tp."""

    def __init__(self, full: nn.Linear, kind: str, m: ModelSpec, tp: TPGroup):
        super().__init__()
        self.tp = tp
        self.weight = _mark(nn.Parameter(shard(full.weight.data, kind, m, tp.rank, tp.size)))
        self.bias = None if full.bias is None else _mark(
            nn.Parameter(shard(full.bias.data, kind, m, tp.rank, tp.size)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(enter_tp(x, self.tp), self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = all-reduce(x_local W_local^T) + b; the bias is whole on every rank."""

    def __init__(self, full: nn.Linear, m: ModelSpec, tp: TPGroup):
        super().__init__()
        self.tp = tp
        self.weight = _mark(nn.Parameter(shard(full.weight.data, "row", m, tp.rank, tp.size)))
        self.bias = None if full.bias is None else nn.Parameter(full.bias.data.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = leave_tp(F.linear(x, self.weight), self.tp)
        return y if self.bias is None else y + replicated(self.bias, self.tp)


class VocabParallelEmbedding(nn.Module):
    """Rows [rank·V/tp, (rank+1)·V/tp) of the token table; ids outside them look up zeros and
    the all-reduce sums the one rank that has each id."""

    def __init__(self, full: nn.Embedding, m: ModelSpec, tp: TPGroup):
        super().__init__()
        self.tp = tp
        self.rows = m.vocab_size // tp.size
        self.start = tp.rank * self.rows
        self.weight = _mark(nn.Parameter(shard(full.weight.data, "vocab", m, tp.rank, tp.size)))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(idx, self.weight)
        local = idx - self.start
        outside = (local < 0) | (local >= self.rows)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        return leave_tp(out, self.tp)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The tied LM head: this rank's vocabulary slice of the logits."""
        return F.linear(enter_tp(x, self.tp), self.weight)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Mean over tokens of log(sum_v exp z_v) - z_target with z split over tp along the
    vocabulary: a max, a sum of exponentials and the target logit are all-reduced, never the
    logits (Megatron-LM, tensor_parallel/cross_entropy.py)."""

    @staticmethod
    def forward(ctx, logits, targets, tp, start):
        z = logits - _all_reduce(logits.max(dim=-1, keepdim=True)[0], tp, dist.ReduceOp.MAX)
        local = targets - start
        outside = (local < 0) | (local >= logits.shape[-1])
        safe = local.masked_fill(outside, 0)
        target_z = z.gather(-1, safe.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        exp = z.exp()
        sum_exp = _all_reduce(exp.sum(dim=-1), tp)
        target_z = _all_reduce(target_z, tp)
        loss = (sum_exp.log() - target_z).mean()
        ctx.save_for_backward(exp.div_(sum_exp.unsqueeze(-1)), safe, outside)
        return loss

    @staticmethod
    def backward(ctx, grad):
        probs, safe, outside = ctx.saved_tensors
        onehot = torch.zeros_like(probs).scatter_(-1, safe.unsqueeze(-1),
                                                  (~outside).unsqueeze(-1).to(probs.dtype))
        n = probs.numel() // probs.shape[-1]
        return (probs - onehot) * (grad / n), None, None, None


def vocab_parallel_loss(logits: torch.Tensor, targets: torch.Tensor, tp: TPGroup, start: int,
                        loss_dtype: str = "fp32") -> torch.Tensor:
    """Mean next-token cross-entropy from this rank's vocabulary slice of the logits."""
    if loss_dtype == "fp32":
        logits = logits.float()
    V = logits.shape[-1]
    return _VocabParallelCrossEntropy.apply(logits.reshape(-1, V), targets.reshape(-1), tp,
                                            start)


class TPLoss:
    """The loss of a tensor-parallel GPT (picklable, so DeepSpeed can hold it as loss_fn)."""

    def __init__(self, m: ModelSpec, tp: TPGroup):
        self.tp, self.start, self.loss_dtype = tp, tp.rank * (m.vocab_size // tp.size), m.loss_dtype

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return vocab_parallel_loss(logits, targets, self.tp, self.start, self.loss_dtype)


def tied_logits_tp(table: TokenTable, x: torch.Tensor) -> torch.Tensor:
    """The ``forward_fn`` of a pipeline's second occurrence of a vocab-parallel tied table."""
    return table.wte.logits(x)


# ------------------------------------------------------------------------------ the model

def shard_block(block: Block, m: ModelSpec, tp: TPGroup) -> Block:
    attn, mlp = block.attn, block.mlp
    attn.qkv = ColumnParallelLinear(attn.qkv, "qkv", m, tp)
    attn.proj = RowParallelLinear(attn.proj, m, tp)
    if m.activation is Activation.SWIGLU:
        mlp.w13 = ColumnParallelLinear(mlp.w13, "gate_up", m, tp)
        mlp.w2 = RowParallelLinear(mlp.w2, m, tp)
    else:
        mlp.fc = ColumnParallelLinear(mlp.fc, "column", m, tp)
        mlp.fc2 = RowParallelLinear(mlp.fc2, m, tp)
    return block


def shard_embedding(embed: EmbeddingLayer, m: ModelSpec, tp: TPGroup) -> EmbeddingLayer:
    embed.wte = VocabParallelEmbedding(embed.wte, m, tp)
    return embed


class _VocabParallelHead(nn.Module):
    def __init__(self, full: nn.Linear, m: ModelSpec, tp: TPGroup):
        super().__init__()
        self.tp = tp
        self.weight = _mark(nn.Parameter(shard(full.weight.data, "vocab", m, tp.rank, tp.size)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(enter_tp(x, self.tp), self.weight)


class _TiedHead(nn.Module):
    """The LM head reading the (vocab-parallel) token table it is tied to."""

    def __init__(self, embedding: VocabParallelEmbedding):
        super().__init__()
        self._table = [embedding]  # a list, so the table is not registered twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._table[0].logits(x)


def shard_head(final: HeadLayer, m: ModelSpec, tp: TPGroup,
               table: Optional[VocabParallelEmbedding] = None) -> HeadLayer:
    if final.head is not None:
        final.head = _TiedHead(table) if m.tied_embeddings else _VocabParallelHead(final.head,
                                                                                  m, tp)
    return final


def shard_model(model: GPT, tp: TPGroup) -> GPT:
    """The GPT with every block, the token table and the head split over ``tp`` (in place),
    its loss the vocab-parallel one; with sequence parallelism the norms, residual adds and
    learned positions work on this rank's slice of the sequence."""
    m = model.spec
    _check_divisible(m, tp.size)
    if tp.sequence_parallel and m.seq_len % tp.size:
        raise ValueError(f"sequence parallelism over {tp.size} ranks needs seq_len "
                         f"({m.seq_len}) divisible by {tp.size}")
    shard_embedding(model.embed, m, tp)
    for block in model.blocks:
        shard_block(block, m, tp)
    shard_head(model.final, m, tp, model.embed.wte)
    if tp.sequence_parallel:
        sequence_parallel_norms(model, tp)
        model.embed.forward = functools.partial(_sp_embedding_forward, model.embed, tp)
    model.loss_fn = TPLoss(m, tp)
    return model


# ----------------------------------------------------------------- sequence parallelism

class _AllReduceGrad(torch.autograd.Function):
    """A replicated parameter used on a slice of the sequence: identity in forward, its
    gradient summed over tp in backward (Megatron all-reduces such "sequence_parallel"
    parameters' gradients after backward; here autograd does it where they are used)."""

    @staticmethod
    def forward(ctx, w, tp):
        ctx.tp = tp
        return w.view_as(w)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad.contiguous(), ctx.tp), None


def replicated(w: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    """A whole-on-every-rank parameter as the sequence-parallel region uses it."""
    return _AllReduceGrad.apply(w, tp) if tp.sequence_parallel and tp.size > 1 else w


def _sp_layer_norm(norm: nn.LayerNorm, tp: TPGroup, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, replicated(norm.weight, tp),
                        replicated(norm.bias, tp), norm.eps)


def _sp_rms_norm(norm: RMSNorm, tp: TPGroup, x: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.eps)
    return normed.type_as(x) * replicated(norm.weight, tp)


def sequence_parallel_norm(norm: nn.Module, tp: TPGroup) -> nn.Module:
    """The norm's forward, replaced on the instance (its parameter names stay), summing its
    weight's gradient over tp."""
    fn = _sp_layer_norm if isinstance(norm, nn.LayerNorm) else _sp_rms_norm
    norm.forward = functools.partial(fn, norm, tp)
    return norm


def sequence_parallel_norms(model: GPT, tp: TPGroup) -> None:
    for block in model.blocks:
        sequence_parallel_norm(block.ln1, tp)
        sequence_parallel_norm(block.ln2, tp)
    sequence_parallel_norm(model.final.norm, tp)


def _positions(wpe: nn.Embedding, tp: TPGroup, seq: int, device) -> torch.Tensor:
    """This rank's slice of the position vectors, the table's gradient summed over tp."""
    return _seq_slice(F.embedding(torch.arange(seq, device=device), replicated(wpe.weight, tp))
                      .unsqueeze(0), tp)


def _sp_embedding_forward(embed: EmbeddingLayer, tp: TPGroup, idx: torch.Tensor):
    x = embed.wte(idx)  # vocab-parallel: reduce-scattered to this rank's slice
    if embed.wpe is not None:
        x = x + _positions(embed.wpe, tp, idx.shape[1], idx.device)
    return x


def sp_position_layer(layer: PositionLayer, tp: TPGroup) -> PositionLayer:
    """A pipeline's position layer on a slice of the sequence."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x + _positions(layer.wpe, tp, x.shape[1] * tp.size, x.device)
    layer.forward = forward
    return layer


def unshard_state(parts: list[dict[str, torch.Tensor]], m: ModelSpec) -> dict[str, torch.Tensor]:
    """A plain GPT state dict from the tp ranks' state dicts (in tp-rank order)."""
    out = {}
    for name, first in parts[0].items():
        kind = sharding_of(name)
        out[name] = first if kind is None else unshard([p[name] for p in parts], kind, m)
    return out


__all__ = ["TPGroup", "shard_model", "shard_block", "shard_embedding", "shard_head",
           "vocab_parallel_loss", "TPLoss", "tied_logits_tp", "unshard_state", "SHARDING",
           "sharding_of", "shard", "unshard", "ColumnParallelLinear", "RowParallelLinear",
           "VocabParallelEmbedding"]


class ShardedTokenTable(TokenTable):
    """A TokenTable whose rows are vocab-parallel, for a pipeline's TiedLayerSpec (built whole,
    then split; the pipeline loads the model's own shard into it)."""

    def __init__(self, m: ModelSpec, tp: TPGroup):
        super().__init__(m)
        self.wte = VocabParallelEmbedding(self.wte, m, tp)
