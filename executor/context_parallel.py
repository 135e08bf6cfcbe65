"""DeepSpeed-Ulysses context parallelism (Jacobs et al. 2023, arXiv:2309.14509), applied to the
GPT from outside, as executor/parallel.py applies tensor and expert parallelism.

Each of the ``cp`` ranks of a context-parallel group reads the same sequences and keeps one
contiguous 1/cp slice of every sequence's tokens and of the matching targets
(``local_slice``).  Everything outside attention is per token, so it runs on the slice as it
is; learned positions are offset to the slice's global positions (``first_position``).
Attention goes through DeepSpeed's ``DistributedAttention`` (deepspeed/sequence/layer.py): an
all-to-all over the group scatters the heads and gathers the sequence, so the model's
``AttentionCore`` sees whole sequences and a contiguous 1/cp of the query and key/value heads
(a GQA group stays on one rank because cp divides the kv heads), applies RoPE at the global
positions 0 .. seq_len-1 and the causal kernel, and a second all-to-all gives each rank its
slice back with every head.

The groups are DeepSpeed's own Ulysses "mpu", deepspeed/runtime/sequence_parallel/
parallel_state_sp.py (what ``UlyssesSPAttentionHF.register_with_transformers`` hands to
``deepspeed.initialize``): cp consecutive ranks per sequence-parallel group and one
sequence-data-parallel group of every rank, which is the planner's rank order ("tp", "cp",
"dp", "pp") when tp and pp are 1 (``check_groups`` compares them).  The engine recognises that
mpu (``hasattr(mpu, "initialize_sequence_parallel")``, utils/groups.py), partitions ZeRO
states over the sequence-data-parallel group (dp x cp ranks, ``Plan.zero_ranks``) and averages
gradients by summing over that group and dividing by dp x cp / cp = dp
(engine.py ``_reduce_non_expert_gradients``, zero/stage_1_and_2.py, zero/stage3.py).  So each
rank backpropagates its slice's mean loss divided by cp (``loss_share``): summed over the group
that is the gradient of the mean over all the group's tokens (the slices are equal), as
Megatron-DeepSpeed's ``vocab_sequence_parallel_cross_entropy`` gives by gathering per-token
losses and sending each rank back its own slice's gradient.  ZeRO-3's reduce-scatter divides
by dp x cp instead, so there the share is the slice's mean itself (``loss_share``).

Only what ``problem`` accepts runs; nothing here imports torch or DeepSpeed at module level,
so the pre-launch check needs neither.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional

from planner.plan.strategy import Plan
from planner.spec.spec import Spec
from planner.spec.units import ContextParallel, Offload, Precision

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .model import GPT

#: DistributedAttention's layout for (batch, seq, heads, head_dim) tensors: batch first, the
#: heads scattered (dim 2) and the sequence gathered (dim 1) on the way in, the reverse out
BATCH_DIM, HEAD_DIM, SEQ_DIM = 0, 2, 1


def problem(spec: Spec, plan: Plan) -> Optional[str]:
    """Why the executor cannot run ``plan``'s context parallelism, or None (cp 1: nothing to
    say).  One reason, the first that applies, with its operands."""
    if plan.cp == 1:
        return None
    m, cp = spec.model, plan.cp
    reasons = (
        (plan.cp_kind is not ContextParallel.ULYSSES,
         f"cp_kind {plan.cp_kind.value}: the executor runs DeepSpeed-Ulysses only (DeepSpeed "
         f"0.19 has no ring attention)"),
        (plan.tp > 1, f"cp ({cp}) with tp ({plan.tp}): DeepSpeed's Ulysses groups "
                      f"(parallel_state_sp) take every rank as sequence or data parallel"),
        (plan.pp > 1, f"cp ({cp}) with pp ({plan.pp}): DeepSpeed's pipeline engine takes its "
                      f"own grid, which has no sequence-parallel axis"),
        (bool(m.moe_layers), f"cp ({cp}) with a mixture-of-experts model: not built "
                             f"(DeepSpeed-MoE's groups would span the cp ranks)"),
        (plan.offload is not Offload.NONE,
         f"cp ({cp}) with offload {plan.offload.value}: not tested"),
        (plan.precision is Precision.FP16, f"cp ({cp}) with fp16: not tested"),
        (m.n_heads % cp != 0 or m.n_kv_heads % cp != 0,
         f"cp ({cp}) must divide n_heads ({m.n_heads}) and n_kv_heads ({m.n_kv_heads}): "
         f"the all-to-all gives each rank heads/cp of each"),
        (m.seq_len % cp != 0, f"cp ({cp}) must divide seq_len ({m.seq_len})"),
    )
    return next((f"context parallelism: {why}" for bad, why in reasons if bad), None)


def cp_rank(plan: Plan, rank: int) -> int:
    """This rank's place in its context-parallel group (the planner's layout)."""
    return plan.degrees.coords(rank)["cp"]


def local_slice(x: "torch.Tensor", cp: int, rank_in_group: int) -> "torch.Tensor":
    """Tokens (or targets) ``[r * T/cp, (r+1) * T/cp)`` of every sequence of a (B, T) batch."""
    t = x.shape[1] // cp
    return x[:, rank_in_group * t:(rank_in_group + 1) * t].contiguous()


def loss_share(loss: "torch.Tensor", plan: Plan) -> "torch.Tensor":
    """What a rank backpropagates for its slice's mean ``loss`` (see the module docstring):
    1/cp of it, except under ZeRO-3, whose reduce-scatter (zero/stage3.py
    ``__avg_scatter_grads``, the path ``reduce_scatter: true`` takes for every bucket) divides
    the sum by all dp x cp ranks of the partition group, without the sequence-parallel factor
    its all-reduce path and ZeRO 0-2 apply, so the slice's mean itself is the right share."""
    from planner.spec.units import ZeroStage
    return loss if plan.zero == ZeroStage.PARAMETERS else loss / plan.cp


