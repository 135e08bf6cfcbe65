"""The run directory: the contract between the orchestrator (executor/run.py) and the per-rank loop
(executor/train.py), which both import this module and nothing of each other.  It names the files
of a run, saves and loads the spec, the plan and the options, and knows which checkpoints are
complete and whole (each against the manifest its completion marker holds)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from planner.plan.strategy import Plan
from planner.spec.loading import spec_from_dict
from planner.spec.spec import Spec

from .errors import ExecutorError

#: a checkpoint's completion marker, which also holds its manifest: every file's size and sha256
COMPLETE = "executor_complete.json"


@dataclass(frozen=True)
class RunOptions:
    """What the executor needs beyond the spec and the plan (saved in run.json)."""

    seed: int = 1234
    eval_every: int = 50  #: optimizer steps between evaluations (and always at the end)
    eval_batches: int = 4  #: validation micro-batches per rank per evaluation
    checkpoint_every: int = 200  #: optimizer steps between checkpoints (and always at the end)
    keep_checkpoints: int = 2
    stories: int = 20_000  #: generated stories when no corpus is given
    val_fraction: float = 0.05
    data: Optional[str] = None  #: corpus file or directory; None: generated stories
    tokenizer: Optional[str] = None  #: None: BPE trained on the corpus; "byte"; or a saved one
    nvme_path: Optional[str] = None
    max_steps: Optional[int] = None  #: stop after this step (a --max-steps flag overrides it)
    init_from: Optional[str] = None  #: a plain GPT state dict the model starts from
    lr: dict = field(default_factory=dict)  #: LRSchedule fields


class RunDir:
    """The files of one run directory."""

    def __init__(self, path: str | Path):
        self.path = p = Path(path)
        self.run_file = p / "run.json"  #: spec, plan and options
        self.ds_config = p / "ds_config.json"
        self.data = p / "data.json"  #: corpus, shard directory, token counts
        self.tokenizer = p / "tokenizer"
        self.checkpoints = p / "checkpoints"  #: DeepSpeed's, plus per-rank data/RNG state
        self.export = p / "export"  #: pytorch_model.bin, fp32
        self.metrics = p / "metrics.jsonl"  #: one record per step and per evaluation
        self.actual = p / "actual.json"  #: measured memory, device, versions
        self.log = p / "train.log"  #: everything the ranks printed
        self.report_json, self.report_txt = p / "report.json", p / "report.txt"
        self.loss_png = p / "loss.png"
        self.launch_file = p / "launch.json"

    def load(self) -> tuple[Spec, Plan, RunOptions]:
        try:
            saved = json.loads(self.run_file.read_text())
            return (spec_from_dict(saved["spec"]), Plan.from_dict(saved["plan"]),
                    RunOptions(**saved["options"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ExecutorError(f"{self.run_file}: not a readable run file ({exc})") from None

    def save(self, spec: Spec, plan: Plan, options: RunOptions, ds_config: dict) -> None:
        self.run_file.write_text(json.dumps({"spec": spec.model_dump(mode="json"),
                                             "plan": plan.to_dict(), "options": asdict(options)},
                                            indent=1) + "\n")
        self.ds_config.write_text(json.dumps(ds_config, indent=1) + "\n")

    def shards_dir(self) -> Path:
        return Path(json.loads(self.data.read_text())["shards"])


# ------------------------------------------------------------------------------- checkpoints

def _step(tag: str) -> int:
    return int(tag.removeprefix("global_step")) if tag.removeprefix("global_step").isdigit() else -1


def complete_checkpoints(run: RunDir) -> list[str]:
    """Tags every rank finished writing, oldest first."""
    if not run.checkpoints.is_dir():
        return []
    tags = [d.name for d in run.checkpoints.iterdir()
            if (d / COMPLETE).is_file() and _step(d.name) >= 0]
    return sorted(tags, key=_step)


def checkpoint_files(tag_dir: Path) -> list[str]:
    """The files of a checkpoint a manifest covers: all of them but the marker itself."""
    return sorted(str(f.relative_to(tag_dir)) for f in tag_dir.rglob("*")
                  if f.is_file() and f.name != COMPLETE and not f.name.startswith(f".{COMPLETE}"))


def file_digest(path: Path, chunk_bytes: int = 1 << 20) -> dict:
    """Size and sha256 of one file, read a MiB at a time (a multi-GiB optimizer shard never sits
    in memory whole; sha256 runs at about 1.4 GB/s on a core with SHA extensions, faster than
    torch.save writes)."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": h.hexdigest()}


def file_digests(tag_dir: Path, names: list[str]) -> dict[str, dict]:
    """``file_digest`` of each named file, a few at a time (hashlib lets go of the GIL while it
    hashes, so threads overlap one file's reading with another's hashing)."""
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(names), os.cpu_count() or 1))) as pool:
        return dict(zip(names, pool.map(lambda n: file_digest(tag_dir / n), names)))


