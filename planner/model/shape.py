"""Parameter counts of the model, of one pipeline stage, and of one tensor-parallel rank.

The count mirrors the executor's model exactly (and HF transformers' GPT-2 / Llama): token
embedding, optional learned positions, per block two norms, QKV and output projections, the MLP,
a final norm and the LM head (shared with the embedding when tied).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

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

    def __add__(self, other: "LayerParams") -> "LayerParams":
        return LayerParams(self.sharded + other.sharded, self.replicated + other.replicated)

    def __rmul__(self, k: int) -> "LayerParams":
        return LayerParams(k * self.sharded, k * self.replicated)

    def __truediv__(self, k: int) -> "LayerParams":
        return LayerParams(self.sharded / k, self.replicated / k)


def _attention_params(m: ModelSpec) -> LayerParams:
    """Q, K, V (q_dim + 2 kv_dim wide), the output projection (q_dim -> d_model), the block's
    norms; biases as the model has them (column-parallel biases split over tp, the row-parallel
    output bias replicated)."""
    d = m.d_model
    qkv_out = m.q_dim + 2 * m.kv_dim
    return LayerParams(sharded=d * qkv_out + m.q_dim * d + (qkv_out if m.qkv_bias else 0),
                       replicated=m.norms_per_block * norm_params(m) + (d if m.out_bias else 0))


def _mlp_params(m: ModelSpec, ff: int) -> LayerParams:
    """One MLP of inner width ff: its matrices, and their biases when the model has them."""
    d = m.d_model
    return LayerParams(sharded=mlp_matrices(m) * d * ff + ((mlp_matrices(m) - 1) * ff
                                                           if m.mlp_bias else 0),
                       replicated=d if m.mlp_bias else 0)


def dense_layer_params(m: ModelSpec) -> LayerParams:
    """A block with one MLP of width d_ff."""
    return _attention_params(m) + _mlp_params(m, m.d_ff)


def moe_layer_params(m: ModelSpec, active: bool = False) -> LayerParams:
    """A block whose MLP is ``experts`` MLPs of width expert_d_ff behind a router (d_model ->
    experts, no bias), plus the shared expert and its gate (d_model -> 1) where the model has
    them; ``active``: only the top_k experts a token uses."""
    moe, d = m.moe, m.d_model
    experts = moe.top_k if active else moe.experts
    out = _attention_params(m) + LayerParams(sharded=d * moe.experts, replicated=0)
    out = out + experts * _mlp_params(m, moe.expert_d_ff)
    if moe.shared_d_ff:
        out = out + _mlp_params(m, moe.shared_d_ff)
    if moe.shared_expert_gate:
        out = out + LayerParams(sharded=d, replicated=0)
    return out


def layer_average(m: ModelSpec, per_block: Callable[[bool], Any]) -> Any:
    """The average over the model's blocks of ``per_block(moe)`` (a dense block's value for
    False, a mixture-of-experts block's for True), each kind computed once.  Exact for totals over
    all the layers, which every stage holds when pp = 1 (the only layout MoE plans take here);
    for a model of one kind, that kind's value."""
    n_moe = m.moe_layers
    if n_moe == 0:
        return per_block(False)
    if n_moe == m.n_layers:
        return per_block(True)
    return ((m.n_layers - n_moe) * per_block(False) + n_moe * per_block(True)) / m.n_layers


def layer_params(m: ModelSpec) -> LayerParams:
    """The model's (average) block."""
    return layer_average(m, lambda moe: moe_layer_params(m) if moe else dense_layer_params(m))


@dataclass(frozen=True)
class ParamCounts:
    embedding: int  #: vocab_size x d_model token table
    positions: int  #: learned position table (0 for RoPE)
    layer: LayerParams  #: the (average) block
    n_layers: int
    final_norm: int
    head: int  #: untied LM head (0 when tied to the embedding)
    layers: int  #: every block, exactly
    active_layers: int  #: every block as one token uses it (the top_k experts of a MoE layer)

    @property
    def total(self) -> int:
        return self.embedding + self.positions + self.layers + self.final_norm + self.head

    @property
    def active(self) -> int:
        """Parameters one token's forward uses: the total for a dense model."""
        return self.total - self.layers + self.active_layers

    @property
    def non_embedding(self) -> int:
        return self.layers + self.final_norm


