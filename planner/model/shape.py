"""Parameter counts of the model, of one pipeline stage, and of one tensor-parallel rank.

The count mirrors the executor's model exactly (and HF transformers' GPT-2 / Llama): token
embedding, optional learned positions, per block two norms, QKV and output projections, the MLP,
a final norm and the LM head (shared with the embedding when tied).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from planner.spec.spec import ModelSpec
from planner.spec.units import Activation, Norm, Position


def norm_params(m: ModelSpec) -> int:
    """LayerNorm has weight and bias; RMSNorm only a weight."""
    return 2 * m.d_model if m.norm is Norm.LAYERNORM else m.d_model


def mlp_matrices(m: ModelSpec) -> int:
    """GELU: up and down; SwiGLU: gate, up and down (Shazeer 2020)."""
    return 3 if m.activation is Activation.SWIGLU else 2


@dataclass(frozen=True)
class LayerParams:
    """One transformer block, split by how tensor parallelism treats each part (Megatron-LM)."""

    sharded: int  #: column/row-parallel weights and column-parallel biases: divided by tp
    replicated: int  #: norms and row-parallel output biases: every tp rank holds them

    @property
    def total(self) -> int:
        return self.sharded + self.replicated

    def per_rank(self, tp: int) -> int:
        return self.sharded // tp + self.replicated


def layer_params(m: ModelSpec) -> LayerParams:
    """Q, K, V (q_dim + 2 kv_dim wide), the output projection (q_dim -> d_model), the MLP, the
    block's norms; biases as the model has them (column-parallel biases split over tp, the
    row-parallel output biases replicated)."""
    d, ff = m.d_model, m.d_ff
    qkv_out = m.q_dim + 2 * m.kv_dim
    weights = d * qkv_out + m.q_dim * d + mlp_matrices(m) * d * ff
    column_bias = (qkv_out if m.qkv_bias else 0) + ((mlp_matrices(m) - 1) * ff if m.mlp_bias
                                                    else 0)
    row_bias = (d if m.out_bias else 0) + (d if m.mlp_bias else 0)
    return LayerParams(sharded=weights + column_bias,
                       replicated=m.norms_per_block * norm_params(m) + row_bias)


@dataclass(frozen=True)
class ParamCounts:
    embedding: int  #: vocab_size x d_model token table
    positions: int  #: learned position table (0 for RoPE)
    layer: LayerParams
    n_layers: int
    final_norm: int
    head: int  #: untied LM head (0 when tied to the embedding)

    @property
    def layers(self) -> int:
        return self.n_layers * self.layer.total

    @property
    def total(self) -> int:
        return self.embedding + self.positions + self.layers + self.final_norm + self.head

    @property
    def non_embedding(self) -> int:
        return self.layers + self.final_norm


def param_counts(m: ModelSpec) -> ParamCounts:
    return ParamCounts(
        embedding=m.vocab_size * m.d_model,
        positions=m.max_positions * m.d_model if m.position is Position.LEARNED else 0,
        layer=layer_params(m),
        n_layers=m.n_layers,
        final_norm=norm_params(m),
        head=0 if m.tied_embeddings else m.vocab_size * m.d_model,
    )


@dataclass(frozen=True)
class Stage:
    """One pipeline stage as the most-loaded rank of that stage sees it.  Fields are numbers for a
    Plan and arrays (one entry per candidate) for a PlanBatch."""

    index: Any
    n_layers: Any  #: blocks on this stage
    has_embedding: Any
    has_head: Any  #: final norm, LM head and the loss run here
    in_flight: Any  #: micro-batches whose activations are alive at once under 1F1B


def layers_per_stage(n_layers: int, pp: int) -> list[int]:
    """Uniform split, the remainder going to the first stages (DeepSpeed partition_uniform):
    the first stage has the most blocks, the last the fewest."""
    base, extra = divmod(n_layers, pp)
    return [base + (1 if i < extra else 0) for i in range(pp)]


def first_stage_layers(n_layers: int, pp):
    """Blocks on stage 0 of ``layers_per_stage`` (elementwise for an array of pp)."""
    return -(-n_layers // pp)


def last_stage_layers(n_layers: int, pp):
    """Blocks on the last stage of ``layers_per_stage`` (elementwise for an array of pp)."""
    return n_layers // pp


def stages_to_check(m: ModelSpec, pp, grad_accum) -> list[Stage]:
    """The first stage (embedding, most micro-batches in flight) and the last (head and loss).

    Under DeepSpeed's 1F1B schedule stage i keeps min(pp - i, micro-batches) forward passes
    alive (Narayanan et al. 2021, section 2.2); middle stages are dominated by the first.  For a
    batch both are returned for every candidate (identical when pp = 1).
    """
    first_layers = first_stage_layers(m.n_layers, pp)
    last_layers = last_stage_layers(m.n_layers, pp)
    if isinstance(pp, np.ndarray):
        first = Stage(0, first_layers, True, pp == 1, np.minimum(pp, grad_accum))
        last = Stage(pp - 1, last_layers, pp == 1, True, np.ones_like(pp))
        return [first, last]
    first = Stage(0, first_layers, True, pp == 1, min(pp, grad_accum))
    if pp == 1:
        return [first]
    return [first, Stage(pp - 1, last_layers, False, True, 1)]


def stage_params(m: ModelSpec, stage: Stage, tp):
    """Parameters one tp rank of this stage holds.

    Embedding and head are vocab-parallel (split over tp, Megatron-LM); with tied embeddings a
    pipeline keeps a copy of the table on the first and on the last stage (DeepSpeed TiedLayerSpec).
    """
    c = param_counts(m)
    n = stage.n_layers * c.layer.per_rank(tp)
    n = n + stage.has_embedding * (c.embedding // tp + c.positions)
    head = c.head // tp if c.head else (1 - stage.has_embedding) * (c.embedding // tp)
    return n + stage.has_head * (c.final_norm + head)


def layer_tensor_sizes(m: ModelSpec, tp) -> list:
    """Element counts of one block's parameter tensors on one tp rank (ZeRO-3 gathers and
    persists per tensor)."""
    d, ff, qkv = m.d_model, m.d_ff, m.q_dim + 2 * m.kv_dim
    n_mlp = mlp_matrices(m)
    per_norm = 2 if m.norm is Norm.LAYERNORM else 1  # weight (and bias)
    norms = [d] * (per_norm * m.norms_per_block)
    # the MLP's up projection is one fused tensor (gate and up together for SwiGLU)
    sizes = norms + [d * qkv // tp, m.q_dim * d // tp, (n_mlp - 1) * d * ff // tp, d * ff // tp]
    if m.qkv_bias:
        sizes.append(qkv // tp)
    if m.out_bias:
        sizes.append(d)
    if m.mlp_bias:
        sizes += [(n_mlp - 1) * ff // tp, d]
    return sizes


def stage_tensors(m: ModelSpec, stage: Stage, tp) -> list[tuple[Any, Any]]:
    """(elements, how many) for every parameter tensor of the stage on one tp rank."""
    c = param_counts(m)
    out = [(size, stage.n_layers) for size in layer_tensor_sizes(m, tp)]
    out.append((c.embedding // tp, 1 * stage.has_embedding))
    if c.positions:
        out.append((c.positions, 1 * stage.has_embedding))
    out.append((m.d_model, (2 if m.norm is Norm.LAYERNORM else 1) * stage.has_head))
    if c.head:
        out.append((c.head // tp, 1 * stage.has_head))
    else:
        out.append((c.embedding // tp, stage.has_head * (1 - stage.has_embedding)))
    return out


@dataclass(frozen=True)
class TensorStats:
    count: Any  #: parameter tensors
    largest: Any  #: elements of the largest
    small: Any  #: elements in tensors at or under the ZeRO-3 persistence threshold


def tensor_stats(m: ModelSpec, stage: Stage, tp, persistence_threshold: int) -> TensorStats:
    tensors = stage_tensors(m, stage, tp)
    count = sum(k for _, k in tensors)
    largest = 0
    for size, k in tensors:
        largest = np.maximum(largest, size * (k > 0))
    small = sum(size * k * (size <= persistence_threshold) for size, k in tensors)
    return TensorStats(count, largest, small)


def stage_tensor_sizes(m: ModelSpec, stage: Stage, tp: int) -> list[int]:
    """The stage's tensor sizes one by one (a Plan's stage; tests and the executor compare)."""
    return [int(size) for size, k in stage_tensors(m, stage, tp) for _ in range(int(k))]
