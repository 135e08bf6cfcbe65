"""DeepSpeed's rules as predicates (each cites where DeepSpeed enforces it), and the layouts this
project's executor cannot run with DeepSpeed yet.  Same form as planner/search/rules.py."""
from __future__ import annotations

import functools
import importlib.util
from typing import Optional

from planner.model import fp8
from planner.plan.rule import Rule
from planner.spec.spec import ATTENTION_NAMES
from planner.spec.units import (AttentionKernel, ContextParallel, Fp8Recipe, Optimizer, Precision,
                                Recompute, ZeroStage)

CPU_OPTIMIZERS = (Optimizer.ADAM, Optimizer.ADAMW)


def _pipeline_zero(spec, p):
    """deepspeed/runtime/pipe/engine.py:76: 'ZeRO-2 and ZeRO-3 are incompatible with pipeline
    parallelism'."""
    return (p.pp > 1) & (p.zero >= ZeroStage.GRADIENTS)


def _pipeline_offload(spec, p):
    """The pipeline engine runs ZeRO-1 at most and nothing in it drives offload (pipe/engine.py
    has no offload path); we do not emit the combination."""
    return (p.pp > 1) & p.optimizer_off_gpu


def _offload_stage(spec, p):
    """offload_optimizer needs ZeRO >= 1; parameter and NVMe offload exist only in ZeRO-3
    (zero/config.py; stage_1_and_2.py:220 silently turns NVMe into CPU offload)."""
    zero0 = p.optimizer_off_gpu & (p.zero == ZeroStage.NONE)
    needs3 = (p.params_off_gpu | p.uses_nvme) & (p.zero != ZeroStage.PARAMETERS)
    return zero0 | needs3


def _offload_stage_why(spec, p):
    if p.zero == ZeroStage.NONE and not (p.params_off_gpu or p.uses_nvme):
        return f"offload ({p.offload.value}) needs ZeRO 1-3, not 0"
    return f"offload ({p.offload.value}) needs ZeRO-3, not {int(p.zero)}"


def _offload_optimizer(spec, p):
    """engine.py:2384-2399: offload swaps in DeepSpeed's CPU optimizers (Adam, AdamW, Adagrad,
    Lion); another optimizer with offload raises ZeRORuntimeException."""
    return p.optimizer_off_gpu & (spec.training.optimizer not in CPU_OPTIMIZERS)



def _moe_layout(spec, p):
    """DeepSpeed-MoE's layer as modelled here: no tensor-parallel experts (its default,
    enable_expert_tensor_parallelism off), no pipeline (Megatron-DeepSpeed's MoE recipes run
    without one: the router's auxiliary loss does not cross stages), no ZeRO-3 (the engine
    refuses native MoE with stage 3)."""
    if not spec.model.moe_layers:
        return False
    return (p.tp > 1) | (p.pp > 1) | (p.zero == ZeroStage.PARAMETERS)


def _moe_layout_why(spec, p):
    what = ("ZeRO-3 (DeepSpeed refuses native MoE with stage 3)" if p.zero == ZeroStage.PARAMETERS
            else f"tp={p.tp}, pp={p.pp} (modelled with tp 1 and pp 1: experts are not tensor-"
                 f"parallel, and the router's loss does not cross pipeline stages)")
    return f"mixture-of-experts with {what}"


def _moe_top1_tokens(spec, p):
    """deepspeed/moe/sharded_moe.py:278 (top1gating): 'No. of tokens (batch-size) should be
    greater than min_capacity', an assert on the tokens of one rank's micro-batch."""
    moe = spec.model.moe
    if moe is None or moe.top_k != 1:
        return False
    return p.micro_batch * spec.model.seq_len < moe.min_capacity


#: DeepSpeed refuses these plans (or, for offload, has no path that runs them)
RULES: tuple[Rule, ...] = (
    Rule("MoE layout", _moe_layout, _moe_layout_why),
    Rule("MoE top-1 tokens", _moe_top1_tokens, lambda s, p: (
        f"model.moe.min_capacity: top-1 routing needs a micro-batch of at least min_capacity "
        f"({s.model.moe.min_capacity}) tokens, not {p.micro_batch} x {s.model.seq_len}")),
    Rule("pipeline needs ZeRO 0/1", _pipeline_zero, lambda s, p: (
        f"pipeline parallelism (pp={p.pp}) needs ZeRO 0 or 1, not {int(p.zero)}")),
    Rule("pipeline with offload", _pipeline_offload, lambda s, p: (
        f"pipeline parallelism (pp={p.pp}) does not combine with offload ({p.offload.value})")),
    Rule("offload vs ZeRO stage", _offload_stage, _offload_stage_why),
    Rule("offload vs optimizer", _offload_optimizer, lambda s, p: (
        f"offload ({p.offload.value}) needs a DeepSpeed CPU optimizer (adam, adamw), not "
        f"{s.training.optimizer.value}")),
)


def _cpu_checkpointing(spec, p):
    return spec.runtime.cpu_checkpointing & p.is_recompute(Recompute.FULL)


def unbuilt_features(m) -> list[str]:
    """What the spec's model has that the executor's GPT (executor/model.py: GPT-2- and
    Llama-style blocks) does not build, each naming its field."""
    out = []
    if m.q_dim != m.d_model:
        out.append(f"model.head_dim: {m.n_heads} heads x {m.head_dim} != d_model {m.d_model}")
    if m.norms_per_block != 2:
        out.append("model.norms_per_block: sandwich norms")
    if m.parallel_residual:
        out.append("model.parallel_residual")
    if m.rotary_fraction != 1.0:
        out.append(f"model.rotary_fraction: partial rotary ({m.rotary_fraction:g})")
    if m.logit_softcap is not None or m.attention_softcap is not None:
        out.append("model.logit_softcap/attention_softcap: soft-capping")
    if m.sliding_window is not None and m.sliding_window < m.seq_len:
        out.append(f"model.sliding_window: a {m.sliding_window}-token window")
    return out


