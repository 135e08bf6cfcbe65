"""What the executor's multi-process tests share: the JIT-built DeepSpeed ops cached in the checkout
(or $TORCH_EXTENSIONS_DIR), and the shared-memory buffers DeepSpeed's CPU all-reduce leaves in
/dev/shm, removed after each module's launches."""
import glob
import os
import subprocess
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXTENSIONS = Path(os.environ.get("TORCH_EXTENSIONS_DIR", ROOT / "build" / "torch_extensions"))


@pytest.fixture(scope="module")
def extensions():
    """Cached extensions for the ranks; DeepSpeed's shared-memory buffers removed afterwards."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCH_EXTENSIONS_DIR", str(EXTENSIONS))
    before = set(glob.glob("/dev/shm/deepspeed_*"))
    yield EXTENSIONS
    for leftover in set(glob.glob("/dev/shm/deepspeed_*")) - before:
        Path(leftover).unlink(missing_ok=True)
    mp.undo()


def launch_runs(spec, plan, runs: dict, log: Optional[Path] = None) -> str:
    """Train the prepared run directories one after another in one launch of ``plan``'s ranks
    (as ``plan --execute`` would start them); the launch's output, which ``log`` keeps."""
    from executor.launch import launch_command
    launch = launch_command(spec, plan, [r.path for r in runs.values()])
    proc = subprocess.run(launch.argv, env={**os.environ, **launch.env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    if log is not None:
        log.write_text(output)
    assert proc.returncode == 0, output[-3000:]
    return output
