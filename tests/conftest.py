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

SHARED_PUBLISHED = ROOT.parent / "shared" / "calibration" / "published_runs_sample.yaml"
VENDORED_PUBLISHED = ROOT / "tests" / "data" / "published_runs_sample.yaml"


def published_path() -> Path:
    return SHARED_PUBLISHED if SHARED_PUBLISHED.exists() else VENDORED_PUBLISHED


def invoke(*args):
    """`plan ARGS` in-process (click's CliRunner), stdout and stderr kept apart whatever the click
    version (8.1 mixes them unless told; 8.2 dropped the option and always keeps them apart)."""
    from click.testing import CliRunner

    from pretrain.cli import main
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, [str(a) for a in args])
