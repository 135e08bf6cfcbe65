"""fp8 training applied to a GPT from outside: torchao's Float8Linear swapped in for the block
GEMMs (torchao.float8, the recipe torchtitan uses).

What is converted is what the planner prices as fp8 (planner/model/fp8.py
``block_gemm_weights``): each block's fused QKV projection (``attn.qkv``), its attention output
projection (``attn.proj``) and its dense MLP's matrices (GELU ``mlp.fc``/``mlp.fc2``, SwiGLU
``mlp.w13``/``mlp.w2``).  The token table, the LM head, norms, the attention core and a
mixture-of-experts layer's router, experts and shared expert stay in the engine's bf16.

Float8Linear is an nn.Linear subclass holding the same ``weight`` and ``bias`` parameters (the
swap keeps the very Parameter objects), so parameter names, checkpoints, resume and the fp32
export stay those of a plain GPT.  Its scales are dynamic (computed from each tensor's amax at
every cast), so it keeps no state of its own.  torchao is imported inside the functions.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from planner.plan.strategy import Plan
from planner.spec.spec import Spec
from planner.spec.units import Fp8Recipe, Precision

from .errors import ExecutorError

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

#: runtime.fp8_recipe -> torchao's recipe name (Float8LinearConfig.from_recipe_name)
TORCHAO_RECIPES = {Fp8Recipe.TORCHAO_TENSORWISE: "tensorwise",
                   Fp8Recipe.TORCHAO_ROWWISE: "rowwise"}

#: the block GEMMs, by the plain GPT's module names (executor/model.py): a dense MLP's matrices
#: only, never a MoE layer's (``mlp.moe...``, ``mlp.shared...``, ``mlp.shared_gate``)
FP8_GEMMS = re.compile(r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc|fc2|w13|w2))")


def problem(spec: Spec, plan: Plan) -> "str | None":
    """Why the executor cannot run ``plan``'s fp8, or None (not fp8: nothing to say).  The
    swap covers the plain GPT's own Linears: tensor parallelism replaces them with its column-
    and row-parallel layers, and a mixture-of-experts layer is DeepSpeed-MoE's."""
    if plan.precision is not Precision.FP8:
        return None
    if plan.tp > 1:
        return (f"precision fp8 with tp ({plan.tp}): torchao's Float8Linear is swapped in for "
                f"the plain GPT's Linears, not the tensor-parallel layers")
    if spec.model.moe_layers:
        return "precision fp8 with mixture-of-experts layers: not wired into DeepSpeed-MoE"
    return None


def is_fp8_gemm(name: str) -> bool:
    """Whether the module called ``name`` in a plain GPT is one of the block GEMMs run in fp8."""
    return FP8_GEMMS.fullmatch(name) is not None


def torchao_config(spec: Spec):
    """torchao's Float8LinearConfig for the spec's recipe; one ExecutorError line when the
    recipe is not torchao's or torchao is not installed."""
    from planner.model.fp8 import recipe

    chosen = recipe(spec)
    if chosen not in TORCHAO_RECIPES:
        raise ExecutorError(f"runtime.fp8_recipe {chosen.value}: the executor runs fp8 through "
                            f"torchao (torchao_tensorwise, torchao_rowwise)")
    try:
        from torchao.float8 import Float8LinearConfig
    except ImportError as exc:
        raise ExecutorError(f"precision fp8 needs torchao, which is not installed here "
                            f"(pip install torchao): {exc}") from None
    return Float8LinearConfig.from_recipe_name(TORCHAO_RECIPES[chosen])


def apply_fp8(model: "nn.Module", spec: Spec) -> "nn.Module":
    """Swap torchao's Float8Linear in for the block GEMMs of ``model`` (a plain GPT, on the meta
    device or materialised) in place; returns it.  The rest of the model is untouched."""
    config = torchao_config(spec)  # first: without torchao, its one line
    from torchao.float8 import convert_to_float8_training

    return convert_to_float8_training(model, config=config,
                                      module_filter_fn=lambda _module, name: is_fp8_gemm(name))


def fp8_modules(model: "nn.Module") -> dict[str, "nn.Module"]:
    """The model's Float8Linear modules by name (what ``apply_fp8`` converted)."""
    from torchao.float8.float8_linear import Float8Linear
    return {name: m for name, m in model.named_modules() if isinstance(m, Float8Linear)}


__all__ = ["apply_fp8", "fp8_modules", "is_fp8_gemm", "problem", "torchao_config",
           "TORCHAO_RECIPES"]
