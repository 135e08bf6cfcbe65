"""bench/gpu_check.py runs its whole path on the CPU (--cpu-smoke): the executor through
execute(), the plain PyTorch loop on the same batches, the planned-vs-measured rows and the
results file.  On a GPU machine the same script measures memory and speed (docs/executor.md)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_on_the_cpu(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--cpu-smoke",
                           "--steps", "2", "--zero", "2", "--calibrate", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu"
    (row,) = result["rows"]
    assert row["model"] == "tiny-gpt" and row["zero"] == 2 and "error" not in row
    assert row["planned_step_s"] > 0 and row["measured_step_s"] > 0
    assert row["executor_over_plain"] > 0 and row["measured_peak_gib"] is None  # CPU: no peak
    # --calibrate: a profile fitted on the run, re-planned, and a run at twice the micro-batch
    (cal,) = result["calibration"]
    assert "error" not in cal and cal["fitted"]
    assert cal["same_runs_max_error"] <= max(abs(e) for e in cal["same_runs_errors_before"])
    assert cal["other_mb_measured_s"] > 0 and "other_mb_error_after" in cal