def param_counts(m: ModelSpec) -> ParamCounts:
    n_moe = m.moe_layers
    dense = (m.n_layers - n_moe) * dense_layer_params(m).total
    layers = dense + (n_moe * moe_layer_params(m).total if n_moe else 0)
    active = dense + (n_moe * moe_layer_params(m, active=True).total if n_moe else 0)
    return ParamCounts(
        embedding=m.vocab_size * m.d_model,
        positions=m.max_positions * m.d_model if m.position is Position.LEARNED else 0,
        layer=layer_params(m),
        n_layers=m.n_layers,
        final_norm=norm_params(m),
        head=0 if m.tied_embeddings else m.vocab_size * m.d_model,
        layers=layers, active_layers=active,
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


def blocks_alive(stage: Stage, pp, grad_accum, virtual_stages: int = 1):
    """Blocks' activations alive at once on ``stage``, in (block x micro-batch) units: 1F1B's
    in-flight micro-batches, or, with v > 1 model chunks per rank (the interleaved schedule of
    Megatron-Core and torch.distributed.pipelining), the warm-up chunks: rank r runs
    2(pp - r - 1) + (v - 1) pp chunk forwards before its first backward
    (forward_backward_pipelining_with_interleaving), so it holds that many + 1 chunks of L/(pp v)
    blocks; on the first stage 1 + (pp - 1)/(pp v) times 1F1B's (Korthikanti et al. 2022)."""
    v = virtual_stages
    if v == 1:
        return stage.n_layers * stage.in_flight
    warm = 2 * (pp - 1 - stage.index) + (v - 1) * pp + 1
    chunks = np.minimum(grad_accum * v, warm)
    return np.where(pp == 1, stage.n_layers * stage.in_flight, chunks * stage.n_layers / v)


def routed_expert_params(m: ModelSpec) -> float:
    """The routed experts' parameters per (average) block: what expert parallelism splits."""
    if not m.moe_layers:
        return 0
    return m.moe_layers * m.moe.experts * _mlp_params(m, m.moe.expert_d_ff).total / m.n_layers


def stage_params(m: ModelSpec, stage: Stage, tp, ep=1):
    """Parameters one tp rank of this stage holds: with expert parallelism, 1/ep of the routed
    experts (the rest live on the other ranks of its ep group).

    Embedding and head are vocab-parallel (split over tp, Megatron-LM); with tied embeddings a
    pipeline keeps a copy of the table on the first and on the last stage (DeepSpeed TiedLayerSpec).
    """
    c = param_counts(m)
    per_layer = c.layer.per_rank(tp)
    if m.moe_layers:
        per_layer = per_layer - routed_expert_params(m) * (1 - 1 / ep)
    n = stage.n_layers * per_layer
    n = n + stage.has_embedding * (c.embedding // tp + c.positions)
    head = c.head // tp if c.head else (1 - stage.has_embedding) * (c.embedding // tp)
    return n + stage.has_head * (c.final_norm + head)


def layer_tensor_sizes(m: ModelSpec, tp) -> list:
    """Element counts of one block's parameter tensors on one tp rank (ZeRO-3 gathers and
    persists per tensor)."""
    d, qkv = m.d_model, m.q_dim + 2 * m.kv_dim
    per_norm = 2 if m.norm is Norm.LAYERNORM else 1  # weight (and bias)
    sizes = [d] * (per_norm * m.norms_per_block) + [d * qkv // tp, m.q_dim * d // tp]
    if m.qkv_bias:
        sizes.append(qkv // tp)
    if m.out_bias:
        sizes.append(d)
    if m.moe_layers == 0:
        return sizes + _mlp_tensor_sizes(m, m.d_ff, tp)
    moe = m.moe  # the MoE block (the largest tensors; the only block of an all-MoE model)
    sizes += [d * moe.experts] + moe.experts * _mlp_tensor_sizes(m, moe.expert_d_ff, tp)
    if moe.shared_d_ff:
        sizes += _mlp_tensor_sizes(m, moe.shared_d_ff, tp)
    if moe.shared_expert_gate:
        sizes.append(d)
    return sizes


def _mlp_tensor_sizes(m: ModelSpec, ff: int, tp) -> list:
    """The MLP's up projection is one fused tensor (gate and up together for SwiGLU)."""
    d, n_mlp = m.d_model, mlp_matrices(m)
    sizes = [(n_mlp - 1) * d * ff // tp, d * ff // tp]
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
