"""FLOPs of one training step, counted from the shape (every matmul), beside 6·N·D.

Conventions (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU
Clusters", appendix; Kaplan et al. 2020, table 1): a multiply-add is 2 FLOPs; backward costs twice
the forward; attention scores and attention-over-values are counted for the full s x s product
(no causal halving), as MFU is usually reported; element-wise work is not counted.
"""
from __future__ import annotations

from dataclasses import dataclass

from planner.model.shape import mlp_matrices, param_counts
from planner.plan.strategy import Plan, where
from planner.spec.spec import ModelSpec
from planner.spec.units import Recompute


def layer_matmul_flops_per_token(m: ModelSpec) -> int:
    """Forward FLOPs per token of one block's weight matmuls: QKV, output projection, MLP."""
    d = m.d_model
    return 2 * (d * (d + 2 * m.kv_dim) + d * d + mlp_matrices(m) * d * m.d_ff)


def attention_flops_per_token(m: ModelSpec) -> int:
    """Forward FLOPs per token of QK^T and (softmax)V in one block: 2·2·s·d."""
    return 4 * m.seq_len * m.d_model


def logits_flops_per_token(m: ModelSpec) -> int:
    return 2 * m.d_model * m.vocab_size


def forward_flops_per_token(m: ModelSpec) -> int:
    per_layer = layer_matmul_flops_per_token(m) + attention_flops_per_token(m)
    return m.n_layers * per_layer + logits_flops_per_token(m)


def recompute_flops_per_token(m: ModelSpec, recompute: Recompute) -> int:
    """Extra forward work in backward: full reruns every block, selective the attention core."""
    if recompute is Recompute.FULL:
        return m.n_layers * (layer_matmul_flops_per_token(m) + attention_flops_per_token(m))
    if recompute is Recompute.SELECTIVE:
        return m.n_layers * attention_flops_per_token(m)
    return 0


@dataclass(frozen=True)
class StepFlops:
    tokens: int  #: tokens per optimizer step (global batch)
    model: float  #: forward + backward, the "model FLOPs" MFU is measured against
    hardware: float  #: model + recompute's extra forward ("hardware FLOPs", HFU)
    six_nd: float  #: 6·N·D with N = all parameters

    def per_gpu(self, world_size: int) -> float:
        return self.hardware / world_size


def tokens_per_step(m: ModelSpec, global_batch_sequences: int) -> int:
    """Tokens one optimizer step trains on: the global batch in sequences times their length (for
    a plan that passes the batch rule, dp x micro_batch x grad_accum sequences)."""
    return global_batch_sequences * m.seq_len


def utilisation(flops_per_step: float, step_time_s, gpus, peak_flops_per_gpu):
    """Share of the GPUs' dense peak a step achieves: MFU with the model FLOPs (no recompute),
    HFU with the hardware FLOPs (Chowdhery et al. 2022, "PaLM", appendix B)."""
    return flops_per_step / (step_time_s * gpus * peak_flops_per_gpu)


def step_flops(m: ModelSpec, plan: Plan, global_batch_sequences: int) -> StepFlops:
    """For a PlanBatch, ``hardware`` is an array."""
    tokens = tokens_per_step(m, global_batch_sequences)
    model = 3.0 * forward_flops_per_token(m) * tokens  # floats: a 1T model overflows int64
    extra = float(tokens) * where(plan.is_recompute(Recompute.FULL),
                           float(recompute_flops_per_token(m, Recompute.FULL)),
                           where(plan.is_recompute(Recompute.SELECTIVE),
                                 float(recompute_flops_per_token(m, Recompute.SELECTIVE)), 0.0))
    hardware = model + extra
    return StepFlops(tokens=tokens, model=float(model),
                     hardware=hardware if hasattr(hardware, "shape") and hardware.shape
                     else float(hardware),
                     six_nd=6.0 * param_counts(m).total * tokens)
