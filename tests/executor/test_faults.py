"""Faults in a run (issue 12): killing `plan --execute` the way a scheduler does (SIGKILL to its
process group) stops the ranks too, although torchrun starts them in sessions of their own; a
crashing rank's one-line reason reaches the user; a checkpoint whose bytes changed after it was
written (a flipped byte inside an intact zip directory loads silently) fails its manifest, and
the resume falls back to the previous checkpoint with one line saying so."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

from executor.errors import ExecutorError  # noqa: E402
from executor.launch import launch_command, ops_to_build, jit_ops  # noqa: E402
from executor.run import ExecuteRequest, execute, stream  # noqa: E402
from executor.rundir import (COMPLETE, RunDir, RunOptions, check_checkpoint,  # noqa: E402
                             checkpoint_files, checkpoint_problem, complete_checkpoints,
                             file_digest, resume_point)
from planner.plan.strategy import Plan  # noqa: E402
from planner.spec.loading import spec_from_dict  # noqa: E402
from planner.spec.units import Offload, Precision, Recompute, ZeroStage  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
#: JIT-built DeepSpeed ops cached across test sessions (as tests/executor/test_runs.py does)
from .conftest import EXTENSIONS  # noqa: E402


def ranks_alive(run_dir: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-f", f"executor.train --run-dir {run_dir}"],
                         capture_output=True, text=True).stdout
    return out.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_killing_the_job_group_stops_the_ranks(tmp_path):
    run = tmp_path / "run"
    job = subprocess.Popen([sys.executable, "-m", "pretrain.cli", "specs/tiny_cpu.yaml",
                            "--execute", "--run-dir", str(run), "--stories", "2000"],
                           cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert time.time() < deadline and job.poll() is None, "the run did not start training"
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    time.sleep(1.0)
    try:
        assert ranks_alive(run) == []
    finally:
        for pid in ranks_alive(run):
            os.kill(int(pid), signal.SIGKILL)


def test_a_crashing_rank_says_why_in_one_line(tmp_path, capsys):
    """executor.train's report_crash event, streamed by the parent: the rank's own reason and
    where the full log is, not only "training exited with code 1"."""
    import json

    from executor.rundir import RunDir
    from executor.run import stream
    from executor.train import EXIT_CRASH
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    event = json.dumps({"message": "rank 1: RuntimeError: checkpoint state is not a dict",
                        "exit_code": EXIT_CRASH})
    code = (f"import sys; print('Traceback ...'); print('@error ' + {event!r}); "
            f"sys.exit({EXIT_CRASH})")
    rc = stream([sys.executable, "-c", code], {}, run)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == EXIT_CRASH
    assert err == [f"error: rank 1: RuntimeError: checkpoint state is not a dict; the full log "
                   f"is {run.log}"]
    assert "Traceback" in run.log.read_text()


# ------------------------------------------------------------------------ checkpoint checksums

STEPS, EVERY = 8, 4  #: complete checkpoints global_step4 and global_step8 (keep_checkpoints 2)
PLAN = Plan(2, 1, 1, ZeroStage.GRADIENTS, Precision.FP32, 2, 2, Recompute.NONE, Offload.NONE)
#: the newest checkpoint's file each case damages: DeepSpeed's model states, rank 1's ZeRO
#: optimizer partition, rank 1's data position and RNG state (executor.train)
DAMAGED = {"model-states": "mp_rank_00_model_states.pt",
           "optimizer-states": "zero_pp_rank_1_mp_rank_00_optim_states.pt",
           "data-rng-state": "executor_rank00001.pt"}


def tiny_spec():
    """A 2-layer GPT-2 on 2 CPU processes; 40 steps of 8 sequences of 64 tokens planned."""
    cpu = {"name": "cpu", "memory_gib": 8, "peak_tflops": {"fp32": 0.2}, "hbm_gbps": 20,
           "intra_node_link": "pcie", "intra_node_gbps": 10, "accelerator": "cpu"}
    return spec_from_dict({
        "model": {"arch": "gpt2", "n_layers": 2, "d_model": 64, "n_heads": 4, "vocab_size": 512,
                  "seq_len": 64},
        "cluster": {"gpu": cpu, "nodes": 1, "gpus_per_node": 2},
        "training": {"tokens": 40 * 8 * 64, "global_batch_sequences": 8}})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, extensions) -> RunDir:
    """One 2-process run of STEPS steps with a checkpoint every EVERY, through execute()."""
    root = tmp_path_factory.mktemp("checksums")
    request = ExecuteRequest(max_steps=STEPS, checkpoint_every=EVERY, eval_every=EVERY,
                             stories=2000, seed=7, cache_dir=str(root / "cache"))
    with redirect_stdout(io.StringIO()):
        assert execute(tiny_spec(), PLAN, root / "trained", request) == 0
    return RunDir(root / "trained")


def records(run: RunDir, kind: str) -> list[dict]:
    return [r for r in map(json.loads, run.metrics.read_text().splitlines()) if r["kind"] == kind]


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def damaged_copy(trained: RunDir, target: Path, *names: str, tag: str = "global_step8") -> RunDir:
    run = RunDir(shutil.copytree(trained.path, target))
    for name in names:
        flip_byte(run.checkpoints / tag / name)
    return run


@pytest.fixture(scope="module")
def resumed(trained, tmp_path_factory):
    """A copy of the trained run per case with one byte of the newest checkpoint's file flipped,
    all resumed in one launch (start-up is most of a launch's cost here): (runs by case, the
    launch's exit code, what the parent printed, the step each run's @start event names, the
    tag the parent's pre-launch check chose)."""
    root = tmp_path_factory.mktemp("resumed")
    runs = {case: damaged_copy(trained, root / case, name) for case, name in DAMAGED.items()}
    chosen = {case: check_checkpoint(run) for case, run in runs.items()}
    launch = launch_command(tiny_spec(), PLAN, [r.path for r in runs.values()],
                            extra=["--resume", "--max-steps", str(STEPS)])
    first = next(iter(runs.values()))
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        rc = stream(launch.argv, launch.env, first)
    starts = {Path(ev["run_dir"]).name: ev["step"] for ev in
              (json.loads(line[len("@start "):]) for line in first.log.read_text().splitlines()
               if line.startswith("@start "))}
    return runs, rc, err.getvalue(), starts, chosen


def test_every_checkpoint_file_is_in_its_manifest(trained):
    """Both checkpoints are complete with a manifest naming every file of the tag directory (the
    ranks' own and DeepSpeed's) with its size and sha256, as hashed again here; the default
    keeps two, so a damaged newest one has a predecessor."""
    assert RunOptions().keep_checkpoints == trained.load()[2].keep_checkpoints == 2
    assert complete_checkpoints(trained) == [f"global_step{EVERY}", f"global_step{STEPS}"]
    for tag in complete_checkpoints(trained):
        tag_dir = trained.checkpoints / tag
        manifest = json.loads((tag_dir / COMPLETE).read_text())["files"]
        assert sorted(manifest) == checkpoint_files(tag_dir)
        assert set(DAMAGED.values()) | {"executor_rank00000.pt"} <= set(manifest)
        assert all(manifest[name] == file_digest(tag_dir / name) for name in manifest)
        assert checkpoint_problem(trained, tag) is None


def test_the_notice_looks_for_the_ops_the_ranks_built(trained):
    """The ops the compile notice waits for (launch.py, jit_ops) are the ones this run's ranks
    built or loaded, in the folder they used: after a run none is left to build."""
    spec, _, _ = trained.load()
    ds_config = json.loads(trained.ds_config.read_text())
    assert jit_ops(ds_config, "cpu") == ["deepspeed_shm_comm", "fused_adam"]
    assert ops_to_build(ds_config, "cpu", {"TORCH_EXTENSIONS_DIR": str(EXTENSIONS)}) == []


@pytest.mark.parametrize("case", DAMAGED)
def test_a_flipped_byte_falls_back_to_the_previous_checkpoint(trained, resumed, case):
    """The parent's check and the ranks both choose global_step4; one line names the file and
    the fallback; the run goes on from step 4 to the end with one record per step, on exactly
    the uninterrupted run's losses (a resume is exact), and leaves a new, whole global_step8
    beside the damaged one, set aside."""
    runs, rc, err, starts, chosen = resumed
    run = runs[case]
    assert rc == 0, err[-3000:]
    assert chosen[case] == f"global_step{EVERY}"
    damaged = run.checkpoints / f"global_step{STEPS}" / DAMAGED[case]
    assert [line for line in err.splitlines() if str(run.path) in line] == [
        f"note: {damaged}: checkpoint file is corrupt (sha256 differs from its manifest): "
        f"falling back to the previous checkpoint, global_step{EVERY} (set aside as "
        f"global_step{STEPS}.corrupt)"]
    assert starts[case] == EVERY
    train = records(run, "train")
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    assert [r["step"] for r in records(run, "eval")] == [EVERY, STEPS]
    assert [r["loss"] for r in train] == [r["loss"] for r in records(trained, "train")]
    assert complete_checkpoints(run) == [f"global_step{EVERY}", f"global_step{STEPS}"]
    assert checkpoint_problem(run, f"global_step{STEPS}") is None
    corrupt = run.checkpoints / f"global_step{STEPS}.corrupt" / DAMAGED[case]
    assert corrupt.read_bytes() != (trained.checkpoints / f"global_step{STEPS}" /
                                    DAMAGED[case]).read_bytes()


@pytest.mark.parametrize("how", ["missing", "resized"])
def test_a_missing_or_resized_file_is_named(trained, tmp_path, how):
    """Caught by a stat, before any hashing."""
    run = RunDir(shutil.copytree(trained.path, tmp_path / "run"))
    victim = run.checkpoints / f"global_step{STEPS}" / "mp_rank_00_model_states.pt"
    size = victim.stat().st_size
    if how == "missing":
        victim.unlink()
        problem = "checkpoint file is missing (its manifest lists it)"
    else:
        victim.write_bytes(victim.read_bytes() + b"\0")
        problem = f"checkpoint file is corrupt ({size + 1:,} bytes; its manifest says {size:,})"
    point = resume_point(run)
    assert point.tag == f"global_step{EVERY}" and point.verified
    assert point.note == (f"{victim}: {problem}: falling back to the previous checkpoint, "
                          f"global_step{EVERY}")


def test_no_checkpoint_that_verifies_is_one_error_line(trained, tmp_path):
    """Both checkpoints damaged: execute() refuses the resume before launching, naming the
    newest checkpoint's bad file, and moves nothing."""
    name = DAMAGED["optimizer-states"]
    run = damaged_copy(trained, tmp_path / "run", name)
    flip_byte(run.checkpoints / f"global_step{EVERY}" / name)
    before = sorted(p.name for p in run.checkpoints.iterdir())
    with pytest.raises(ExecutorError) as error:
        execute(tiny_spec(), PLAN, run.path, ExecuteRequest(resume=True))
    assert str(error.value) == (
        f"{run.checkpoints / f'global_step{STEPS}' / name}: checkpoint file is corrupt (sha256 "
        f"differs from its manifest); no checkpoint to resume from (the older one fails too)")
    assert sorted(p.name for p in run.checkpoints.iterdir()) == before


def test_a_checkpoint_from_before_manifests_is_resumed_with_a_note(trained, tmp_path):
    """A completion marker without a manifest (written before checksums) is accepted, its zip
    directories read, with a note that its files are not verified."""
    run = RunDir(shutil.copytree(trained.path, tmp_path / "run"))
    marker = run.checkpoints / f"global_step{STEPS}" / COMPLETE
    saved = json.loads(marker.read_text())
    marker.write_text(json.dumps({k: v for k, v in saved.items() if k != "files"}))
    point = resume_point(run)
    assert (point.tag, point.verified) == (f"global_step{STEPS}", False)
    assert point.note == (f"checkpoint global_step{STEPS} has no manifest (written before "
                          f"checkpoints had one), so its files are not verified")
