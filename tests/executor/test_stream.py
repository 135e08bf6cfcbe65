"""What the parent shows while the ranks are silent: on a first launch DeepSpeed JIT-builds its
ops (about a minute on a 2-core machine) before any rank prints, so `plan --execute` says so: a
spinner on a terminal, one plain line in a log or a pipe, and nothing when the ops are built."""
from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import pytest

from executor.ds_config import to_deepspeed_config
from executor.launch import extensions_root, jit_ops, ops_to_build
from executor.run import (COMPILE_NOTICE, Notice, RankOutput, compile_notice, make_options,
                          prepare_run_dir, stream)
from executor.rundir import RunDir
from planner.plan.strategy import Plan
from planner.spec.loading import spec_from_dict
from planner.spec.spec import Spec
from planner.spec.units import Offload, Precision, Recompute, ZeroStage

CPU = {"name": "cpu", "memory_gib": 8, "peak_tflops": {"fp32": 0.2}, "hbm_gbps": 20,
       "intra_node_link": "pcie", "intra_node_gbps": 10, "accelerator": "cpu"}
PLAN = Plan(2, 1, 1, ZeroStage.GRADIENTS, Precision.FP32, 2, 2, Recompute.NONE, Offload.NONE)


def spec(gpu=CPU, **runtime) -> Spec:
    return spec_from_dict({
        "model": {"arch": "gpt2", "n_layers": 2, "d_model": 64, "n_heads": 4, "vocab_size": 512,
                  "seq_len": 64},
        "cluster": {"gpu": gpu, "nodes": 1, "gpus_per_node": 2},
        "training": {"tokens": 40 * 8 * 64, "global_batch_sequences": 8},
        "runtime": runtime})


class Terminal(io.StringIO):
    """What a notice writes to when stderr is a terminal."""

    def isatty(self) -> bool:
        return True


def screen(text: str) -> list[str]:
    """The lines a terminal shows for ``text``: a carriage return goes back to the line's start
    and what follows overwrites it."""
    lines = []
    for raw in text.split("\n"):
        line = ""
        for i, part in enumerate(raw.split("\r")):
            line = part + line[len(part):] if i else part
        lines.append(line.rstrip())
    return lines


# --------------------------------------------------------------------------------- the notice

def test_not_a_terminal_gets_the_notice_once_and_no_spinner():
    out = io.StringIO()
    notice = Notice(COMPILE_NOTICE, out, interval_s=0.01)
    notice.start()
    time.sleep(0.05)
    notice.write("a line from the ranks\n")
    notice.stop()
    assert out.getvalue() == f"{COMPILE_NOTICE}\na line from the ranks\n"


def test_a_terminal_gets_a_spinner_that_clears_itself():
    """Frames redrawn in place with the seconds spent; a line written meanwhile lands on a line
    of its own, whole; once stopped the spinner's line is blank."""
    out = Terminal()
    notice = Notice(COMPILE_NOTICE, out, interval_s=0.005)
    notice.start()
    time.sleep(0.1)
    notice.write("note: something\n")
    time.sleep(0.05)
    notice.stop()
    text = out.getvalue()
    frames = {text[i + 1] for i in range(len(text) - 1)
              if text[i] == "\r" and text[i + 2:].startswith(f" {COMPILE_NOTICE} ")}
    assert len(frames) >= 2 and frames <= set(Notice.FRAMES)
    assert screen(text) == ["note: something", ""]
    assert f"{COMPILE_NOTICE} 0 s" in text
    written = len(text)
    time.sleep(0.05)
    assert len(out.getvalue()) == written  # no frame after stop


def test_the_notice_lasts_until_training_starts():
    """RankOutput fed the ranks' lines: DeepSpeed's build chatter (echoed with --verbose) and a
    note go above the spinner; the @start event ends it and the bar takes its line."""
    out = Terminal()
    notice = Notice(COMPILE_NOTICE, out, interval_s=0.005)
    shown = RankOutput(verbose=True, notice=notice)
    real_stderr, sys.stderr = sys.stderr, out
    try:
        time.sleep(0.03)
        shown.feed("Building extension module deepspeed_shm_comm...\n")
        shown.feed('@note {"message": "falling back"}\n')
        time.sleep(0.03)
        assert notice._thread is not None and notice._thread.is_alive()
        shown.feed('@start {"run_dir": "/runs/r", "step": 0, "last_step": 4}\n')
        assert shown.notice is None and notice._thread is None
        spun = out.getvalue()
        time.sleep(0.03)
        assert out.getvalue() == spun
    finally:
        shown.close()
        sys.stderr = real_stderr
    lines = screen(spun)  # the lines above, then the bar where the spinner was
    assert lines[:2] == ["Building extension module deepspeed_shm_comm...", "note: falling back"]
    assert lines[2].startswith("r:   0%") and len(lines) == 3


