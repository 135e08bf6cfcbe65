"""`plan SPEC` (pretrain/cli.py): exit codes 0 / 1 / 2, one `error:` line on stderr for bad input
(a traceback only with --verbose), and the JSON report's shape."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from planner.model.memory_terms import TERMS
from pretrain.cli import main
from tests.conftest import invoke

ROOT = Path(__file__).resolve().parents[2]
SPEC_7B = ROOT / "specs" / "7b_on_64xA100.yaml"

#: a small valid spec; the bad-input cases below each break one thing in it
VALID = """\
model: {preset: gpt2-124m}
cluster: {gpu: a100, nodes: 1, gpus_per_node: 8}
training: {tokens: 1.0e9, global_batch_sequences: 64}
"""

PINNED = """\
model: llama2-7b
cluster: {gpu: A100-80GB-SXM, nodes: 1, gpus_per_node: 8}
training: {tokens: 1.0e9, global_batch_sequences: 64}
search: {dp: 2, tp: 2, pp: 2, zero: 1, precision: bf16, micro_batch: 1, recompute: full,
         offload: none, sequence_parallel: false}
"""

#: llama2-70b on one A100 with ZeRO and recompute switched off: nothing can fit
INFEASIBLE = """\
model: llama2-70b
cluster: {gpu: A100-80GB-SXM, nodes: 1, gpus_per_node: 1}
training: {tokens: 1.0e9, global_batch_sequences: 8}
search: {zero: [0], recompute: [none]}
"""




def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------- success

def test_shipped_spec_text_report():
    result = invoke(SPEC_7B)
    assert result.exit_code == 0, result.output
    assert "best plan" in result.stdout
    assert result.stderr == ""


def test_shipped_spec_json_report():
    result = invoke(SPEC_7B, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    best = report["best"]
    strategy = best["strategy"]
    assert {"dp", "tp", "pp", "zero", "precision", "micro_batch", "grad_accum", "recompute",
            "offload"} <= set(strategy)
    assert strategy["dp"] * strategy["tp"] * strategy["pp"] == 64
    assert strategy["dp"] * strategy["micro_batch"] * strategy["grad_accum"] == 1024
    memory = best["memory_gib"]
    assert set(memory) == set(TERMS) | {"total"}
    assert memory["total"] == pytest.approx(sum(memory[t] for t in TERMS), abs=1e-3)
    assert memory["total"] > 0
    assert report["nearest_fix"] == []


def test_pinned_search_gives_exactly_that_strategy(tmp_path):
    result = invoke(write(tmp_path, PINNED), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["evaluated"] == 1
    assert report["best"]["strategy"] == {
        "dp": 2, "tp": 2, "pp": 2, "zero": 1, "precision": "bf16", "micro_batch": 1,
        "grad_accum": 64 // (2 * 1), "recompute": "full", "offload": "none",
        "sequence_parallel": False, "ep": 1, "cp": 1, "cp_kind": "ulysses",
    }


def test_schema():
    result = invoke("--schema")
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert {"model", "cluster", "training", "search"} <= set(schema["properties"])


def test_no_spec_is_a_usage_error():
    result = invoke()
    assert result.exit_code == 2
    assert "Usage:" in result.stderr
    assert "missing SPEC" in result.stderr


# --------------------------------------------------------------------------------- bad input

BAD = [
    # id, spec text (None: the file does not exist), fragments of the one stderr line
    ("missing-file", None, ["no such spec file"]),
    ("invalid-yaml", "model: {preset: gpt2-124m\ncluster: [\n", ["invalid YAML", "line 2"]),
    ("unknown-key", VALID.replace("preset:", "n_layer: 3, preset:"),
     ["error: model.n_layer: unknown key"]),
    ("unknown-preset", VALID.replace("gpt2-124m", "gpt5-1t"),
     ["error: model.preset: unknown preset 'gpt5-1t'", "gpt2-124m"]),
    ("unknown-gpu", VALID.replace("gpu: a100", "gpu: B300"),
     ["error: cluster.gpu.name: unknown GPU 'B300'"]),
    ("zero-size", VALID.replace("{preset: gpt2-124m}", "{preset: gpt2-124m, n_layers: 0}"),
     ["error: model.n_layers:"]),
    ("heads-not-divisible", VALID.replace("{preset: gpt2-124m}", "{preset: gpt2-124m, n_heads: 7}"),
     ["error: model.n_heads: n_heads (7) must divide d_model (768)"]),
]


def _bad_spec(tmp_path: Path, text) -> Path:
    return tmp_path / "absent.yaml" if text is None else write(tmp_path, text)


@pytest.mark.parametrize("text, fragments", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_is_one_error_line(tmp_path, text, fragments):
    result = invoke(_bad_spec(tmp_path, text))
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("text", [c[1] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_verbose_shows_traceback(tmp_path, text):
    result = invoke(_bad_spec(tmp_path, text), "--verbose")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert "SpecError" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: ")


# ------------------------------------------------------------------------------- infeasible

def test_infeasible_spec(tmp_path):
    result = invoke(write(tmp_path, INFEASIBLE))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: no feasible plan")
    assert "nearest fix" in lines[0]
    assert "Traceback" not in result.output


def test_infeasible_spec_json(tmp_path):
    result = invoke(write(tmp_path, INFEASIBLE), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["best"] is None
    assert report["feasible"] == 0
    assert isinstance(report["nearest_fix"], list) and report["nearest_fix"]
    assert all(isinstance(fix, str) and fix for fix in report["nearest_fix"])
    assert "no feasible plan" in result.stderr


# ------------------------------------------------------------------------- the real command

COMMANDS = {
    "python-m": [sys.executable, "-m", "pretrain.cli"],
    "console-script": [shutil.which("plan")],
}


@pytest.mark.parametrize("command", list(COMMANDS.values()), ids=list(COMMANDS))
def test_real_command(tmp_path, command):
    if command[0] is None:
        pytest.skip("the `plan` console script is not on PATH")
    ok = subprocess.run([*command, str(SPEC_7B), "--json"], capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["best"] is not None

    bad = subprocess.run([*command, str(_bad_spec(tmp_path, BAD[2][1]))], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr == "error: model.n_layer: unknown key; did you mean n_layers?\n"


def test_top_n_shows_n_plans_and_the_json_n_minus_one_alternatives():
    out = CliRunner().invoke(main, ["specs/7b_on_64xA100.yaml", "--top", "3"])
    table = out.stdout.split("top plans (seconds per step):")[1].split("\n\n")[0]
    rows = [line for line in table.splitlines()[3:] if line.strip()]
    assert [r.split()[0] for r in rows] == ["1", "2", "3", "memory"]  # and the columns' key
    report = json.loads(CliRunner().invoke(main, ["specs/7b_on_64xA100.yaml", "--top", "3",
                                                  "--json"]).stdout)
    assert len(report["alternatives"]) == 2


def test_the_header_says_what_set_changed():
    out = CliRunner().invoke(main, ["specs/7b_on_64xA100.yaml", "--set", "cluster.nodes=16"])
    assert out.stdout.splitlines()[0].endswith(
        "(llama2-7b on 64 x A100-80GB, with cluster.nodes=16)")
    assert "on 128 GPUs" in out.stdout


def test_one_gpu_is_not_plural():
    out = CliRunner().invoke(main, ["specs/1.1b_on_1xH200.yaml"])
    assert "on 1 GPU (ranks placed" in out.stdout


def test_execute_without_the_executor_packages_says_what_to_install(monkeypatch):
    import executor.run

    def missing(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'tokenizers'", name="tokenizers")
    monkeypatch.setattr(executor.run, "execute", missing)
    out = CliRunner().invoke(main, ["specs/tiny_cpu.yaml", "--execute"])
    assert out.exit_code == 1
    assert out.stderr.startswith("error: --execute needs the executor's packages (tokenizers is "
                                 "missing): pip install torch==2.13.0")
    assert "internal error" not in out.stderr
