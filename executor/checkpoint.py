"""A run's checkpoints and its export, per rank: DeepSpeed's checkpoint plus each rank's data
position and RNG state, marked complete with a manifest only once every rank has written; the
resume from the newest checkpoint that passes its manifest; the fp32 export of the whole model.
``executor.train`` calls these; the run directory's layout and the manifest checks are
``executor.rundir``'s."""
from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from planner.plan.strategy import Plan
from planner.spec.spec import Spec
from planner.spec.units import ZeroStage

from .data import BatchSampler
from .errors import ExecutorError
from .parallel import expert_parallel_rank, expert_param_names, pipeline_param_names
from .rundir import (RunDir, checkpoint_files, complete_checkpoints, file_digests, mark_complete,
                     resume_point, set_aside)
from .tensor_parallel import unshard_state

# ---------------------------------------------------------------------------------- RNG state

def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])



# ------------------------------------------------------------------------------- checkpoints

def rank_state_path(tag_dir: Path, rank: int) -> Path:
    return tag_dir / f"executor_rank{rank:05d}.pt"


def save_checkpoint(engine, run: RunDir, step: int, sampler: BatchSampler, rank: int,
                    keep: int) -> None:
    """DeepSpeed's checkpoint plus, per rank, the data position and RNG state; marked complete,
    with its manifest, only once every rank has written (a crash mid-save leaves no marker)."""
    import deepspeed.comm as dist
    tag = f"global_step{step}"
    tag_dir = run.checkpoints / tag
    tag_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"step": step, "sampler": sampler.state_dict(), "rng": rng_state()},
               rank_state_path(tag_dir, rank))
    engine.save_checkpoint(str(run.checkpoints), tag=tag, client_state={"step": step})
    dist.barrier()
    files = manifest_over_ranks(tag_dir, rank)
    if rank == 0:
        mark_complete(run, tag, step, dist.get_world_size(), files)
        for old in complete_checkpoints(run)[:-max(keep, 1)]:
            shutil.rmtree(run.checkpoints / old, ignore_errors=True)
    dist.barrier()


def manifest_over_ranks(tag_dir: Path, rank: int) -> dict[str, dict]:
    """Size and sha256 of every file of a checkpoint every rank has written, the hashing shared
    out: rank 0 lists the files and each rank hashes every world_size-th, so a save pays for
    1/world_size of the bytes on each rank."""
    import deepspeed.comm as dist
    world = dist.get_world_size()
    names = [checkpoint_files(tag_dir) if rank == 0 else None]
    dist.broadcast_object_list(names, src=0)
    parts: list = [None] * world
    dist.all_gather_object(parts, file_digests(tag_dir, names[0][rank::world]))
    return dict(sorted((name, digest) for part in parts for name, digest in part.items()))


def choose_resume_tag(run: RunDir, note: Callable[[str], None]) -> tuple[Optional[str],
                                                                           Optional[str]]:
    """Rank 0: (the tag to load, None) or (None, why none can be).  The newest complete
    checkpoint that passes its manifest (``resume_point``); newer ones that fail are set aside
    and the one line saying so goes to ``note`` (the parent's event stream)."""
    try:
        point = resume_point(run)
    except ExecutorError as exc:
        return None, str(exc)
    kept = [set_aside(run, tag).name for tag, _ in point.failed]
    if point.note:
        note(point.note + (f" (set aside as {', '.join(kept)})" if kept else ""))
    return point.tag, None


def restore_checkpoint(engine, run: RunDir, sampler: BatchSampler, rank: int,
                       note: Callable[[str], None]) -> int:
    """Every rank loads the tag rank 0 chose, by name: DeepSpeed's ``latest`` file names the
    newest checkpoint whatever its state."""
    import deepspeed.comm as dist
    chosen = [choose_resume_tag(run, note) if rank == 0 else None]
    dist.broadcast_object_list(chosen, src=0)
    tag, problem = chosen[0]
    if tag is None:
        raise RuntimeError(problem)
    path, _ = engine.load_checkpoint(str(run.checkpoints), tag=tag)
    if path is None:
        raise RuntimeError(f"{run.checkpoints / tag}: DeepSpeed could not load it")
    state = torch.load(rank_state_path(run.checkpoints / tag, rank), weights_only=False)
    sampler.load_state_dict(state["sampler"])
    set_rng_state(state["rng"])
    return int(state["step"])


