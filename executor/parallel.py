"""Parallelism applied to a GPT from outside (torchtitan's ``parallelize_llama(model, ...)``):
Megatron-style tensor parallelism (executor/tensor_parallel.py), expert parallelism (each
DeepSpeed-MoE layer rebuilt with ``ep_size``), DeepSpeed-Ulysses context parallelism
(executor/context_parallel.py), activation recomputation and the pipeline module, over one
process layout: DeepSpeed's PipeModelDataParallelTopology, whose rank order (tensor-parallel
ranks adjacent, then data, then pipeline) is the planner's ``Degrees`` order ("tp", "cp", "dp",
"pp") with cp 1; with cp > 1 (tp and pp 1) DeepSpeed's Ulysses groups, cp adjacent ranks.  Expert-parallel groups are DeepSpeed's own (created by the engine from
``ep_size``); with tp 1 and pp 1, the only layout MoE plans take, they are ep consecutive
data-parallel ranks (``expert_parallel_rank``, checked against DeepSpeed by
``check_expert_groups``).

``executor/model.py`` knows nothing of DeepSpeed; this module knows the model's layer names.
torch and DeepSpeed are imported inside the functions that need them.
"""
from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Callable, Optional

from planner.plan.strategy import Plan
from planner.spec.spec import ModelSpec
from planner.spec.units import Position, Recompute

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

    from .model import GPT
    from .tensor_parallel import TPGroup

#: the pipeline balances blocks over stages (the planner's layers_per_stage: uniform, the
#: remainder on the first stages); embedding and head weigh nothing in the split
PIPELINE_PARTITION = "type:Block"
TIED_KEY = "embed"


def topology(plan: Plan):
    """DeepSpeed's process layout for the plan: axes pipe, data, model (model innermost)."""
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
    return PipeModelDataParallelTopology(num_pp=plan.pp, num_mp=plan.tp, num_dp=plan.dp)


def process_grid(plan: Plan):
    """The process groups of the plan's layout, as the ``mpu`` DeepSpeed takes: data, tensor
    and pipeline groups with tensor parallelism; DeepSpeed's Ulysses groups with context
    parallelism (executor/context_parallel.py); None otherwise (DeepSpeed's defaults serve)."""
    if plan.cp > 1:
        from .context_parallel import sequence_groups
        return sequence_groups(plan)
    if plan.tp == 1:
        return None
    from deepspeed.runtime.pipe.topology import PipelineParallelGrid
    return PipelineParallelGrid(topology=topology(plan))


def tp_group(grid, sequence_parallel: bool = False) -> "TPGroup":
    from .tensor_parallel import TPGroup
    return TPGroup(grid.get_slice_parallel_rank(), grid.get_slice_parallel_world_size(),
                   grid.get_slice_parallel_group(), sequence_parallel)


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


# ------------------------------------------------------------------------- expert parallelism

#: DeepSpeed's path from a MoE layer to its experts (moe/layer.py, moe/experts.py); its
#: checkpoints number the experts by this name (engine.py _save_moe_checkpoint)
EXPERTS_PATH = ".deepspeed_moe.experts.deepspeed_experts."


def expert_parallel_rank(plan: Plan, rank: int) -> int:
    """This rank's place in its expert-parallel group.  DeepSpeed builds the groups from
    ``ep_size`` alone (utils/groups.py ``_create_expert_and_data_parallel``, its default E + D
    order, pp 1): ranks i*ep .. (i+1)*ep - 1 exchange tokens, and ranks ep apart hold the same
    experts (the expert-data-parallel group).  With tp 1 a rank's data coordinate is its rank."""
    return plan.degrees.coords(rank)["dp"] % plan.ep


def apply_expert_parallel(model: "GPT", ep: int) -> "GPT":
    """Each MoE layer rebuilt (shapes only) with ``ep_size = ep``: it holds experts / ep of the
    experts, and its all-to-alls run over DeepSpeed's expert-parallel group once the engine has
    created it (MoE.set_deepspeed_parallelism).  ``materialize`` gives them their values."""
    import torch

    from .model import MoEMLP
    for block in model.blocks:
        if isinstance(block.mlp, MoEMLP):
            with torch.device("meta"):
                block.mlp = MoEMLP(model.spec, ep)
    return model


def expert_param_names(m: ModelSpec, ep: int, ep_rank: int) -> Callable[[str], str]:
    """Map this rank's parameter name to the plain GPT's: local expert j of a layer is expert
    ep_rank * experts/ep + j of the plain model (DeepSpeed's own numbering in its checkpoints)."""
    if ep == 1:
        return lambda name: name
    local = m.moe.experts // ep
    pattern = re.compile(re.escape(EXPERTS_PATH) + r"(\d+)\.")

    def rename(name: str) -> str:
        return pattern.sub(lambda hit: f"{EXPERTS_PATH}{ep_rank * local + int(hit.group(1))}.",
                           name)

    return rename


