"""fp8 training recipes: which GEMMs run in fp8, the copies each recipe keeps, and the casts it
adds, as pure functions of the rank's shape (planner/model/local.py).

``precision: fp8`` is bf16 training (bf16 weights, gradients and activations between GEMMs, fp32
master weights and Adam moments: planner/spec/units.py RECIPES) whose block GEMMs - the fused
QKV projection, the output projection and the MLP's matrices - run on fp8 tensor cores in
forward (fprop) and backward (dgrad, wgrad).  The embedding, the LM head, norms, the attention
core, softmax, activations and the optimizer stay in high precision (Transformer Engine's
default: attention in fp8 only with fp8_dpa; torchao converts nn.Linear layers and torchtitan
leaves the output layer out).  The expert GEMMs of a mixture-of-experts layer are kept bf16
here.  Mechanisms, with the source lines read: /work/shared/notes/fp8-cp-research.md sections
1-2 (Transformer Engine d0067d0, torchao 36027d8).

Per recipe (``runtime.fp8_recipe``):
- **te_delayed** (TE DelayedScaling): per-tensor scales from an amax history of 1,024 steps
  (recipe/__init__.py:253-256), 3 forward + 2 backward quantizers per GEMM (module/base.py:
  1137-1139); a Linear saves only the column-wise fp8 copy of its input for wgrad
  (module/linear.py:602-616: 1 byte an element instead of 2); with ``is_first_microbatch`` (as
  Megatron-Core and NeMo pass it) the fp8 weight is cast once per step and cached
  (linear.py:479, base.py:915).  On Hopper and Ada fp8 GEMMs must be TN, so column-wise data is
  an explicit transposed copy (csrc/quantizer.cpp:361-375); Blackwell runs non-TN fp8 GEMMs
  (common/transformer_engine.cpp:1200-1201) and keeps one buffer.
- **te_current** (Float8CurrentScaling): the same copies; each cast first reads the tensor for
  its amax (one more pass), no history.
- **te_mxfp8** (MXFP8BlockScaling, Blackwell): 32-element blocks with an E8M0 scale each; the
  row-wise and column-wise copies are both quantised from the bf16 tensor, each 1 + 1/32 bytes an
  element (mxfp8_tensor.py:84-93).
- **torchao_tensorwise** / **torchao_rowwise** (torchao.float8, torchtitan): dynamic scales; the
  backward saves the bf16 input and weight and casts them again (float8_linear.py:45, 113-199),
  so no activation is saved in fp8 and no fp8 weight is cached; a cast is an amax pass and a
  scaled copy.  Tensorwise alone can all-gather fp8 weights under FSDP2
  (enable_fsdp_float8_all_gather; ``runtime.fp8_all_gather``); rowwise gathers bf16.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.model.local import local_dims
from planner.model.shape import mlp_matrices
from planner.spec.spec import Spec
from planner.spec.units import FP32_BYTES, Fp8Recipe, Precision, ZeroStage

#: the fp8 GEMM efficiency curve relative to the GPU's bf16 one, where the catalog states none
#: (efficiency.gemm_fp8_max, gemm_fp8_half_dim): large-GEMM fraction of the fp8 peak over
#: gemm_max, and the half-efficiency dimension over gemm_half_dim.  Both held at 1 (large fp8
#: GEMMs approach 2x bf16: the same share of a peak twice as high; torchao
#: docs/source/workflows/training.md:146); fitting them on published pairs did not improve the
#: out-of-sample error (bench/fp8_cv.py, bench/results/fp8_cv.txt)
FP8_MAX_RATIO = 1.0
FP8_HALF_DIM_RATIO = 1.0
#: torchao rowwise: its row-scaled GEMMs (CUTLASS, scales applied in the epilogue) reach this
#: share of a tensorwise (cuBLAS) fp8 GEMM's throughput.  Fitted on 21 published fp8/bf16
#: speed-ups: 0.5-0.7 with each source left out, 0.6 on all (bench/fp8_cv.py)
ROWWISE_GEMM_RATIO = 0.6

#: TE DelayedScaling's default amax history (recipe/__init__.py:253-256)
AMAX_HISTORY = 1024
#: quantizers TE keeps per GEMM: input, weight, output forward; grad output, grad input backward
QUANTIZERS_PER_GEMM = 5
#: MXFP8: one E8M0 (1-byte) scale per 32 elements (TE pytorch/constants.py:175)
MX_BLOCK = 32


@dataclass(frozen=True)
class RecipeFacts:
    """What one recipe keeps and casts; bytes per element of the tensor cast."""

    saves_fp8_input: bool  #: the Linear saves its input's fp8 copy (TE), not the bf16 (torchao)
    caches_weight: bool  #: the fp8 weight is cast once per step and kept (TE is_first_microbatch)
    element_bytes: float  #: one fp8 copy, scales included (MXFP8: 1 + 1/32)
    amax_pass: bool  #: a cast reads the tensor once more for its amax (current/dynamic scaling)
    rowwise_and_columnwise: bool  #: both copies always quantised from bf16 (MXFP8)
    backward_recasts: bool  #: backward casts the saved bf16 input and weight again (torchao)
    fp8_all_gather: bool  #: the recipe can all-gather fp8 weights under ZeRO-3/FSDP
    history: int  #: amax history length per quantizer


RECIPE_FACTS: dict[Fp8Recipe, RecipeFacts] = {
    Fp8Recipe.TE_DELAYED: RecipeFacts(True, True, 1.0, False, False, False, True, AMAX_HISTORY),
    Fp8Recipe.TE_CURRENT: RecipeFacts(True, True, 1.0, True, False, False, True, 0),
    Fp8Recipe.TE_MXFP8: RecipeFacts(True, True, 1 + 1 / MX_BLOCK, False, True, False, True, 0),
    Fp8Recipe.TORCHAO_TENSORWISE: RecipeFacts(False, False, 1.0, True, False, True, True, 0),
    Fp8Recipe.TORCHAO_ROWWISE: RecipeFacts(False, False, 1.0, True, False, True, False, 0),
}


def recipe(spec: Spec) -> Fp8Recipe:
    """The spec's recipe; 'auto': MXFP8 on a GPU with MX (fp4) formats, else TE delayed
    scaling."""
    r = spec.runtime.fp8_recipe
    if r != "auto":
        return Fp8Recipe(r)
    return Fp8Recipe.TE_MXFP8 if "fp4" in spec.cluster.gpu.peak_tflops else Fp8Recipe.TE_DELAYED


def needs_transpose(spec: Spec) -> bool:
    """Per-tensor fp8 column-wise data is an explicit transposed copy where fp8 GEMMs must be TN
    (Hopper, Ada); GPUs with MX formats (Blackwell) run non-TN fp8 GEMMs on one buffer."""
    return "fp4" not in spec.cluster.gpu.peak_tflops


def copies(spec: Spec) -> float:
    """Bytes per element of what a recipe keeps of a tensor it casts for forward and backward:
    row-wise (forward) and column-wise (wgrad / dgrad) data, scales included."""
    facts = RECIPE_FACTS[recipe(spec)]
    if facts.rowwise_and_columnwise:
        return 2 * facts.element_bytes
    return facts.element_bytes * (2 if needs_transpose(spec) else 1)


def block_gemm_weights(spec: Spec, plan) -> float:
    """Elements of the fp8 GEMMs' weights one tp rank of one block holds: fused QKV, output
    projection and the MLP's matrices (the attention projections only for a MoE block's
    average: its experts stay bf16)."""
    m, ld = spec.model, local_dims(spec.model, plan)
    d = ld.d_model
    attn = d * (ld.q_width + 2 * ld.kv_width) + ld.q_width * d
    dense_mlp = mlp_matrices(m) * d * ld.ffn
    dense = m.n_layers - m.moe_layers
    return attn + dense_mlp * dense / m.n_layers


def weight_cache_bytes(spec: Spec, plan, n_layers) -> float:
    """The fp8 weight copies a TE recipe keeps from the first micro-batch of a step to the end of
    its backward (row-wise, and column-wise as the GPU needs it), plus the scaling state (scale
    and amax history per quantizer, fp32).  Under ZeRO-3 the weights arrive gathered per module
    and are cast per use, so nothing is cached.  0 unless the plan is fp8."""
    facts = RECIPE_FACTS[recipe(spec)]
    fp8 = plan.is_precision(Precision.FP8)
    weights = n_layers * block_gemm_weights(spec, plan)
    cached = facts.caches_weight & (plan.zero != ZeroStage.PARAMETERS)
    cache = weights * copies(spec) * cached
    gemms = n_layers * 4
    state = gemms * QUANTIZERS_PER_GEMM * (1 + facts.history) * FP32_BYTES
    return fp8 * (cache + state)


def block_saved_delta_bytes(spec: Spec, plan) -> float:
    """``saved_input_delta_bytes`` for one block of this plan's micro-batch: the norm outputs
    (1/tp of them with sequence parallelism), the attention output and the MLP's down input
    on this rank."""
    ld = local_dims(spec.model, plan)
    t = ld.tokens
    return saved_input_delta_bytes(spec, plan, 2 * t * ld.d_model * ld.norm_share,
                                   t * ld.q_width, t * ld.ffn)


def gathered_bytes_per_param(spec: Spec, plan, n, n_layers):
    """Bytes per parameter of ZeRO-3's gathered weights and their all-gather: the fp8 GEMM
    weights at one byte where the recipe all-gathers fp8 (runtime.fp8_all_gather), the rest in
    the compute dtype."""
    b = plan.param_bytes
    facts = RECIPE_FACTS[recipe(spec)]
    if not (spec.runtime.fp8_all_gather and facts.fp8_all_gather):
        return b + 0.0 * n
    share = np.minimum(1.0, n_layers * block_gemm_weights(spec, plan) / np.maximum(n, 1))
    return np.where(plan.is_precision(Precision.FP8), b - (b - facts.element_bytes) * share, b)


def saved_input_delta_bytes(spec: Spec, plan, norm_out, attn_out, mlp_down_in) -> float:
    """Change in what one block saves when its Linears keep fp8 inputs (TE recipes), for the
    bf16 elements of each GEMM input: the two norm outputs (QKV and MLP inputs) and the MLP's
    down-projection input are kept in fp8 instead of bf16; the attention output stays saved in
    bf16 by the attention kernel, so the output projection's fp8 copy is extra.  Saved inputs
    are column-wise only (linear.py:602-616): one fp8 copy, scales included."""
    facts = RECIPE_FACTS[recipe(spec)]
    if not facts.saves_fp8_input:
        return 0.0 * plan.micro_batch
    e, c = plan.activation_bytes, facts.element_bytes
    delta = (c - e) * (norm_out + mlp_down_in) + c * attn_out
    return plan.is_precision(Precision.FP8) * delta


def cast_bytes_per_micro_batch(spec: Spec, plan) -> float:
    """HBM traffic of one block's fp8 casts in one micro-batch (forward + backward), memory-bound:
    each GEMM's input in forward and its output gradient in backward read in bf16 and written as
    the recipe's copies (an amax pass first for current / dynamic scaling); torchao's backward
    casts the saved bf16 input again; weights cast once per step by TE (charged to the first
    micro-batch: spread here over the grad_accum micro-batches), every micro-batch (forward and
    backward) by torchao."""
    facts = RECIPE_FACTS[recipe(spec)]
    m, ld = spec.model, local_dims(spec.model, plan)
    t, d, e = ld.tokens, ld.d_model, plan.activation_bytes
    up = (mlp_matrices(m) - 1) * ld.ffn
    inputs = t * (d + ld.q_width + d + ld.ffn)  # QKV, projection, MLP up, MLP down
    grads = t * ((ld.q_width + 2 * ld.kv_width) + d + up + d)
    weights = block_gemm_weights(spec, plan)
    cast = e * (2 if facts.amax_pass else 1) + copies(spec)  # read (twice with amax) + write
    per_mb = (inputs + grads) * cast
    if facts.backward_recasts:
        per_mb = per_mb + inputs * cast + 2 * weights * cast
    else:
        per_mb = per_mb + weights * cast / plan.grad_accum
    return plan.is_precision(Precision.FP8) * per_mb


__all__ = ["RECIPE_FACTS", "recipe", "copies", "weight_cache_bytes", "saved_input_delta_bytes",
           "cast_bytes_per_micro_batch", "block_gemm_weights"]
