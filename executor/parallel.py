"""Parallelism applied to a GPT from outside (torchtitan's ``parallelize_llama(model, ...)``):
activation recomputation, the pipeline module, and AutoTP's partition rules.

``executor/model.py`` knows nothing of DeepSpeed; this module knows the model's layer and
parameter names.  torch and DeepSpeed are imported inside the functions that need them, so
``autotp_partition_config`` stays importable by the config writer without them.
"""
from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Callable

from planner.plan.strategy import Plan
from planner.spec.spec import ModelSpec
from planner.spec.units import Activation, Recompute

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

    from .model import GPT

#: the pipeline balances blocks over stages (the planner's layers_per_stage: uniform, the
#: remainder on the first stages); embedding and head weigh nothing in the split
PIPELINE_PARTITION = "type:Block"
TIED_KEY = "embed"


def autotp_partition_config(m: ModelSpec) -> dict:
    """AutoTP rules for executor.model's parameter names (DeepSpeed's configurable AutoTP,
    module_inject/autotp_config.py).  Megatron-LM's split: QKV and the MLP's input matrices are
    column-parallel, the attention output and the MLP's output row-parallel.  The fused QKV holds
    [q | k | v] of unequal widths under GQA, so each part is split on its own; the fused SwiGLU
    [gate | up] likewise.  Embedding, norms and the LM head stay replicated."""
    q, kv = m.n_heads * m.head_dim, m.kv_dim
    specs = [
        {"patterns": [r".*\.attn\.qkv\.weight$"], "partition_type": "column",
         "shape": [[q, kv, kv], -1], "partition_dim": 0},
        {"patterns": [r".*\.attn\.proj\.weight$"], "partition_type": "row"},
    ]
    if m.activation is Activation.SWIGLU:
        specs += [{"patterns": [r".*\.mlp\.w13\.weight$"], "partition_type": "column",
                   "shape": [2, -1], "partition_dim": 0},
                  {"patterns": [r".*\.mlp\.w2\.weight$"], "partition_type": "row"}]
    else:
        specs += [{"patterns": [r".*\.mlp\.fc\.weight$"], "partition_type": "column"},
                  {"patterns": [r".*\.mlp\.fc2\.weight$"], "partition_type": "row"}]
    return {"use_default_specs": False, "layer_specs": specs}


# ------------------------------------------------------------------------------ recomputation

def _checkpointed(forward: Callable, *args):
    from torch.utils.checkpoint import checkpoint
    return checkpoint(forward, *args, use_reentrant=False)


def apply_recompute(model: "GPT", recompute: Recompute) -> "GPT":
    """Full: keep only each block's input and rerun the block in backward (non-reentrant
    torch.utils.checkpoint, which needs no input that requires grad and works under ZeRO-3).
    Selective: rerun the attention sublayer; with a fused kernel (SDPA) there are no s x s
    tensors to drop, so it is a no-op.  Under eager attention this recomputes the QKV and output
    projections as well, which the planner's selective FLOPs do not count.

    The forward is replaced on the instance rather than wrapping the module, so parameter names,
    checkpoints and the fp32 export stay those of a plain GPT."""
    from planner.spec.units import AttentionKernel
    if recompute is Recompute.NONE:
        return model
    if recompute is Recompute.SELECTIVE:
        if model.spec.attention is AttentionKernel.FLASH:
            return model
        targets = [block.attn for block in model.blocks]
    else:
        targets = list(model.blocks)
    for module in targets:
        module.forward = functools.partial(_checkpointed, module.forward)
    return model


# ----------------------------------------------------------------------------------- pipeline

def _pipeline_layers(model: "GPT") -> list:
    """The model's own layer instances (so the pipeline starts from the same weights as the plain
    model); with tied embeddings the token table is a TiedLayerSpec on the first and last stage,
    loaded from the model's table, and the head stage computes logits from it (Megatron-DeepSpeed's
    EmbeddingPipe pattern)."""
    from deepspeed.pipe import TiedLayerSpec

    from .model import EmbeddingLayer, HeadLayer, tied_logits

    m = model.spec
    embed, *blocks, final = model.pipeline_layers()
    if not m.tied_embeddings:
        return [embed, *blocks, final]
    norm_only = HeadLayer(m, lm_head=False)
    norm_only.norm.load_state_dict(final.norm.state_dict())
    return [TiedLayerSpec(TIED_KEY, EmbeddingLayer, m, tied_weight_attr=["wte.weight"]),
            *blocks, norm_only,
            TiedLayerSpec(TIED_KEY, EmbeddingLayer, m, forward_fn=tied_logits,
                          tied_weight_attr=["wte.weight"])]


def build_pipeline(model: "GPT", plan: Plan, ds_config: dict) -> "nn.Module":
    """A PipelineModule over [embedding, *blocks, head] with the causal-LM loss; the engine
    checkpoints Block layers when the config's pipeline section asks for it."""
    from deepspeed.pipe import PipelineModule

    from .model import Block, causal_lm_loss

    layers = _pipeline_layers(model)
    pipe = PipelineModule(layers=layers, num_stages=plan.pp,
                          loss_fn=functools.partial(causal_lm_loss, loss_dtype=model.spec.loss_dtype),
                          partition_method=PIPELINE_PARTITION,
                          activation_checkpoint_interval=ds_config.get("pipeline", {}).get(
                              "activation_checkpoint_interval", 0),
                          checkpointable_layers=[Block.__name__])
    if TIED_KEY in pipe.tied_modules:
        pipe.tied_modules[TIED_KEY].load_state_dict(model.embed.state_dict())
    return pipe


def pipeline_param_names(m: ModelSpec) -> Callable[[str], str | None]:
    """Map a PipelineModule parameter name to the plain GPT's (None: a duplicate to drop).
    Layers are registered under their index; tied ones under ``tied_modules.<key>``."""
    n = m.n_layers
    head_index = n + 1

    def rename(name: str) -> str | None:
        if name.startswith(f"tied_modules.{TIED_KEY}."):
            return "embed." + name[len(f"tied_modules.{TIED_KEY}."):]
        match = re.match(r"(\d+)\.(.*)", name)
        if match is None:
            return None
        idx, rest = int(match.group(1)), match.group(2)
        if idx == 0:
            return "embed." + rest
        if idx <= n:
            return f"blocks.{idx - 1}.{rest}"
        if idx == head_index:
            return "final." + rest
        return None

    return rename


def parallelize(model: "GPT", plan: Plan, ds_config: dict) -> "nn.Module":
    """What deepspeed.initialize receives: the GPT with recomputation applied, or the pipeline
    module.  Tensor parallelism is applied by deepspeed.initialize itself, from the config's
    ``tensor_parallel`` section (AutoTP with ``autotp_partition_config``)."""
    if plan.pp > 1:
        if plan.recompute is Recompute.SELECTIVE:
            apply_recompute(model, plan.recompute)
        return build_pipeline(model, plan, ds_config)
    return apply_recompute(model, plan.recompute)


__all__ = ["parallelize", "apply_recompute", "build_pipeline", "autotp_partition_config",
           "pipeline_param_names"]
