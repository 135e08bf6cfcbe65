"""The per-rank entry point: ``python -m executor.train --run-dir RUN_DIR [--run-dir ...]``.

Each run directory was prepared by ``executor.run`` (spec, plan, options, DeepSpeed config,
tokenizer, token shards).  Several run directories train one after another in one process group,
which amortises the start-up (the tests use this).  Rank 0 prints ``@start``/``@progress``/
``@eval``/``@note``/``@done``/``@error`` lines with a JSON payload for the parent to stream;
everything else it prints is DeepSpeed's or torch's.

Exit codes: 0 done, 1 crashed, 3 stopped on a non-finite loss (the last good checkpoint stays).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch

from planner.plan.strategy import Plan
from planner.spec.spec import Spec
from planner.spec.units import Precision

from .checkpoint import export_fp32, restore_checkpoint, save_checkpoint
from .context_parallel import cp_rank, local_slice, loss_share
from .context_parallel import problem as context_parallel_problem
from .data import BatchSampler, TokenDataset
from .ds_config import LRSchedule, tokens_per_step
from .errors import ExecutorError
from .fp8 import apply_fp8
from .fp8 import problem as fp8_problem
from .model import GPT, MOE_AUX_LOSS_COEF
from .parallel import check_expert_groups, parallelize, process_grid
from .rundir import RunDir, RunOptions, complete_checkpoints

EXIT_OK, EXIT_CRASH, EXIT_NONFINITE = 0, 1, 3


def emit(kind: str, payload: dict[str, Any]) -> None:
    """One machine-readable line for the parent (rank 0 only)."""
    print(f"@{kind} {json.dumps(payload)}", flush=True)


def note(message: str) -> None:
    """A ``@note`` line: one sentence the parent shows the user."""
    emit("note", {"message": message})


# ----------------------------------------------------------------------------------- seeding

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every rank builds the same initial model, then takes its shard


# ------------------------------------------------------------------------------------ engine

def data_parallel_coords(engine, plan: Plan, rank: int) -> tuple[int, int]:
    """(dp_rank, dp_size) of this process: its data coordinate in the plan's layout, which is
    DeepSpeed's PipeModelDataParallelTopology (tensor-parallel ranks adjacent, then data, then
    pipeline) with context-parallel ranks next to the tensor-parallel ones; the ranks of one
    tensor- or context-parallel group read the same micro-batches.  DeepSpeed reduces
    gradients and partitions ZeRO over its sequence-data-parallel group, the data-parallel
    group unless context parallelism makes it dp x cp ranks."""
    if engine.seq_dp_world_size != plan.zero_ranks:
        raise RuntimeError(f"DeepSpeed's (sequence-)data-parallel size "
                           f"({engine.seq_dp_world_size}) is not the plan's dp x cp "
                           f"({plan.dp} x {plan.cp})")
    return plan.degrees.coords(rank)["dp"], plan.dp


def reset_deepspeed_globals() -> None:
    """Undo what an earlier engine of this process left in DeepSpeed's module globals, which the
    next engine would inherit: the pipeline grid (``groups.mpu``), the tensor-parallel groups and
    AutoTP's training mode, and ZeRO-3's replacement of torch.nn.functional.linear ("This will persist unless
    manually reset", zero/partition_parameters.py), whose rounding differs from F.linear's."""
    from deepspeed.module_inject import layers
    from deepspeed.runtime.zero.partition_parameters import InsertPostInitMethodToModuleSubClasses
    from deepspeed.utils import groups

    original_linear = getattr(InsertPostInitMethodToModuleSubClasses, "linear_bk", None)
    if original_linear is not None:
        torch.nn.functional.linear = original_linear

    # the expert-parallel groups stay: they depend on ep and the world size only (pp is 1 for
    # every MoE plan), and a later engine's MoE layers reuse them by name ("ep_size_<ep>")
    groups.mpu = None
    groups.mesh_device = None
    for name in ("_TENSOR_MODEL_PARALLEL_GROUP", "_MODEL_PARALLEL_GROUP", "_DATA_PARALLEL_GROUP"):
        setattr(groups, name, None)
    layers.set_autotp_mode(training=False)  # its import-time default; initialize sets it for tp


def build_engine(spec: Spec, plan: Plan, ds_config: dict, seed: int,
                 init_from: Optional[str] = None):
    import deepspeed

    problem = context_parallel_problem(spec, plan) or fp8_problem(spec, plan)
    if problem:
        raise ExecutorError(problem)
    reset_deepspeed_globals()
    seed_everything(seed)
    with torch.device("meta"):  # shapes only: each rank builds just its share (parallelize)
        model = GPT(spec.model, seed)
    if plan.precision is Precision.FP8:  # the same Parameters: names stay a plain GPT's
        apply_fp8(model, spec)
    # another run's fp32 export: weights carry over to any layout
    source = None if init_from is None else torch.load(init_from, map_location="cpu",
                                                       weights_only=True)
    grid = process_grid(plan)
    module = parallelize(model, plan, ds_config, grid, seed=seed, source=source)
    # a pipeline hands DeepSpeed its own grid; tensor parallelism alone hands ours, so that ZeRO
    # partitions over the data-parallel group and norms count a sharded tensor on every tp rank;
    # context parallelism hands DeepSpeed's Ulysses groups (ZeRO over dp x cp)
    engine, _, _, _ = deepspeed.initialize(
        model=module, model_parameters=optimizer_groups(module), config=ds_config,
        mpu=grid if plan.pp == 1 else None)
    if spec.model.moe_layers:
        import deepspeed.comm as dist
        check_expert_groups(plan, dist.get_rank())
    return engine


def optimizer_groups(module) -> list:
    """The trainable parameters, with DeepSpeed-MoE's experts in groups of their own: ZeRO-1/2
    reduce and partition a group marked ``moe`` over its expert-data-parallel group and refuse a
    MoE model without one ("None of the param groups are marked as MoE"), and ZeRO-0 reduces
    expert gradients over that group too (deepspeed.moe.utils
    .split_params_into_different_moe_groups_for_optimizer; the engine would make the same
    split for its config optimizer, configure_moe_param_groups, but the groups are the
    optimizer's whatever builds it).  A dense model's is one plain list."""
    from deepspeed.moe.utils import (is_moe_param,
                                     split_params_into_different_moe_groups_for_optimizer)
    params = [p for p in module.parameters() if p.requires_grad]
    if not any(is_moe_param(p) for p in params):
        return params
    return split_params_into_different_moe_groups_for_optimizer(
        {"params": params, "name": "dense-params"})


# -------------------------------------------------------------------------------- train step

def mean_over_ranks(value: torch.Tensor) -> float:
    """The mean over all ranks (of a scalar; of each entry of a vector, as a list)."""
    import deepspeed.comm as dist
    value = value.detach().float().clone()
    dist.all_reduce(value)
    mean = value / dist.get_world_size()
    return mean.item() if mean.dim() == 0 else mean.tolist()


def rank_batches(batches: list, plan: Plan, rank: int) -> list:
    """The micro-batches as this rank computes them: a context-parallel rank keeps its slice
    of every sequence (and of its targets); otherwise whole."""
    if plan.cp == 1:
        return batches
    r = cp_rank(plan, rank)
    return [(local_slice(x, plan.cp, r), local_slice(y, plan.cp, r)) for x, y in batches]


def train_step(engine, plan: Plan, batches: list) -> tuple[float, Optional[float]]:
    """One optimizer step over ``grad_accum`` micro-batches: the mean loss over all ranks and,
    for a mixture-of-experts model, the mean of the routers' summed load-balancing loss, which
    the objective adds with weight MOE_AUX_LOSS_COEF (None for a dense model).  Under context
    parallelism each rank's loss is its slice's mean (equal slices: their mean over the ranks
    is the sequences' mean) and it backpropagates its share (``loss_share``)."""
    if plan.pp > 1:  # already averaged over dp
        return engine.train_batch(data_iter=iter(batches)).item(), None
    total = torch.zeros(2, device=engine.device)  # loss, load-balancing loss
    moe = False
    for x, y in batches:
        loss = engine(x.to(engine.device), y.to(engine.device))
        aux = engine.module.moe_aux_loss()
        engine.backward(loss_share(loss if aux is None else loss + MOE_AUX_LOSS_COEF * aux,
                                   plan))
        engine.step()
        total[0] += loss.detach().float()
        if aux is not None:
            moe = True
            total[1] += aux.detach().float()
    loss, aux = mean_over_ranks(total / len(batches))
    return loss, aux if moe else None


@torch.no_grad()
def evaluate(engine, plan: Plan, sampler: BatchSampler, n_batches: int, rank: int) -> float:
    """Mean loss over the same ``n_batches`` validation micro-batches per rank every time."""
    batches = rank_batches([sampler.next_batch() for _ in range(n_batches)], plan, rank)
    if plan.pp > 1:
        loss = engine.eval_batch(iter(batches), num_micro_batches=n_batches)
        return float(loss.float().item())
    engine.eval()
    total = torch.zeros((), device=engine.device)
    for x, y in batches:
        total += engine(x.to(engine.device), y.to(engine.device)).float()
    engine.train()
    return mean_over_ranks(total / n_batches)


def state_counts(engine) -> dict:
    """Elements this rank holds: its parameters (its stage, its tensor-parallel shard; a tied
    table once) and its optimizer states (the innermost torch optimizer's moments, whatever
    DeepSpeed wrapper partitions them)."""
    optimizer = engine.optimizer
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    states = sum(v.numel() for s in optimizer.state.values() for v in s.values()
                 if torch.is_tensor(v) and v.dim() > 0)
    params = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())
    return {"params": params, "optimizer_states": states}


