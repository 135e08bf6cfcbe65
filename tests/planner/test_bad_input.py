"""Inputs that used to hang, pass silently or end in an internal error (issue 12): each now gets
one line naming the field, exit code 1, no traceback, in well under a second."""
import time

import pytest
from click.testing import CliRunner

from pretrain.cli import main

BASE = ("model: llama2-7b\n"
        "cluster: {gpu: A100, nodes: 8}\n"
        "training: {tokens: 2.0e12, global_batch_sequences: 1024}\n")


def run(tmp_path, text=None, raw=None, args=()):
    path = tmp_path / "spec.yaml"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(text)
    t0 = time.perf_counter()
    out = CliRunner().invoke(main, [str(path), *args])
    return out, time.perf_counter() - t0


@pytest.mark.parametrize("text, words", [
    (BASE.replace("nodes: 8", "nodes: 1.0e8"), "cluster.nodes: Input should be a valid integer"),
    (BASE.replace("nodes: 8", "nodes: 100000000"), "the planner searches clusters of up to"),
    (BASE.replace("nodes: 8", "nodes: 1, gpus_per_node: 100000000"),
     "cluster.gpus_per_node: Input should be less than or equal to 1024"),
    (BASE.replace("nodes: 8", "nodes: true"), "cluster.nodes: Input should be a valid integer"),
    (BASE.replace("nodes: 8", "nodes: 8.0"), "cluster.nodes: Input should be a valid integer"),
    (BASE.replace("nodes: 8", "nodes: '8'"), "cluster.nodes: Input should be a valid integer"),
    (BASE.replace("nodes: 8", "nodes: 8, nodes: 16"), "duplicate key 'nodes'"),
    (BASE.replace("tokens: 2.0e12", "tokens: .inf"), "training.tokens: inf is not a finite"),
    (BASE.replace("tokens: 2.0e12", "tokens: 1e400"), "training.tokens: inf is not a finite"),
    (BASE.replace("nodes: 8", "nodes: 8, host_memory_gib: .inf"),
     "cluster.host_memory_gib: inf is not a finite"),
    (BASE.replace("nodes: 8", "nodes: " + "9" * 400), "an integer of 400 digits"),
    (BASE + "search: {micro_batch: [" + ", ".join(str(i) for i in range(1, 3000)) + "]}\n",
     "search.micro_batch: 2,999 values; an axis lists at most 1,024"),
    ("model: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    (BASE.replace("tokens: 2.0e12", "tokens: chinchilla, scaling_law: {E: 1.7, A: 400, B: 400, "
                  "alpha: 9.0, beta: 0.001}"), "training.scaling_law: custom gives e^"),
], ids=["nodes-1e8-float", "nodes-1e8", "gpus-per-node-1e8", "bool", "float", "string",
        "duplicate-in-section", "inf", "1e400", "host-inf", "400-digits", "huge-axis",
        "deep-nesting", "law-overflow"])
def test_bad_input_gets_one_line_fast(tmp_path, text, words):
    out, seconds = run(tmp_path, text)
    assert out.exit_code == 1, out.output
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], out.stderr
    assert "Traceback" not in out.output and "internal error" not in out.stderr
    assert seconds < 5


@pytest.mark.parametrize("raw, words", [
    (b"model: llama2-7b\ncluster: {gpu: A100}\n\xff\xfe", "not UTF-8 text (byte 0xff"),
    ("model: llama2-7b\n".encode("utf-16"), "not UTF-8 text"),
], ids=["latin", "utf-16"])
def test_a_file_that_is_not_utf8_says_so(tmp_path, raw, words):
    out, _ = run(tmp_path, raw=raw)
    assert out.exit_code == 1 and words in out.stderr and "internal error" not in out.stderr


@pytest.mark.parametrize("sweep", ["cluster.nodes=", "cluster.nodes=4,,8"])
def test_a_sweep_with_an_empty_value_is_refused(tmp_path, sweep):
    out, _ = run(tmp_path, BASE, args=("--sweep", sweep))
    assert out.exit_code == 1 and "an empty value" in out.stderr