def fake_launch(lines: list[str]) -> list[str]:
    """A launcher that is silent for a moment, then prints ``lines`` and exits 0."""
    code = f"import time; time.sleep(0.3); print({''.join(lines)!r}, end='')"
    return [sys.executable, "-c", code]


@pytest.mark.parametrize("built", [False, True], ids=["first-launch", "ops-built"])
def test_stream_says_so_only_when_ops_will_be_built(tmp_path, capsys, built):
    """stream() over a run directory of a CPU plan: with an empty extensions folder the notice
    comes once, as a plain line (pytest's stderr is no terminal); with the ops in it, none."""
    s = spec()
    run = prepare_run_dir(s, PLAN, tmp_path / "run", make_options(s, PLAN), with_data=False)
    extensions = tmp_path / "extensions"
    for op in jit_ops(json.loads(run.ds_config.read_text()), "cpu") if built else []:
        (extensions / op).mkdir(parents=True)
        (extensions / op / f"{op}.so").write_bytes(b"")
    start = json.dumps({"run_dir": str(run.path), "step": 0, "last_step": 1})
    rc = stream(fake_launch([f"@start {start}\n"]), {"TORCH_EXTENSIONS_DIR": str(extensions)},
                run)
    err = capsys.readouterr().err
    assert rc == 0
    assert err.count(COMPILE_NOTICE) == (0 if built else 1)
    assert "\r|" not in err and f"\r/ {COMPILE_NOTICE}" not in err


# ------------------------------------------------------------------------ which ops, and where

@pytest.mark.parametrize("runtime,gpu,ops", [
    ({}, CPU, ["deepspeed_shm_comm", "fused_adam"]),
    ({"torch_adam": True}, CPU, ["deepspeed_shm_comm"]),
    ({}, "H100-SXM", ["fused_adam"]),
], ids=["cpu-fused-adam", "cpu-torch-adam", "gpu"])
def test_the_ops_a_plan_builds(runtime, gpu, ops):
    """The shared-memory all-reduce on the CPU accelerator only; FusedAdam unless torch_adam."""
    s = spec(gpu, **runtime)
    assert jit_ops(to_deepspeed_config(s, PLAN), s.cluster.gpu.accelerator) == ops


def test_optimizer_offload_builds_cpu_adam():
    s = spec()
    offloaded = Plan(2, 1, 1, ZeroStage.GRADIENTS, Precision.FP32, 2, 2, Recompute.NONE,
                     Offload.OPTIMIZER_CPU)
    assert jit_ops(to_deepspeed_config(s, offloaded), "cpu") == ["deepspeed_shm_comm",
                                                                  "cpu_adam"]


def test_the_extensions_folder_is_torchs(tmp_path, monkeypatch):
    """Without $TORCH_EXTENSIONS_DIR, the folder torch itself builds in (its private
    _get_build_directory, asked for the parent of one op's folder)."""
    from torch.utils.cpp_extension import _get_build_directory
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert extensions_root({}) == Path(_get_build_directory("fused_adam", False)).parent
    assert str(extensions_root({})).startswith(str(tmp_path))
    assert extensions_root({"TORCH_EXTENSIONS_DIR": "/x"}) == Path("/x")


def test_no_notice_for_a_run_directory_without_a_plan(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    assert compile_notice(run, {"TORCH_EXTENSIONS_DIR": str(tmp_path / "empty")}) is None
    s = spec()
    planned = prepare_run_dir(s, PLAN, tmp_path / "planned", make_options(s, PLAN),
                              with_data=False)
    assert compile_notice(planned, {"TORCH_EXTENSIONS_DIR": str(tmp_path / "empty")}) is not None
    assert ops_to_build(json.loads(planned.ds_config.read_text()), "cpu",
                        {"TORCH_EXTENSIONS_DIR": str(tmp_path / "empty")}) == [
        "deepspeed_shm_comm", "fused_adam"]