class ShapeProbe:
    """What this rank computes on, seen once in the run's first forward: the tokens of its
    micro-batch and the q, k, v shapes its first attention core receives (under context
    parallelism: after Ulysses' all-to-all).  actual.json lists them beside the element counts,
    for plan vs actual (the planner's ``local_dims``)."""

    def __init__(self, module):
        from .model import AttentionCore
        self.seen: dict[str, Any] = {}
        core = next((m for m in module.modules() if isinstance(m, AttentionCore)), None)
        self._handle = core.register_forward_pre_hook(self._attention) if core else None

    def _attention(self, _module, args) -> None:
        self.seen["attention"] = {name: list(t.shape) for name, t in zip("qkv", args)}
        self._handle.remove()

    def batch(self, x: torch.Tensor) -> None:
        self.seen.setdefault("tokens", x.numel())


# -------------------------------------------------------------------------------------- loop

def measured_memory(rank: int) -> Optional[list[dict]]:
    """Per rank peak allocated/reserved bytes (GPUs only: on CPU there is no allocator peak)."""
    import deepspeed.comm as dist
    if not torch.cuda.is_available():
        return None
    mine = {"rank": rank, "max_allocated": torch.cuda.max_memory_allocated(),
            "max_reserved": torch.cuda.max_memory_reserved()}
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mine)
    return parts


