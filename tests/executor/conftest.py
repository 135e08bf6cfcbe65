"""What the executor's multi-process tests share: the JIT-built DeepSpeed ops cached in the checkout
(or $TORCH_EXTENSIONS_DIR), and the shared-memory buffers DeepSpeed's CPU all-reduce leaves in
/dev/shm, removed after each module's launches."""
import glob
import os
from pathlib import Path

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
