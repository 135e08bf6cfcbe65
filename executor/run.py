"""``execute(spec, plan, run_dir, request)``: check that the plan can run, prepare the run
directory (spec, plan, options, DeepSpeed config, tokenizer, token shards), launch the ranks,
stream rank 0's progress (with a notice while DeepSpeed's ops compile on a first launch), then
write the plan-vs-actual report.

The run directory (executor/rundir.py) is the contract between this parent and
``executor.train``.  User errors raise ExecutorError with one line, before anything is written.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from planner.plan.strategy import Plan
from planner.search.rules import check
from planner.spec.spec import Spec
from planner.spec.units import Precision

from .context_parallel import problem as context_parallel_problem
from .ds_config import LRSchedule, default_lr_schedule, to_deepspeed_config
from .errors import ExecutorError
from .launch import DS_ENV_FILE
from .rundir import RunDir, RunOptions, check_checkpoint

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(os.environ.get("PRETRAIN_PLANNER_CACHE",
                                    Path.home() / ".cache" / "pretrain-planner"))


@dataclass(frozen=True)
class ExecuteRequest:
    """How to run a plan: the flags of ``plan SPEC --execute`` (docs/executor.md)."""

    resume: bool = False  #: continue the run in run_dir from its last complete checkpoint
    dry_run: bool = False  #: print the DeepSpeed config, hostfile and argv; write nothing
    max_steps: Optional[int] = None  #: stop after this step (the LR schedule keeps its length)
    data: Optional[str] = None  #: corpus file or directory (default: generated stories)
    tokenizer: Optional[str] = None  #: "byte", a saved tokenizer directory, or None (BPE)
    nvme_path: Optional[str] = None  #: directory for NVMe offload
    launcher: Optional[str] = None  #: auto, torchrun, deepspeed or slurm (over launch.launcher)
    hosts: Optional[Sequence[str]] = None  #: one per node (over launch.hosts)
    master_addr: Optional[str] = None  #: over launch.master_addr
    seed: Optional[int] = None
    eval_every: Optional[int] = None
    checkpoint_every: Optional[int] = None
    learning_rate: Optional[float] = None  #: peak learning rate
    warmup_steps: Optional[int] = None
    stories: Optional[int] = None  #: generated stories when no corpus is given
    init_from: Optional[str] = None  #: a GPT state dict (another run's export) to start from
    cache_dir: Optional[str] = None  #: token shards (default ~/.cache/pretrain-planner)
    verbose: bool = False  #: echo every line the ranks print


# -------------------------------------------------------------------------- pre-launch checks

def plan_problem(spec: Spec, plan: Plan) -> Optional[str]:
    """Why the backend cannot run ``plan`` at all, wherever it runs: the backend's own rules and
    its executor's (planner/backends/), the very rules ``plan --execute`` ranks by, then the
    context-parallel layouts this executor builds (executor/context_parallel.py)."""
    rejected = check(spec, plan, executable=True)
    return rejected.reason if rejected is not None else context_parallel_problem(spec, plan)


def machine_problem(spec: Spec, plan: Plan, device: str, nvme_path: Optional[str]) -> Optional[str]:
    """Why ``plan`` cannot start on the machine at hand (when it is the one that trains), or
    None."""
    accelerator = spec.cluster.gpu.accelerator
    if accelerator != "cpu" and device == "cpu":
        return (f"the spec's cluster trains on {spec.cluster.gpu.name} ({accelerator}) and this "
                f"machine has no GPU: run plan --execute on the cluster, or --dry-run to see "
                f"its launch")
    if plan.precision is Precision.FP16 and device == "cpu":
        return ("fp16 cannot run on CPU (DeepSpeed: 'Type fp16 is not supported on your "
                "device'); plan with precision bf16 or fp32")
    if plan.offload.uses_nvme:
        if not nvme_path:
            return f"offload {plan.offload.value} needs an NVMe directory: pass --nvme-path"
        if not Path(nvme_path).is_dir():
            return f"--nvme-path {nvme_path}: no such directory"
    if device == "cuda" and spec.cluster.nodes == 1:
        import torch
        visible = torch.cuda.device_count()
        if plan.world_size > visible:
            return f"the plan needs {plan.world_size} GPUs on this node; {visible} are visible"
    return None


def prelaunch_problem(spec: Spec, plan: Plan, device: str,
                      nvme_path: Optional[str]) -> Optional[str]:
    """Every check before anything is written: the plan, then the machine."""
    return plan_problem(spec, plan) or machine_problem(spec, plan, device, nvme_path)


def current_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


# -------------------------------------------------------------------------------------- data

def prepare_data(spec: Spec, plan: Plan, options: RunOptions, cache_dir: Path,
                 prepared: Optional[tuple] = None):
    """(tokenizer, shards, source): the corpus (default: generated stories), its tokenizer
    (checked against the model's vocabulary) and token shards (cached by content hash), or
    those already ``prepared`` for several runs (the lab's points), checked for this one."""
    from .data import BatchSampler, TokenDataset

    tok, shards, source = prepared or corpus_tokens(spec, options, cache_dir)
    check_vocab(tok.vocab_size, spec)
    for split in ("train", "val"):  # each must hold one batch: BatchSampler says why not
        BatchSampler(TokenDataset(shards.directory, split), spec.model.seq_len, plan.micro_batch,
                     0, plan.dp)
    return tok, shards, source


def corpus_tokens(spec: Spec, options: RunOptions, cache_dir: Path):
    """(tokenizer, shards, source) for the options' corpus and tokenizer."""
    from .data import build_shards, load_corpus
    from .tokenizer import ByteTokenizer, load_tokenizer, train_bpe

    if options.data is not None:
        docs, source = load_corpus(options.data), f"corpus {options.data}"
    else:
        from .stories import generate_stories
        docs = generate_stories(options.stories, options.seed)
        source = f"{options.stories} generated stories (seed {options.seed})"
    if options.tokenizer is None:
        tok = train_bpe(docs, spec.model.vocab_size)
    elif options.tokenizer == "byte":
        tok = ByteTokenizer()
    else:
        tok = load_tokenizer(options.tokenizer)
    check_vocab(tok.vocab_size, spec)
    shards = build_shards(docs, tok, cache_dir / "shards", val_fraction=options.val_fraction)
    return tok, shards, source


def check_vocab(tokens: int, spec: Spec) -> None:
    if tokens > spec.model.vocab_size:
        raise ExecutorError(f"model.vocab_size: the tokenizer has {tokens} tokens but the model's "
                           f"vocabulary is {spec.model.vocab_size}")


def prepare_run_dir(spec: Spec, plan: Plan, run_dir: str | Path, options: RunOptions, *,
                    cache_dir: Path = DEFAULT_CACHE, with_data: bool = True,
                    prepared: Optional[tuple] = None) -> RunDir:
    """Everything the ranks read, written into a new run directory (made last, so a failure
    leaves nothing behind).  A user's own script (``launch.script``) brings its own data: its
    run directory holds the plan and the DeepSpeed config only."""
    run = RunDir(run_dir)
    ds_config = to_deepspeed_config(spec, plan, lr_schedule=LRSchedule(**options.lr),
                                    nvme_path=options.nvme_path)
    if not with_data:
        run.path.mkdir(parents=True)
        run.save(spec, plan, options, ds_config)
        return run
    tok, shards, source = prepare_data(spec, plan, options, Path(cache_dir), prepared)
    run.path.mkdir(parents=True)
    tok.save(run.tokenizer)
    run.data.write_text(json.dumps({"source": source, "shards": str(shards.directory),
                                    "tokens": {s: shards.tokens(s) for s in ("train", "val")},
                                    "tokenizer_vocab": tok.vocab_size}, indent=1) + "\n")
    run.save(spec, plan, options, ds_config)
    return run


def make_options(spec: Spec, plan: Plan, *, data=None, tokenizer=None, nvme_path=None,
                 seed=None, stories=None, eval_every=None, checkpoint_every=None,
                 learning_rate=None, warmup_steps=None, init_from=None,
                 eval_batches=None) -> RunOptions:
    lr = default_lr_schedule(spec, plan, peak_lr=learning_rate, warmup_steps=warmup_steps)
    given = {k: v for k, v in dict(data=data, tokenizer=tokenizer, nvme_path=nvme_path, seed=seed,
                                   stories=stories, init_from=init_from,
                                   eval_batches=eval_batches).items()
             if v is not None}
    return RunOptions(
        eval_every=eval_every or max(1, min(500, lr.total_steps // 20)),
        checkpoint_every=checkpoint_every or max(1, min(1000, lr.total_steps // 10)),
        lr=lr.as_dict(), **{k: str(Path(v).resolve()) if k == "init_from" else
                            str(v) if k in ("data", "tokenizer", "nvme_path") else v
                            for k, v in given.items()})


# ----------------------------------------------------------------------------------- execute

def execute(spec: Spec, plan: Plan, run_dir: str | Path,
            request: ExecuteRequest = ExecuteRequest()) -> int:
    """Run ``plan`` for ``spec`` in ``run_dir``; returns the job's exit code (0 done, 3 stopped on
    a non-finite loss, 1 crashed).  Raises ExecutorError for anything the user can fix."""
    from .launch import launch_command, trains_here, with_overrides
    from .report import write_report

    r = request
    spec = with_overrides(spec, launcher=r.launcher, hosts=r.hosts, master_addr=r.master_addr)
    run = RunDir(run_dir)
    own_script = spec.launch.script is not None
    if r.resume:
        spec, plan, options = resume_checks(run, spec, plan)
    else:
        if run.path.exists() and not r.dry_run:  # a dry run writes nothing
            raise ExecutorError(f"run directory {run.path} exists; pass --resume or choose another")
        if r.data is not None and not Path(r.data).exists():
            raise ExecutorError(f"data path {r.data} does not exist")
        if r.tokenizer not in (None, "byte") and not Path(r.tokenizer).is_dir():
            raise ExecutorError(f"tokenizer directory {r.tokenizer} does not exist")
        if r.init_from is not None and not Path(r.init_from).is_file():
            raise ExecutorError(f"--init-from {r.init_from}: no such weights file (a run's "
                                f"export/pytorch_model.bin)")
        options = make_options(spec, plan, data=r.data, tokenizer=r.tokenizer,
                               init_from=r.init_from,
                               nvme_path=r.nvme_path, seed=r.seed, stories=r.stories,
                               eval_every=r.eval_every, checkpoint_every=r.checkpoint_every,
                               learning_rate=r.learning_rate, warmup_steps=r.warmup_steps)
    local = trains_here(spec)
    reason = plan_problem(spec, plan) or (
        machine_problem(spec, plan, current_device(), options.nvme_path)
        if local and not r.dry_run else None)
    if reason:
        raise ExecutorError(reason)
    extra = ["--resume"] if r.resume else []
    extra += ["--max-steps", str(r.max_steps)] if r.max_steps else []
    # a job on other machines finds the run directory as the user named it, relative to its
    # working directory (a shared file system); one started here gets the absolute path
    launch = launch_command(spec, plan, [run.path.resolve() if local else run.path], extra=extra)
    if r.dry_run:
        ds_config = to_deepspeed_config(spec, plan, lr_schedule=LRSchedule(**options.lr),
                                        nvme_path=options.nvme_path)
        sys.stdout.write(launch.describe(ds_config))
        return 0
    if not r.resume:
        prepare_run_dir(spec, plan, run.path, options, with_data=not own_script,
                        cache_dir=Path(r.cache_dir) if r.cache_dir else DEFAULT_CACHE)
    run.launch_file.write_text(json.dumps({"argv": launch.argv, "env": launch.env}, indent=1)
                               + "\n")
    for name, text in (("hostfile", launch.hostfile), (DS_ENV_FILE, launch.env_file)):
        if text is not None:
            (run.path / name).write_text(text)
    if launch.sbatch is not None:
        return submit_slurm(run, launch)
    rc = stream(launch.argv, launch.env, run, verbose=r.verbose)
    if run.metrics.exists() and not own_script:
        text = write_report(spec, plan, run)
        print(text)
    return rc


def resume_checks(run: RunDir, spec: Spec, plan: Plan) -> tuple[Spec, Plan, RunOptions]:
    from .tokenizer import load_tokenizer

    if not run.run_file.is_file():
        raise ExecutorError(f"{run.path}: nothing to resume (no run.json; start it without "
                           f"--resume)")
    saved_spec, saved_plan, options = run.load()
    if saved_plan != plan:
        export = run.export / "pytorch_model.bin"
        how = (f"to go on with this plan from the run's weights, start a new run with "
               f"--init-from {export} (optimizer states start afresh)" if export.is_file() else
               "its fp32 export, which a new run with another plan can start from "
               "(--init-from), is written when the run finishes: resume it with its own plan")
        raise ExecutorError(f"{run.path} was started with plan {saved_plan.label}; this plan is "
                            f"{plan.label}: a resume needs the same plan; {how}")
    if saved_spec.model != spec.model:
        raise ExecutorError(f"{run.path} was started with another model (model section differs)")
    check_checkpoint(run)
    check_vocab(load_tokenizer(run.tokenizer).vocab_size, saved_spec)
    if not run.shards_dir().is_dir():
        raise ExecutorError(f"{run.shards_dir()}: the run's token shards are gone (rebuild them "
                           f"by starting a new run on the same data)")
    return saved_spec, saved_plan, options


def submit_slurm(run: RunDir, launch) -> int:
    import shutil
    script = Path(launch.argv[-1])
    script.write_text(launch.sbatch)
    if shutil.which("sbatch") is None:
        raise ExecutorError(f"sbatch not found; the job script is {script}")
    return subprocess.run(launch.argv, check=False).returncode


def parse_event(line: str) -> tuple[Optional[str], Any]:
    if not line.startswith("@"):
        return None, None
    kind, _, payload = line[1:].partition(" ")
    try:
        return kind, json.loads(payload)
    except json.JSONDecodeError:
        return None, None


#: what a launch says while its ranks JIT-build DeepSpeed's ops, silent otherwise
COMPILE_NOTICE = "compiling DeepSpeed's ops (first run only, about a minute)..."


class Notice:
    """A line that stands in for silent ranks until ``stop``: on a terminal a spinner with the
    seconds spent, redrawn in place; elsewhere (a log, a pipe) the line once, so no carriage
    returns or spinner frames end up in a file."""

    FRAMES = "|/-\\"

    def __init__(self, text: str, out=None, *, interval_s: float = 0.1):
        self.text, self.out, self.interval_s = text, out or sys.stderr, interval_s
        self.spin = bool(getattr(self.out, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._drawn = 0  #: characters of the spinner line now on the terminal

    def start(self) -> None:
        if not self.spin:
            self.write(self.text + "\n")
            return
        self._thread = threading.Thread(target=self._spin, args=(time.monotonic(),), daemon=True)
        self._thread.start()

    def _spin(self, t0: float) -> None:
        frame = 0
        while True:
            with self._lock:
                line = (f"{self.FRAMES[frame % len(self.FRAMES)]} {self.text} "
                        f"{time.monotonic() - t0:.0f} s")
                self.out.write("\r" + line.ljust(self._drawn))
                self.out.flush()
                self._drawn = len(line)
            if self._stop.wait(self.interval_s):
                return
            frame += 1

    def _clear(self) -> None:
        if self._drawn:
            self.out.write("\r" + " " * self._drawn + "\r")
            self._drawn = 0

    def write(self, text: str, file=None) -> None:
        """``text`` (whole lines, to ``file`` or the notice's own stream) above the spinner,
        which the next frame redraws."""
        file = file or self.out
        with self._lock:
            self._clear()
            self.out.flush()
            file.write(text)
            file.flush()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        with self._lock:
            self._clear()
            self.out.flush()


def compile_notice(run: RunDir, env: dict[str, str]) -> Optional[Notice]:
    """A Notice when the ranks of this run will JIT-build DeepSpeed ops this machine has not
    built (launch.py, ops_to_build); None when they load built ones, train elsewhere, or the
    run directory is not one this executor prepared."""
    from .launch import ops_to_build, trains_here
    if not (run.run_file.is_file() and run.ds_config.is_file()):
        return None
    spec, _, _ = run.load()
    ds_config = json.loads(run.ds_config.read_text())
    if not trains_here(spec) or not ops_to_build(ds_config, spec.cluster.gpu.accelerator, env):
        return None
    return Notice(COMPILE_NOTICE)


class RankOutput:
    """What the parent shows of the ranks' output, line by line: rank 0's events as a progress
    bar (loss, tokens/s, ETA) and a few lines, ``notice`` until the first run starts training,
    and what is left to say afterwards (the errors, the last lines)."""

    def __init__(self, *, verbose: bool = False, notice: Optional[Notice] = None,
                 on_start: Optional[Callable[[dict], None]] = None):
        self.verbose, self.notice, self.on_start = verbose, notice, on_start
        self.tail: deque[str] = deque(maxlen=30)
        self.errors: list[str] = []
        self.exit_code: Optional[int] = None  #: the ranks' own (torchrun's is 1 for any failure)
        self.bar = None
        if notice is not None:
            notice.start()

    def say(self, text: str, file=None) -> None:
        """One line to the user (stdout unless ``file``), above the bar or the notice."""
        file = file or sys.stdout
        if self.bar is not None:
            self.bar.write(text, file=file)
        elif self.notice is not None:
            self.notice.write(text + "\n", file)
        else:
            print(text, file=file, flush=True)

    def feed(self, line: str) -> None:
        self.tail.append(line)
        kind, ev = parse_event(line)
        if kind == "start":
            from tqdm import tqdm
            self.end_notice()
            if self.bar is not None:
                self.bar.close()
            if self.on_start is not None:
                self.on_start(ev)
            self.bar = tqdm(total=ev["last_step"], initial=ev["step"], unit="step",
                            desc=Path(ev["run_dir"]).name, file=sys.stderr, dynamic_ncols=True)
        elif kind == "progress" and self.bar is not None:
            # the postfix first, without a redraw: update() redraws at most every
            # mininterval, so a fast run's parent does not spend a core on its bar
            self.bar.set_postfix_str(f"loss {ev['loss']:.4f} · {ev['tokens_per_s']:,.0f} tok/s · "
                                     f"ETA {ev['eta_s']:.0f}s", refresh=False)
            self.bar.update(ev["step"] - self.bar.n)
        elif kind == "eval":
            self.say(f"step {ev['step']}: eval loss {ev['eval_loss']:.4f}")
        elif kind == "note":
            self.say(f"note: {ev['message']}", file=sys.stderr)
        elif kind == "error":
            self.errors.append(ev["message"])
            self.exit_code = ev.get("exit_code", self.exit_code)
        elif self.verbose and kind is None:
            if self.notice is not None:
                self.notice.write(line)
            else:
                sys.stderr.write(line)

    def end_notice(self) -> None:
        if self.notice is not None:
            self.notice.stop()
            self.notice = None

    def close(self) -> None:
        self.end_notice()
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def stream(argv: list[str], env: dict[str, str], run: RunDir, *, verbose: bool = False,
           on_start: Optional[Callable[[dict], None]] = None) -> int:
    """Run the launcher, keep its whole output in train.log, and show it as RankOutput does (a
    notice while DeepSpeed's ops compile, then a progress bar).  ``on_start`` sees each run
    directory's start event before its bar opens (the lab prints where the sweep stands)."""
    full_env = {**os.environ, **env,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                            os.environ.get("PYTHONPATH")]))}
    out = RankOutput(verbose=verbose, notice=compile_notice(run, full_env), on_start=on_start)
    try:
        with open(run.log, "a") as log, subprocess.Popen(
                argv, env=full_env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
            for line in proc.stdout:
                log.write(line)
                out.feed(line)
            rc = proc.wait()
    finally:
        out.close()
    for message in out.errors:
        where = f"; the full log is {run.log}" if rc != 0 else ""
        print(f"error: {message}{where}", file=sys.stderr)
    if rc != 0 and not out.errors:
        sys.stderr.write("".join(out.tail))
        print(f"error: training exited with code {rc}; the full log is {run.log}", file=sys.stderr)
    return out.exit_code if rc != 0 and out.exit_code is not None else rc


__all__ = ["execute", "ExecuteRequest", "prepare_run_dir", "make_options", "prelaunch_problem",
           "plan_problem", "machine_problem"]
