"""The shape one rank works on: the model's dimensions after the plan's parallel degrees have
split them, computed once here and read by every estimator (activations, step time, pipeline
buffers), so that a new axis (context parallelism's local sequence, say) changes this file and
not the formulas.

Megatron-LM's split (Shoeybi et al. 2019, section 3): tensor parallelism divides the attention
heads, the key/value heads (GQA), the MLP's inner width and the vocabulary (vocab-parallel
embedding and loss); the residual stream (d_model) stays whole on every rank.  Sequence
parallelism (Korthikanti et al. 2022, section 4.2.2) splits the norm and dropout regions over the
same tp ranks.  Fields are numbers for a Plan and arrays for a PlanBatch.  The layers of a
pipeline stage are per stage: ``planner.model.shape.stages_to_check``.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from planner.plan.strategy import where
from planner.spec.spec import ModelSpec


@dataclass(frozen=True)
class LocalDims:
    seq: Any  #: tokens of one sequence this rank holds: seq_len / cp
    micro_batch: Any  #: sequences per forward/backward
    d_model: int  #: residual-stream width, whole on every tp rank
    heads: Any  #: query heads on this rank
    kv_heads: Any  #: key/value heads on this rank
    head_dim: int
    ffn: Any  #: MLP inner width on this rank (each of gate and up for SwiGLU)
    vocab: Any  #: vocabulary rows on this rank (fractional when tp does not divide it)
    norm_share: Any  #: share of the norm-region tensors kept: 1/tp with sequence parallelism
    tp: Any
    cp: Any = 1  #: context-parallel ranks the sequence is split over

    @property
    def q_width(self):
        """Query (and attention output) width on this rank."""
        return self.heads * self.head_dim

    @property
    def kv_width(self):
        """Width of K (and of V) on this rank."""
        return self.kv_heads * self.head_dim

    @property
    def tokens(self):
        """Tokens of one micro-batch on this rank: the M of every block GEMM."""
        return self.micro_batch * self.seq


#: the last few (model, plan) -> LocalDims, by identity: the estimators ask for the same batch's
#: shape dozens of times in one search (PlanBatch columns are arrays, so it cannot be hashed)
_RECENT: OrderedDict = OrderedDict()
_RECENT_SIZE = 8


def local_dims(m: ModelSpec, plan) -> LocalDims:
    """The rank's shape under ``plan`` (a Plan or a PlanBatch); computed once per pair."""
    key = (id(m), id(plan))
    hit = _RECENT.get(key)
    if hit is not None and hit[0] is m and hit[1] is plan:
        return hit[2]
    dims = _local_dims(m, plan)
    _RECENT[key] = (m, plan, dims)  # holding both keeps their ids from being reused
    if len(_RECENT) > _RECENT_SIZE:
        _RECENT.popitem(last=False)
    return dims


def _local_dims(m: ModelSpec, plan) -> LocalDims:
    tp = plan.tp
    return LocalDims(seq=m.seq_len / plan.cp, micro_batch=plan.micro_batch, d_model=m.d_model,
                     heads=m.n_heads / tp, kv_heads=m.n_kv_heads / tp, head_dim=m.head_dim,
                     ffn=m.d_ff / tp, vocab=m.vocab_size / tp,
                     norm_share=where(plan.sequence_parallel, 1 / tp, 1.0), tp=tp,
                     cp=plan.cp)