def _write_atomically(path: Path, text: str) -> None:
    """A reader sees the old file or the whole new one, never a half-written one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def mark_complete(run: RunDir, tag: str, step: int, world_size: int,
                  files: dict[str, dict]) -> None:
    """Marks ``tag`` complete, with its manifest (``files``: name -> bytes and sha256); written
    once every rank's files are on disk, so a checkpoint is complete only with its manifest."""
    _write_atomically(run.checkpoints / tag / COMPLETE,
                      json.dumps({"step": step, "world_size": world_size, "files": files}) + "\n")


def checkpoint_problem(run: RunDir, tag: str) -> Optional[str]:
    """Why the complete checkpoint ``tag`` cannot be resumed from (one line naming the file), or
    None.  Against its manifest: every file present, of its size (checked first: a stat is cheap),
    of its sha256 (a flipped byte inside an intact zip directory loads silently otherwise).  A
    checkpoint written before manifests: its rank files counted and its torch files' zip
    directories read (a truncated file fails to open)."""
    tag_dir = run.checkpoints / tag
    try:
        saved = json.loads((tag_dir / COMPLETE).read_text())
    except (OSError, ValueError):
        return f"{tag_dir / COMPLETE}: completion marker is corrupt (not readable JSON)"
    manifest = saved.get("files")
    if manifest is None:
        return _unverified_problem(tag_dir, saved["world_size"])
    for name, want in sorted(manifest.items()):
        f = tag_dir / name
        if not f.is_file():
            return f"{f}: checkpoint file is missing (its manifest lists it)"
        size = f.stat().st_size
        if size != want["bytes"]:
            return (f"{f}: checkpoint file is corrupt ({size:,} bytes; its manifest says "
                    f"{want['bytes']:,})")
    found = file_digests(tag_dir, sorted(manifest))
    for name, want in sorted(manifest.items()):
        if found[name]["sha256"] != want["sha256"]:
            return (f"{tag_dir / name}: checkpoint file is corrupt (sha256 differs from its "
                    f"manifest)")
    return None


def _unverified_problem(tag_dir: Path, world_size: int) -> Optional[str]:
    """The checks a checkpoint without a manifest allows."""
    ranks = sorted(tag_dir.glob("executor_rank*.pt"))
    if len(ranks) != world_size:
        return f"{tag_dir}: checkpoint is corrupt ({len(ranks)} of {world_size} rank files)"
    for f in sorted(tag_dir.glob("*.pt")):
        try:
            with zipfile.ZipFile(f) as z:
                z.namelist()
        except (zipfile.BadZipFile, OSError):
            return f"{f}: checkpoint file is corrupt (not a readable torch file)"
    return None


def has_manifest(run: RunDir, tag: str) -> bool:
    try:
        return "files" in json.loads((run.checkpoints / tag / COMPLETE).read_text())
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a resume loads: the newest complete one that passes its checks, and those
    newer that did not (tag, problem), newest first."""

    tag: str
    failed: tuple[tuple[str, str], ...] = ()
    verified: bool = True  #: False: written before manifests, only its zip directories read

    @property
    def note(self) -> Optional[str]:
        """The one line a resume says, or None when it loads the newest checkpoint, verified."""
        unverified = (f"{self.tag} has no manifest (written before checkpoints had one), so its "
                      f"files are not verified")
        if not self.failed:
            return None if self.verified else f"checkpoint {unverified}"
        which = (f"the previous checkpoint, {self.tag}" if len(self.failed) == 1 else
                 f"{self.tag}, the newest checkpoint that passes its checks ({len(self.failed)} "
                 f"newer ones do not)")
        return (f"{self.failed[0][1]}: falling back to {which}"
                + ("" if self.verified else f"; {unverified}"))


def resume_point(run: RunDir) -> ResumePoint:
    """The newest complete checkpoint that passes ``checkpoint_problem``; raises ExecutorError
    naming the newest one's problem, file first, when none does."""
    tags = complete_checkpoints(run)
    if not tags:
        raise ExecutorError(f"{run.checkpoints}: no complete checkpoint to resume from")
    failed: list[tuple[str, str]] = []
    for tag in reversed(tags):
        problem = checkpoint_problem(run, tag)
        if problem is None:
            return ResumePoint(tag, tuple(failed), has_manifest(run, tag))
        failed.append((tag, problem))
    older = ("" if len(failed) == 1 else " (the older one fails too)" if len(failed) == 2 else
             f" (the {len(failed) - 1} older ones fail too)")
    raise ExecutorError(f"{failed[0][1]}; no checkpoint to resume from{older}")


def check_checkpoint(run: RunDir) -> str:
    """The tag a resume will load (``resume_point``): checked here before the launch, so that a
    run with no whole checkpoint stops with one line before anything starts."""
    return resume_point(run).tag


def set_aside(run: RunDir, tag: str) -> Path:
    """Moves a checkpoint that failed its checks out of the run's checkpoints (``TAG.corrupt``,
    kept for a post-mortem): the resumed run will write a checkpoint of the same tag, which must
    not mix with the bad files or inherit their completion marker."""
    target = run.checkpoints / f"{tag}.corrupt"
    if target.exists():
        shutil.rmtree(target)
    os.replace(run.checkpoints / tag, target)
    return target