def _unbuilt(spec, p):
    return bool(unbuilt_features(spec.model))


def _other_attention(spec, p):
    return spec.runtime.attention_impl != "flash2" and spec.model.attention is AttentionKernel.FLASH


def attention_kernel_why(spec, alternative: str = "") -> str:
    """Why the executor cannot run a plan priced at another attention kernel than FlashAttention-2
    (the CLI's --execute says it before planning, with ``alternative`` to the fix)."""
    kernel = spec.runtime.attention_impl
    return (f"runtime.attention_kernel {kernel} prices {ATTENTION_NAMES[kernel]}, but the executor "
            f"runs PyTorch's scaled_dot_product_attention (set runtime.attention_kernel: "
            f"flash2{alternative})")


#: the fp8 recipes the executor runs: torchao's Float8Linear swapped in for the block GEMMs
#: (executor/fp8.py); Transformer Engine's modules are not wired in
EXECUTOR_FP8_RECIPES = (Fp8Recipe.TORCHAO_TENSORWISE, Fp8Recipe.TORCHAO_ROWWISE)


@functools.lru_cache(maxsize=1)
def torchao_installed() -> bool:
    """torchao is importable here (the job runs in this environment unless launch.python says
    otherwise)."""
    return importlib.util.find_spec("torchao") is not None


def _fp8_problem(spec) -> Optional[str]:
    """Why the executor cannot run this spec's fp8 at all, whatever the layout, or None."""
    recipe = fp8.recipe(spec)
    if recipe not in EXECUTOR_FP8_RECIPES:
        return (f"runtime.fp8_recipe {recipe.value}: the executor runs fp8 through torchao "
                f"(torchao_tensorwise, torchao_rowwise); Transformer Engine's modules are not "
                f"wired in")
    if not torchao_installed():
        return "precision fp8: torchao is not installed (pip install torchao)"
    if spec.model.moe_layers:
        return "precision fp8 with mixture-of-experts layers: not wired into DeepSpeed-MoE"
    return None


def _fp8(spec, p):
    """fp8 plans the executor cannot run: a recipe other than torchao's, torchao missing, a MoE
    model, or tensor parallelism (executor/fp8.py swaps torchao's Float8Linear into the GPT's
    own Linears; tp replaces them with its column/row-parallel layers, which torchao does not
    convert)."""
    blocked = _fp8_problem(spec) is not None
    return p.is_precision(Precision.FP8) & (blocked | (p.tp > 1))


def _fp8_why(spec, p):
    return _fp8_problem(spec) or (
        f"precision fp8 with tp={p.tp}: the executor's tensor-parallel layers have no fp8 "
        f"form (torchao converts plain Linears)")


def _cp_layout(spec, p):
    """executor/context_parallel.py builds DeepSpeed's Ulysses groups
    (runtime/sequence_parallel/parallel_state_sp.py), which know data and sequence ranks only:
    no tensor-parallel axis, and the pipeline engine's grid has no sequence axis."""
    return (p.cp > 1) & ((p.tp > 1) | (p.pp > 1))


def _op_recompute(spec, p):
    """The executor recomputes whole blocks or the attention sublayer
    (executor/parallel.py apply_recompute); per-op selective policies are planned only."""
    return p.is_recompute(Recompute.OP)


def _ring(spec, p):
    """DeepSpeed's sequence parallelism is Ulysses (deepspeed/sequence/layer.py); ring attention
    is Megatron-Core's and torchtitan's."""
    return (p.cp > 1) & p.is_cp_kind(ContextParallel.RING)


#: what this project's DeepSpeed executor (executor/) cannot run yet, as Rules, so the search
#: never ranks it for --execute: its full recompute is torch.utils.checkpoint, whose
#: checkpoints stay on the GPU (DeepSpeed's cpu_checkpointing needs its own checkpointing API)
EXECUTOR_RULES: tuple[Rule, ...] = (
    Rule("cpu checkpointing", _cpu_checkpointing, lambda s, p: (
        "runtime.cpu_checkpointing: the executor's full recompute keeps its checkpoints on the "
        "GPU (torch.utils.checkpoint)")),
    Rule("model the executor does not build", _unbuilt, lambda s, p: (
        f"{unbuilt_features(s.model)[0]}: the executor's GPT builds GPT-2- and Llama-style "
        f"blocks only")),
    Rule("fp8 GEMMs", _fp8, _fp8_why),
    Rule("attention kernel", _other_attention, lambda s, p: attention_kernel_why(s)),
    Rule("per-op recompute", _op_recompute, lambda s, p: (
        "recompute op: the executor recomputes whole blocks (full) or the attention sublayer "
        "(selective); per-op selective checkpointing is planned only")),
    Rule("cp layout", _cp_layout, lambda s, p: (
        f"cp ({p.cp}) with tp={p.tp}, pp={p.pp}: the executor's Ulysses groups (DeepSpeed's "
        f"parallel_state_sp) have no tensor or pipeline axis")),
    Rule("ring attention", _ring, lambda s, p: (
        f"cp_kind ring (cp {p.cp}): DeepSpeed runs context parallelism as Ulysses; ring "
        f"attention is Megatron-Core's and torchtitan's")),
)
