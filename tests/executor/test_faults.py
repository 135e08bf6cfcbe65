"""Faults a scheduler causes (issue 12): killing `plan --execute` the way a scheduler does (SIGKILL
to its process group) stops the ranks too, although torchrun starts them in sessions of their
own; a crashing rank's one-line reason reaches the user."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

ROOT = Path(__file__).resolve().parents[2]


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