def check_expert_groups(plan: Plan, rank: int) -> None:
    """After deepspeed.initialize: DeepSpeed's expert-parallel rank and expert-data-parallel
    size are the ones this rank's experts were chosen for (a raise, not a silent mix-up, if a
    DeepSpeed release changes its group order)."""
    from deepspeed.utils import groups
    name = f"ep_size_{plan.ep}"
    ours = (expert_parallel_rank(plan, rank), plan.dp // plan.ep)
    theirs = (groups._get_expert_parallel_rank(name),
              groups._get_expert_data_parallel_world_size(name))
    if ours != theirs:
        raise RuntimeError(f"DeepSpeed's expert-parallel rank and expert-data-parallel size "
                           f"{theirs} are not the executor's {ours} (rank {rank}, {plan.label})")


# ----------------------------------------------------------------------------------- pipeline

def _pipeline_layers(model: "GPT", tp: Optional["TPGroup"]) -> list:
    """The pipeline's layers: the model's own instances, so the pipeline starts from the same
    weights as the plain model (``_layer_prefixes`` names their parameters in the plain GPT).
    With tied embeddings the token table alone is a TiedLayerSpec on the first and last stage
    (loaded from the model's table; the last stage computes logits from it: Megatron-DeepSpeed's
    EmbeddingPipe pattern), and learned positions are a layer of their own on the first stage,
    so the last stage holds exactly the table the planner counts there.  Under tensor
    parallelism the table is vocab-parallel."""
    from deepspeed.pipe import TiedLayerSpec

    from .model import HeadLayer, PositionLayer, TokenTable, tied_logits

    m = model.spec
    embed, *blocks, final = model.pipeline_layers()
    if not m.tied_embeddings:
        return [embed, *blocks, final]
    norm_only = HeadLayer(m, lm_head=False)  # its weights are set with the rest (materialize)
    positions = PositionLayer(embed.wpe) if embed.wpe is not None else None
    if tp is None:
        table, args, logits = TokenTable, (m,), tied_logits
    else:
        from .tensor_parallel import (ShardedTokenTable, sequence_parallel_norm,
                                      sp_position_layer, tied_logits_tp)
        table, args, logits = ShardedTokenTable, (m, tp), tied_logits_tp
        if tp.sequence_parallel:
            sequence_parallel_norm(norm_only.norm, tp)
            positions = positions and sp_position_layer(positions, tp)
    first = [TiedLayerSpec(TIED_KEY, table, *args, tied_weight_attr=["wte.weight"])]
    if positions is not None:
        first.append(positions)
    last = TiedLayerSpec(TIED_KEY, table, *args, forward_fn=logits,
                         tied_weight_attr=["wte.weight"])
    return [*first, *blocks, norm_only, last]


def build_pipeline(model: "GPT", plan: Plan, ds_config: dict, tp: Optional["TPGroup"],
                   value: Callable) -> "nn.Module":
    """A PipelineModule over [embedding, *blocks, head] with the model's loss (vocab-parallel
    under tensor parallelism); the engine checkpoints Block layers when the config asks.  The
    model comes on the meta device: only this stage's layers are given their weights."""
    from deepspeed.pipe import PipelineModule

    from .model import Block
    m = model.spec

    layers = _pipeline_layers(model, tp)
    _materialize_stage(layers, model, plan, tp, value)
    pipe = PipelineModule(layers=layers, topology=topology(plan), loss_fn=model.loss_fn,
                          partition_method=PIPELINE_PARTITION,
                          activation_checkpoint_interval=ds_config.get("pipeline", {}).get(
                              "activation_checkpoint_interval", 0),
                          checkpointable_layers=[Block.__name__])
    materialize(pipe, m, pipeline_param_names(m), tp, value)  # the tied table, norm_only
    return pipe


def pipeline_param_names(m: ModelSpec) -> Callable[[str], str | None]:
    """Map a PipelineModule parameter name to the plain GPT's (None: a duplicate to drop).
    Layers are registered under their index; tied ones under ``tied_modules.<key>``."""
    prefixes = _layer_prefixes(m)

    def rename(name: str) -> str | None:
        if name.startswith(f"tied_modules.{TIED_KEY}."):
            return "embed." + name[len(f"tied_modules.{TIED_KEY}."):]
        match = re.match(r"(\d+)\.(.*)", name)
        if match is None:
            return None
        idx, rest = int(match.group(1)), match.group(2)
        prefix = prefixes[idx] if idx < len(prefixes) else None
        return None if prefix is None else f"{prefix}.{rest}"

    return rename


def _layer_prefixes(m: ModelSpec) -> list:
    """The plain GPT's name prefix of each pipeline layer, as ``_pipeline_layers`` lays them."""
    blocks = [f"blocks.{i}" for i in range(m.n_layers)]
    if not m.tied_embeddings:
        return ["embed", *blocks, "final"]
    positions = ["embed"] if m.position is Position.LEARNED else []
    return ["embed", *positions, *blocks, "final", None]


def parallelize(model: "GPT", plan: Plan, ds_config: dict, grid=None, *, seed: int = 0,
                source: Optional[dict] = None) -> "nn.Module":
    """What deepspeed.initialize receives: the GPT split over the tensor-parallel group of
    ``grid`` (when tp > 1), its attention behind Ulysses' all-to-alls over the context-parallel
    group (when cp > 1), with recomputation applied, or the pipeline module over it.

    A GPT built on the meta device gets its weights here, parameter by parameter and only the
    share this rank holds: the plain model's initial values for ``seed``, or ``source`` (a plain
    GPT state dict, another run's export).  A 70B model is never whole on one rank."""
    m = model.spec
    value = plain_values(m, seed, source)
    tp, rename = None, (lambda name: name)
    if plan.ep > 1:
        import deepspeed.comm as dist
        apply_expert_parallel(model, plan.ep)
        rename = expert_param_names(m, plan.ep, expert_parallel_rank(plan, dist.get_rank()))
    if plan.tp > 1:
        from .tensor_parallel import shard_model
        tp = tp_group(grid, plan.sequence_parallel)
        shard_model(model, tp)
    if plan.cp > 1:
        import deepspeed.comm as dist

        from .context_parallel import apply_ulysses, cp_rank
        apply_ulysses(model, plan, grid.get_sequence_parallel_group(),
                      cp_rank(plan, dist.get_rank()))
    if plan.pp > 1:
        if plan.recompute is Recompute.SELECTIVE:
            apply_recompute(model, plan.recompute)
        return build_pipeline(model, plan, ds_config, tp, value)
    materialize(model, m, rename, tp, value)
    return apply_recompute(model, plan.recompute)


# ---------------------------------------------------------------------------- materialising

def plain_values(m: ModelSpec, seed: int, source: Optional[dict]) -> Callable:
    """name -> the whole parameter's value in a plain GPT."""
    from .model import GPT, initial_value
    if source is not None:
        return lambda name: source[name]
    import torch
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in GPT(m).named_parameters()}
    return lambda name: initial_value(m, name, shapes[name], seed)