def append_metrics(run: RunDir, record: dict) -> None:
    with open(run.metrics, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(run: RunDir, step: int) -> None:
    """On resume: forget what ran after the checkpoint, so the file is one trajectory."""
    if not run.metrics.exists():
        return
    keep = [line for line in run.metrics.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    run.metrics.write_text("".join(line + "\n" for line in keep))


def nonfinite_message(run: RunDir, step: int, loss: float) -> str:
    good = complete_checkpoints(run)
    where = (f"the last good checkpoint is {run.checkpoints / good[-1]}; resume with --resume"
             if good else "no checkpoint was saved yet")
    return (f"loss is {loss} at step {step}: training stopped; {where} (a lower learning rate "
            f"or longer warmup may help)")


def record_step(engine, run: RunDir, step: int, last_step: int, loss: float,
                aux_loss: Optional[float], dt: float, tokens: int, eta_s: float) -> None:
    """Rank 0: one metrics record and one progress line (a MoE model's with ``aux_loss``, the
    routers' load-balancing loss summed over its layers)."""
    norm = engine.get_global_grad_norm()
    record = {"kind": "train", "step": step, "loss": loss, "lr": engine.get_lr()[0],
              "grad_norm": None if norm is None else float(norm), "step_time_s": dt,
              "tokens": step * tokens, "tokens_per_s": tokens / dt}
    if aux_loss is not None:
        record["aux_loss"] = aux_loss
    append_metrics(run, record)
    emit("progress", {**record, "last_step": last_step, "eta_s": eta_s})


def finish(engine, run: RunDir, spec: Spec, plan: Plan, step: int, sampler: BatchSampler,
           keep: int, rank: int, seen: dict) -> None:
    """Measured memory, the final checkpoint, the fp32 export and actual.json (``seen``: the
    ShapeProbe's record)."""
    import deepspeed.comm as dist
    memory = measured_memory(rank)  # before the export, which gathers whole tensors
    counts: list = [None] * dist.get_world_size()
    dist.all_gather_object(counts, {"rank": rank, **state_counts(engine), **seen})
    if f"global_step{step}" not in complete_checkpoints(run):
        save_checkpoint(engine, run, step, sampler, rank, keep)
    export_fp32(engine, spec, plan, run, f"global_step{step}", rank)
    if rank == 0:
        actual = {"device": str(engine.device), "world_size": dist.get_world_size(),
                  "last_step": step, "peak_memory": memory, "elements": counts,
                  "torch": torch.__version__,
                  "deepspeed": _deepspeed_version()}
        run.actual.write_text(json.dumps(actual, indent=1) + "\n")
        emit("done", {"step": step, "export": str(run.export / "pytorch_model.bin")})


def train(run: RunDir, *, resume: bool, max_steps: Optional[int]) -> int:
    import deepspeed.comm as dist

    spec, plan, options = run.load()
    m, rank, lr = spec.model, dist.get_rank(), LRSchedule(**options.lr)
    engine = build_engine(spec, plan, json.loads(run.ds_config.read_text()), options.seed,
                          options.init_from if not resume else None)
    dp_rank, dp_size = data_parallel_coords(engine, plan, rank)
    sampler = BatchSampler(TokenDataset(run.shards_dir(), "train"), m.seq_len, plan.micro_batch,
                           dp_rank, dp_size, options.seed)
    val = TokenDataset(run.shards_dir(), "val")
    step = restore_checkpoint(engine, run, sampler, rank, note) if resume else 0
    last_step = min(lr.total_steps, max_steps or options.max_steps or lr.total_steps)
    tokens = tokens_per_step(spec, plan)
    if rank == 0:
        truncate_metrics(run, step)
        emit("start", {"run_dir": str(run.path), "step": step, "last_step": last_step,
                       "tokens_per_step": tokens, "plan": plan.label})
    ema, probe = None, ShapeProbe(engine.module)
    while step < last_step:
        step += 1
        batches = rank_batches([sampler.next_batch() for _ in range(plan.grad_accum)], plan,
                               rank)
        probe.batch(batches[0][0])
        t0 = time.perf_counter()
        loss, aux_loss = train_step(engine, plan, batches)  # the same values on every rank
        dt = time.perf_counter() - t0
        if not math.isfinite(loss):
            if rank == 0:
                emit("error", {"step": step, "exit_code": EXIT_NONFINITE,
                               "message": nonfinite_message(run, step, loss)})
            return EXIT_NONFINITE
        ema = dt if ema is None else 0.9 * ema + 0.1 * dt
        if rank == 0:
            record_step(engine, run, step, last_step, loss, aux_loss, dt, tokens,
                        ema * (last_step - step))
        if step % options.eval_every == 0 or step == last_step:
            eval_sampler = BatchSampler(val, m.seq_len, plan.micro_batch, dp_rank, dp_size,
                                        options.seed)
            eval_loss = evaluate(engine, plan, eval_sampler, options.eval_batches, rank)
            if rank == 0:
                append_metrics(run, {"kind": "eval", "step": step, "eval_loss": eval_loss})
                emit("eval", {"step": step, "eval_loss": eval_loss})
        if step % options.checkpoint_every == 0 and step != last_step:
            save_checkpoint(engine, run, step, sampler, rank, options.keep_checkpoints)
    finish(engine, run, spec, plan, step, sampler, options.keep_checkpoints, rank, probe.seen)
    return EXIT_OK


def _deepspeed_version() -> str:
    import deepspeed
    return deepspeed.__version__


# ------------------------------------------------------------------------ plain-PyTorch loop

def plain_training(spec: Spec, plan: Plan, shards: Path, options: RunOptions, steps: int,
                   device: str = "cpu") -> tuple[list[float], list[float]]:
    """The same training without DeepSpeed, in one process: the data-parallel global batch as
    dp * grad_accum micro-batches (BatchSampler gives one dp=1 sampler the windows the dp ranks
    share out), PyTorch AdamW, clipping, DeepSpeed's own LR scheduler class, bf16 by autocast
    (fp8: the block GEMMs torchao's Float8Linear, which follows CUDA's autocast only, so on a
    CPU its GEMMs read fp32 inputs); a mixture-of-experts model holds every expert (ep 1) and
    adds its load-balancing loss.
    Returns (losses, step seconds): the reference for equivalence tests and the throughput bench."""
    from deepspeed.runtime.lr_schedules import WarmupCosineLR, WarmupDecayLR

    from .ds_config import to_deepspeed_config

    lr = LRSchedule(**options.lr)
    cfg = to_deepspeed_config(spec, plan, lr_schedule=lr)
    seed_everything(options.seed)
    model = GPT(spec.model, options.seed).to(device)
    if plan.precision is Precision.FP8:
        apply_fp8(model, spec)
    params = list(model.parameters())
    fused = device.startswith("cuda")
    opt = torch.optim.AdamW(params, lr=lr.peak_lr, betas=(lr.beta1, lr.beta2), eps=lr.eps,
                            weight_decay=lr.weight_decay, fused=fused)
    sched_cls = WarmupCosineLR if cfg["scheduler"]["type"] == "WarmupCosineLR" else WarmupDecayLR
    sched = sched_cls(opt, **cfg["scheduler"]["params"])
    sampler = BatchSampler(TokenDataset(shards, "train"), spec.model.seq_len, plan.micro_batch,
                           0, 1, options.seed)
    n_micro = plan.dp * plan.grad_accum
    dtype = torch.bfloat16 if plan.precision in (Precision.BF16, Precision.FP8) else None
    losses, times = [], []
    for _ in range(steps):
        batches = [sampler.next_batch() for _ in range(n_micro)]
        t0 = time.perf_counter()
        total = torch.zeros((), device=device)
        for x, y in batches:
            with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
                loss = model(x.to(device), y.to(device))
            aux = model.moe_aux_loss()
            ((loss if aux is None else loss + MOE_AUX_LOSS_COEF * aux) / n_micro).backward()
            total += loss.detach().float()
        if spec.training.gradient_clipping > 0:
            torch.nn.utils.clip_grad_norm_(params, spec.training.gradient_clipping)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append((total / n_micro).item())
        times.append(time.perf_counter() - t0)
    return losses, times


# -------------------------------------------------------------------------------------- main

def parse_args(argv: Optional[Iterable[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m executor.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", action="append", required=True, type=Path,
                    help="a run directory prepared by executor.run (repeat for several)")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    ap.add_argument("--continue", dest="continue_each", action="store_true",
                    help="resume each run directory that has a complete checkpoint and start "
                         "the others (the scaling-law lab's sweep)")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="stop after this optimizer step (the LR schedule is unchanged)")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    return ap.parse_args(argv)


def die_with_parent() -> None:
    """torchrun starts every rank in a session of its own, so a scheduler that kills the job's
    process group (SIGTERM or SIGKILL to `plan --execute` and torchrun) would leave the ranks
    training and writing: ask Linux to send this rank SIGTERM when its parent dies
    (prctl PR_SET_PDEATHSIG), and leave at once if it is already gone."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(EXIT_CRASH)


def report_crash(exc: BaseException) -> None:
    """The rank's own one-line reason, as an event the parent prints (the traceback stays in
    the log)."""
    reason = (f"{type(exc).__name__}: {exc}".splitlines() or [type(exc).__name__])[0][:500]
    rank = os.environ.get("RANK", "0")
    emit("error", {"message": f"rank {rank}: {reason}", "exit_code": EXIT_CRASH})


def main(argv: Optional[Iterable[str]] = None) -> None:
    args = parse_args(argv)
    die_with_parent()
    rc = EXIT_CRASH
    try:
        import deepspeed
        from deepspeed.accelerator import get_accelerator
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if get_accelerator().device_name() != "cpu":
            get_accelerator().set_device(local_rank)
        deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())
        for run_dir in args.run_dir:
            run = RunDir(run_dir)
            resume = args.resume or (args.continue_each and bool(complete_checkpoints(run)))
            rc = train(run, resume=resume, max_steps=args.max_steps)
            if rc != EXIT_OK:
                break
    except Exception as exc:  # a rank that dies must say why, then leave without hanging others
        traceback.print_exc()
        report_crash(exc)
        rc = EXIT_CRASH
    sys.stdout.flush()
    sys.stderr.flush()
    # skip interpreter shutdown: gloo's worker threads race it and abort the process now and then
    # (shared/notes/deepspeed-on-cpu.md); everything is saved by now
    os._exit(rc)


if __name__ == "__main__":
    main()
