"""FLOPs of one training step, counted from the shape (every matmul), beside 6·N·D.

Conventions (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU
Clusters", appendix; Kaplan et al. 2020, table 1): a multiply-add is 2 FLOPs; backward costs twice
the forward; attention scores and attention-over-values are counted for the full s x s product
(no causal halving), as MFU is usually reported; element-wise work is not counted.
"""
from __future__ import annotations

from dataclasses import dataclass

from planner.model.shape import layer_average, mlp_matrices, param_counts
from planner.plan.strategy import Plan, where
from planner.spec.spec import ModelSpec
from planner.spec.units import Recompute


def layer_matmul_flops_per_token(m: ModelSpec) -> float:
    """Forward FLOPs per token of one block's weight matmuls: QKV, output projection, MLP.  A
    mixture-of-experts block counts the router and the top_k experts a token is routed to (and
    the shared expert and its gate): 2 x its active matmul parameters.  Averaged over the
    layers when MoE and dense blocks mix."""
    d = m.d_model
    attention = d * (m.q_dim + 2 * m.kv_dim) + m.q_dim * d

    def mlp(moe: bool) -> int:
        if not moe:
            return mlp_matrices(m) * d * m.d_ff
        e = m.moe
        return (d * e.experts + e.top_k * mlp_matrices(m) * d * e.expert_d_ff
                + mlp_matrices(m) * d * e.shared_d_ff + (d if e.shared_expert_gate else 0))
    return layer_average(m, lambda moe: 2 * (attention + mlp(moe)))


def attended_keys(m: ModelSpec) -> float:
    """Keys each query's scores are counted over, averaged over the layers: the whole sequence
    (the full s x s product, by the convention above), or the window on sliding-window layers
    (every layer, or every other one as Gemma 2 alternates local and global)."""
    s = m.seq_len
    if m.sliding_window is None or m.sliding_window >= s:
        return float(s)
    if m.sliding_window_layers == "all":
        return float(m.sliding_window)
    sliding = (m.n_layers + 1) // 2  # layers 0, 2, 4, ... slide
    return (sliding * m.sliding_window + (m.n_layers - sliding) * s) / m.n_layers


def causal_pairs(m: ModelSpec) -> float:
    """(query, key) pairs a causal fused kernel computes per sequence, averaged over the layers:
    s²/2, or s·w - w²/2 on a sliding-window layer (each query sees at most w keys; the kernel
    skips the blocks outside the band)."""
    s, w = m.seq_len, m.sliding_window
    full = s * s / 2
    if w is None or w >= s:
        return full
    band = s * w - w * w / 2
    if m.sliding_window_layers == "all":
        return band
    sliding = (m.n_layers + 1) // 2
    return (sliding * band + (m.n_layers - sliding) * full) / m.n_layers


def attention_flops_per_token(m: ModelSpec) -> float:
    """Forward FLOPs per token of QK^T and (softmax)V in one block: 2·2·keys·q_dim."""
    return 4 * attended_keys(m) * m.q_dim


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
    if recompute is Recompute.OP:  # every other matmul; the attention kernel's outputs are kept
        return m.n_layers * layer_matmul_flops_per_token(m) // 2
    return 0


@dataclass(frozen=True)
class StepFlops:
    tokens: int  #: tokens per optimizer step (global batch)
    model: float  #: forward + backward, the "model FLOPs" MFU is measured against
    hardware: float  #: model + recompute's extra forward ("hardware FLOPs", HFU)
    six_nd: float  #: 6·N·D with N = the parameters a token uses (all of them for a dense model)

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
                                 float(recompute_flops_per_token(m, Recompute.SELECTIVE)),
                                 where(plan.is_recompute(Recompute.OP),
                                       float(recompute_flops_per_token(m, Recompute.OP)), 0.0)))
    hardware = model + extra
    return StepFlops(tokens=tokens, model=float(model),
                     hardware=hardware if hasattr(hardware, "shape") and hardware.shape
                     else float(hardware),
                     six_nd=6.0 * param_counts(m).active * tokens)
