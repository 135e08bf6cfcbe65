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


def llama7b_spec_file(path: Path, runtime: str) -> Path:
    """Llama-2-7B at 2,048 tokens on one node of 8 H100s, with this ``runtime:`` mapping (YAML
    flow text), written to ``path``: the spec the backend tests hand to the CLI."""
    path.write_text("model: {preset: llama2-7b, seq_len: 2048}\n"
                    "cluster: {gpu: H100-SXM, nodes: 1, gpus_per_node: 8}\n"
                    "training: {tokens: 1.0e12, global_batch_sequences: 512}\n"
                    f"runtime: {runtime}\n")
    return path


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