# ------------------------------------------------------------------------------------ export

def export_fp32(engine, spec: Spec, plan: Plan, run: RunDir, tag: str, rank: int) -> None:
    """``run.export/pytorch_model.bin``: a plain GPT state dict in fp32.  ZeRO 1-3 without model
    parallelism or experts: DeepSpeed's zero_to_fp32 (the fp32 master weights).  Otherwise the
    weights the engine computes with, gathered (tensor-parallel shards merged, pipeline stages
    joined, ZeRO-3 partitions gathered, experts collected from their expert-parallel group) and
    upcast."""
    import deepspeed.comm as dist
    out = run.export / "pytorch_model.bin"
    # zero_to_fp32 reads no mixture-of-experts checkpoint: it takes DeepSpeed's per-expert files
    # (layer_*_expert_*_model_states.pt) for model states and stops
    if (plan.pp == 1 and plan.tp == 1 and not spec.model.moe_layers
            and plan.zero >= ZeroStage.OPTIMIZER):
        if rank == 0:
            from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict
            convert_zero_checkpoint_to_fp32_state_dict(str(run.checkpoints), str(run.export),
                                                       max_shard_size=None, tag=tag)
    else:
        state = gathered_state_dict(engine, spec, plan, rank)
        if rank == 0:
            run.export.mkdir(parents=True, exist_ok=True)
            torch.save(state, out)
    dist.barrier()
    if rank == 0:
        state = torch.load(out, weights_only=True)
        if spec.model.tied_embeddings and "final.head.weight" not in state:
            state["final.head.weight"] = state["embed.wte.weight"]
            torch.save(state, out)


def _local_weights(engine, plan: Plan, rename) -> dict:
    """This rank's parameters under their plain-GPT names, fp32 on the CPU (ZeRO-3 partitions
    gathered over the data-parallel group first)."""
    import contextlib

    import deepspeed
    params = list(engine.module.named_parameters())
    gather = (deepspeed.zero.GatheredParameters([p for _, p in params])
              if plan.zero == ZeroStage.PARAMETERS else contextlib.nullcontext())
    with gather:
        return {rename(n): p.detach().float().cpu().clone() for n, p in params
                if rename(n) is not None}


def gathered_state_dict(engine, spec: Spec, plan: Plan, rank: int) -> Optional[dict]:
    """On rank 0, the whole model from every stage and tensor-parallel shard of data-parallel
    replica 0, and every expert of expert-parallel group 0 (None elsewhere)."""
    import deepspeed.comm as dist
    if plan.pp == 1 and plan.tp == 1 and plan.ep == 1:
        return {k: v.detach().float().cpu() for k, v in engine.module.state_dict().items()}
    rename = (pipeline_param_names(spec.model) if plan.pp > 1 else
              expert_param_names(spec.model, plan.ep, expert_parallel_rank(plan, rank)))
    mine = _local_weights(engine, plan, rename)
    if plan.degrees.coords(rank)["dp"] >= plan.ep:  # ep 1: replica 0; else its experts' group
        mine = {}
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mine)
    if rank != 0:
        return None
    by_tp: list[dict] = [{} for _ in range(plan.tp)]
    for r, part in enumerate(parts):  # ranks in stage order: the first stage's copy of a tied
        shard = by_tp[plan.degrees.coords(r)["tp"]]  # table wins
        for k, v in part.items():
            shard.setdefault(k, v)
    return unshard_state(by_tp, spec.model) if plan.tp > 1 else by_tp[0]
