from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_CALIBRATION = ROOT.parent / "shared" / "calibration" / "h200_deepspeed_runs.jsonl"
VENDORED_CALIBRATION = ROOT / "tests" / "data" / "h200_deepspeed_runs.jsonl"


def calibration_path() -> Path:
    """The shared calibration file when the checkout has it (it grows), else the vendored copy."""
    return SHARED_CALIBRATION if SHARED_CALIBRATION.exists() else VENDORED_CALIBRATION


@pytest.fixture
def root() -> Path:
    return ROOT