def sequence_groups(plan: Plan):
    """DeepSpeed's Ulysses mpu (the parallel_state_sp module) with cp-rank groups, created once
    per process and reused by later engines of the same cp (its groups are module globals that
    refuse a second initialisation); checked against the plan's layout."""
    from deepspeed.runtime.sequence_parallel import parallel_state_sp as sp
    if sp._SEQUENCE_PARALLEL_GROUP is None or sp.get_sequence_parallel_world_size() != plan.cp:
        sp._release_sequence_parallel_groups()
        sp.initialize_sequence_parallel(sequence_parallel_size=plan.cp)
    check_groups(sp, plan)
    return sp


def check_groups(sp, plan: Plan) -> None:
    """DeepSpeed's sequence-parallel group is this rank's cp group of the planner's layout and
    its sequence-data-parallel group has dp x cp ranks (a raise, not a silent mix-up, should a
    DeepSpeed release lay them out otherwise)."""
    import torch.distributed as td
    rank = td.get_rank()
    ours = next(g for g in plan.degrees.groups("cp") if rank in g)
    theirs = sorted(td.get_process_group_ranks(sp.get_sequence_parallel_group()))
    zero_ranks = sp.get_sequence_data_parallel_world_size()
    if theirs != ours or zero_ranks != plan.zero_ranks:
        raise RuntimeError(f"DeepSpeed's sequence-parallel group {theirs} and sequence-data-"
                           f"parallel size {zero_ranks} are not the plan's {ours} and "
                           f"{plan.zero_ranks} (rank {rank}, {plan.label})")


@functools.cache
def _ulysses_attention() -> type:
    """The wrapper class, built on first use (torch.nn imported lazily)."""
    import torch.nn as nn
    from deepspeed.sequence.layer import DistributedAttention

    class UlyssesAttention(nn.Module):
        """``core`` behind DeepSpeed's DistributedAttention over ``group``, called as the
        model calls its core: (q, k, v) in (batch, seq, heads, head_dim)."""

        def __init__(self, core: nn.Module, group):
            super().__init__()
            self.attention = DistributedAttention(core, group, scatter_idx=HEAD_DIM,
                                                  gather_idx=SEQ_DIM)

        def forward(self, q, k, v):
            return self.attention(q, k, v, BATCH_DIM)

    return UlyssesAttention


def apply_ulysses(model: "GPT", plan: Plan, group, rank_in_group: int) -> "GPT":
    """Every block's attention core wrapped in the all-to-alls over ``group``; the learned
    positions start at this rank's slice.  No parameter is added or renamed."""
    for block in model.blocks:
        block.attn.core = _ulysses_attention()(block.attn.core, group)
    model.embed.first_position = rank_in_group * (model.spec.seq_len // plan.cp)
    return model


__all__ = ["problem", "cp_rank", "local_slice", "loss_share", "sequence_groups",
           "check_groups", "apply_ulysses"]
