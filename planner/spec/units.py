"""Units, enums for closed sets, and the one table of bytes per dtype and precision recipe.

Internally everything is bytes, FLOPs and seconds; conversion happens only when reporting.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

GiB = 2**30
MiB = 2**20
TERA = 1e12  #: FLOP/s per TFLOP/s


class ZeroStage(IntEnum):
    """DeepSpeed ZeRO stage (Rajbhandari et al. 2020, "ZeRO", SC'20)."""

    NONE = 0  #: no partitioning: every data-parallel rank holds all model states
    OPTIMIZER = 1  #: optimizer states (and fp32 master weights) partitioned over dp
    GRADIENTS = 2  #: + gradients partitioned over dp
    PARAMETERS = 3  #: + parameters partitioned over dp, gathered layer by layer


class Precision(str, Enum):
    """Training precision recipe as DeepSpeed configures it."""

    FP32 = "fp32"  #: fp32 weights, gradients and optimizer; no master copy
    FP16 = "fp16"  #: fp16 weights and gradients, fp32 master + optimizer, dynamic loss scaling
    BF16 = "bf16"  #: bf16 weights and gradients, fp32 master + optimizer
    #: bf16 training whose block GEMMs (QKV, output projection, MLP) run in fp8; which scaling,
    #: caches and casts: ``runtime.fp8_recipe`` (planner/model/fp8.py)
    FP8 = "fp8"


class Fp8Recipe(str, Enum):
    """How fp8 GEMMs are scaled and what copies they keep (planner/model/fp8.py cites each)."""

    TE_DELAYED = "te_delayed"  #: Transformer Engine DelayedScaling: per-tensor, amax history
    TE_CURRENT = "te_current"  #: Transformer Engine Float8CurrentScaling: per-tensor, this amax
    TE_MXFP8 = "te_mxfp8"  #: Transformer Engine MXFP8BlockScaling (Blackwell): 1x32 blocks
    TORCHAO_TENSORWISE = "torchao_tensorwise"  #: torchao float8, dynamic per-tensor scales
    TORCHAO_ROWWISE = "torchao_rowwise"  #: torchao float8, dynamic per-row scales


class ContextParallel(str, Enum):
    """How a context-parallel group splits the sequence (``Plan.cp`` ranks)."""

    ULYSSES = "ulysses"  #: DeepSpeed-Ulysses: all-to-alls turn the sequence split into a head split
    RING = "ring"  #: ring attention (Megatron CP, torchtitan CP): K/V blocks passed round the ring


class Recompute(str, Enum):
    """Activation recomputation (Korthikanti et al. 2022, "Reducing Activation Recomputation")."""

    NONE = "none"  #: keep every activation the backward pass needs
    SELECTIVE = "selective"  #: recompute only the attention core (scores, softmax)
    FULL = "full"  #: keep only each block's input; rerun the block's forward in backward
    #: per-op selective checkpointing (torchtitan's "op" policy through torch.utils.checkpoint's
    #: selective contexts): save the attention kernel's outputs and every other matmul's output,
    #: recompute the rest of the block (norms, activations, rotary, the other matmuls)
    OP = "op"


class Offload(str, Enum):
    """What DeepSpeed moves off the GPU (ZeRO-Offload, ZeRO-Infinity)."""

    NONE = "none"  #: everything on the GPU
    OPTIMIZER_CPU = "optimizer_cpu"  #: fp32 master + optimizer states + fp32 grads in pinned host RAM
    OPTIMIZER_NVME = "optimizer_nvme"  #: as optimizer_cpu, but the states live on NVMe (ZeRO-3)
    PARAMS_CPU = "params_cpu"  #: optimizer_cpu and the partitioned parameters too (ZeRO-3)
    PARAMS_NVME = "params_nvme"  #: optimizer and parameters on NVMe (ZeRO-Infinity, ZeRO-3)

    @property
    def optimizer_off_gpu(self) -> bool:
        return self is not Offload.NONE

    @property
    def params_off_gpu(self) -> bool:
        return self in (Offload.PARAMS_CPU, Offload.PARAMS_NVME)

    @property
    def uses_nvme(self) -> bool:
        return self in (Offload.OPTIMIZER_NVME, Offload.PARAMS_NVME)


class Arch(str, Enum):
    """Block family; sets the defaults of the fields below it."""

    GPT2 = "gpt2"  #: LayerNorm, GELU MLP, learned positions, biases, tied embeddings
    LLAMA = "llama"  #: RMSNorm, SwiGLU MLP, RoPE, no biases, untied head


class Norm(str, Enum):
    LAYERNORM = "layernorm"  #: weight and bias, saves mean and rstd
    RMSNORM = "rmsnorm"  #: weight only


class Activation(str, Enum):
    GELU = "gelu"  #: two matrices d->ff->d
    SWIGLU = "swiglu"  #: three matrices: gate and up d->ff, down ff->d


class Position(str, Enum):
    LEARNED = "learned"  #: a max_positions x d_model embedding table
    ROPE = "rope"  #: rotary, no parameters


class AttentionKernel(str, Enum):
    FLASH = "flash"  #: fused kernel (FlashAttention / memory-efficient SDPA): no s^2 tensors kept
    EAGER = "eager"  #: softmax(QK^T)V materialised: the s^2 scores and probabilities are kept


class Optimizer(str, Enum):
    ADAMW = "adamw"
    ADAM = "adam"
    SGD = "sgd"  #: with momentum


@dataclass(frozen=True)
class Recipe:
    """Bytes per parameter for one precision recipe (ZeRO paper, section 3.1: 2+2+12 for mixed)."""

    param_bytes: int  #: the weights the model computes with
    grad_bytes: int  #: the gradients backward produces
    master_bytes: int  #: fp32 master copy kept by the optimizer wrapper (0 when params are fp32)
    activation_bytes: int  #: activations are stored in this width


RECIPES: dict[Precision, Recipe] = {
    Precision.FP32: Recipe(param_bytes=4, grad_bytes=4, master_bytes=0, activation_bytes=4),
    Precision.FP16: Recipe(param_bytes=2, grad_bytes=2, master_bytes=4, activation_bytes=2),
    Precision.BF16: Recipe(param_bytes=2, grad_bytes=2, master_bytes=4, activation_bytes=2),
    # fp8 recipes keep bf16 weights, gradients and activations between GEMMs (their fp8 copies
    # are planner/model/fp8.py's terms) and the fp32 master and moments
    Precision.FP8: Recipe(param_bytes=2, grad_bytes=2, master_bytes=4, activation_bytes=2),
}

#: fp32 optimizer state bytes per parameter (Adam: exp_avg + exp_avg_sq; SGD: momentum).
OPTIMIZER_STATE_BYTES: dict[Optimizer, int] = {
    Optimizer.ADAMW: 8,
    Optimizer.ADAM: 8,
    Optimizer.SGD: 4,
}

FP32_BYTES = 4
INDEX_BYTES = 8  # int64 token ids and targets


def gib(nbytes: float) -> float:
    return nbytes / GiB
