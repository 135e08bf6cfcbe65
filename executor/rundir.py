"""The run directory: the contract between the orchestrator (executor/run.py) and the per-rank loop
(executor/train.py), which both import this module and nothing of each other.  It names the files
of a run, saves and loads the spec, the plan and the options, and knows which checkpoints are
complete and whole."""
from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from planner.plan.strategy import Plan
from planner.spec.spec import Spec, spec_from_dict

from .errors import ExecutorError

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


def mark_complete(run: RunDir, tag: str, step: int, world_size: int) -> None:
    (run.checkpoints / tag / COMPLETE).write_text(json.dumps({"step": step,
                                                              "world_size": world_size}) + "\n")


def check_checkpoint(run: RunDir) -> str:
    """The tag a resume will load, after checking its files are whole (torch.save files are zip
    archives whose directory sits at the end: a truncated file fails to open)."""
    tags = complete_checkpoints(run)
    if not tags:
        raise ExecutorError(f"{run.checkpoints}: no complete checkpoint to resume from")
    tag_dir = run.checkpoints / tags[-1]
    saved = json.loads((tag_dir / COMPLETE).read_text())
    ranks = sorted(tag_dir.glob("executor_rank*.pt"))
    if len(ranks) != saved["world_size"]:
        raise ExecutorError(f"{tag_dir}: checkpoint is corrupt ({len(ranks)} of "
                           f"{saved['world_size']} rank files)")
    for f in sorted(tag_dir.glob("*.pt")):
        try:
            with zipfile.ZipFile(f) as z:
                z.namelist()
        except (zipfile.BadZipFile, OSError):
            raise ExecutorError(f"{f}: checkpoint file is corrupt (not a readable torch "
                               f"file)") from None
    return tags[-1]