#: set on a parameter once it holds its share of the plain GPT's weights
INITIALISED = "_pretrain_initialised"


def materialize(module: "nn.Module", m: ModelSpec, rename: Callable, tp: Optional["TPGroup"],
                value: Callable) -> None:
    """Give the module's parameters that do not have it yet this rank's share of the plain
    GPT's parameter of the same name, keeping their attributes (tensor_model_parallel,
    DeepSpeed's pipeline marks) and shared parameters shared."""
    import torch
    import torch.nn as nn

    from .tensor_parallel import shard, sharding_of
    replaced: dict[int, nn.Parameter] = {}
    for name, p in list(module.named_parameters(remove_duplicate=False)):
        if getattr(p, INITIALISED, False):
            continue
        if id(p) not in replaced:
            gpt_name = rename(name)
            if gpt_name is None:
                raise ValueError(f"{name}: no plain-GPT parameter of this name")
            full = value(gpt_name)
            kind = sharding_of(gpt_name) if tp is not None else None
            with torch.no_grad():
                data = shard(full, kind, m, tp.rank, tp.size) if kind else full
            new = nn.Parameter(data.to(torch.float32).clone(), requires_grad=p.requires_grad)
            new.__dict__.update(p.__dict__)
            setattr(new, INITIALISED, True)
            replaced[id(p)] = new
        owner, _, key = name.rpartition(".")
        (module.get_submodule(owner) if owner else module)._parameters[key] = replaced[id(p)]


def _materialize_stage(layers: list, model: "GPT", plan: Plan, tp: Optional["TPGroup"],
                       value: Callable) -> None:
    """Weights for the model layers this rank's pipeline stage keeps (DeepSpeed's own balanced
    split of the Block layers), before PipelineModule moves its layers to the device."""
    import deepspeed.comm as dist
    from deepspeed.runtime import utils as ds_utils

    from .model import Block
    weights = [1 if isinstance(layer, Block) else 0 for layer in layers]
    parts = ds_utils.partition_balanced(weights=weights, num_parts=plan.pp)
    stage = plan.degrees.coords(dist.get_rank())["pp"]
    prefixes = _layer_prefixes(model.spec)
    for index in range(parts[stage], parts[stage + 1]):
        layer = layers[index]
        if hasattr(layer, "named_parameters") and prefixes[index] is not None:
            materialize(layer, model.spec, lambda name, i=index: f"{prefixes[i]}.{name}", tp,
                        value)


__all__ = ["parallelize", "apply_recompute", "build_pipeline", "pipeline_param_names",
           "topology", "process_grid", "tp_group", "materialize", "plain_values",
           "apply_expert_parallel", "expert_param_names", "expert_parallel_rank",
           "check_expert_groups"]
