"""Property: what `plan --execute` picks, the executor accepts.  For a seeded sample of at least
200 random specs with a feasible executable plan (models of both block families, every catalog
GPU, 1-16 nodes of 1-8 GPUs, random pins of the search axes), the plan the executable search
ranks first

- passes the executor's own pre-launch plan check (executor.run.plan_problem: the backend's rules
  and its executor's, applied one plan at a time, where the search applied them as batch masks);
- becomes a DeepSpeed config that DeepSpeed's own parser accepts and reads back as the plan;
- is the plan the plain search names as what --execute would run (the mark and the filter agree);
- gets a launch for the spec's cluster (torchrun, or an sbatch script for several nodes).

The shipped large specs are checked the same way with every axis open (70B on 512 H100s with
tp and pp free picks a 3-D layout, which the executor now runs).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from pathlib import Path  # noqa: E402

from executor.ds_config import to_deepspeed_config  # noqa: E402
from executor.launch import launch_command  # noqa: E402
from executor.run import plan_problem  # noqa: E402
from planner.errors import SpecError  # noqa: E402
from planner.search.engine import search  # noqa: E402
from planner.spec.catalog import gpu_catalog  # noqa: E402
from planner.spec.loading import load_spec, spec_from_dict  # noqa: E402

from .test_ds_config import check_round_trip, parse  # noqa: E402

SAMPLE = 200
MAX_TRIES = 3000


def random_spec(rng: np.random.Generator):
    """One spec; None when the drawn combination is not a valid spec."""
    llama = bool(rng.integers(2))
    heads = int(rng.choice([4, 8, 12, 16, 32]))
    head_dim = int(rng.choice([32, 64, 128]))
    d = heads * head_dim
    model = {"arch": "llama" if llama else "gpt2", "n_layers": int(rng.integers(2, 33)),
             "d_model": d, "n_heads": heads, "vocab_size": int(rng.choice([512, 32000, 50257])),
             "seq_len": int(rng.choice([256, 1024, 2048, 4096])),
             "attention": str(rng.choice(["flash", "eager"]))}
    if llama:
        model["n_kv_heads"] = int(rng.choice([k for k in (1, 2, 4, heads) if heads % k == 0]))
        model["d_ff"] = int(-(-8 * d // 3 // 64) * 64)
    search_ = {}
    for axis, values in (("zero", [[0], [1], [2], [3], [1, 3]]), ("pp", [[1], [2], [4]]),
                         ("tp", [[1], [2], [4]]), ("recompute", [["none"], ["full"]])):
        if rng.random() < 0.3:
            search_[axis] = values[int(rng.integers(len(values)))]
    if rng.random() < 0.5:
        search_["sequence_parallel"] = "auto"
    if rng.random() < 0.3:
        search_["offload"] = "auto"
    data = {"model": model,
            "cluster": {"gpu": str(rng.choice(list(gpu_catalog()))),
                        "nodes": int(rng.choice([1, 2, 4, 16])),
                        "gpus_per_node": int(rng.choice([1, 2, 4, 8]))},
            "training": {"tokens": 1e9, "global_batch_sequences": int(rng.choice([16, 64, 256])),
                         "optimizer": str(rng.choice(["adamw", "adamw", "sgd"]))},
            "search": search_}
    try:
        return spec_from_dict(data)
    except SpecError:
        return None


def test_what_execute_picks_passes_the_executors_checks(monkeypatch):
    rng = np.random.default_rng(2026)
    checked, layouts = 0, set()
    for _ in range(MAX_TRIES):
        spec = random_spec(rng)
        if spec is None:
            continue
        result = search(spec, executable=True)
        if result.best is None:
            continue
        pick = result.best.plan
        assert plan_problem(spec, pick) is None, (spec.model_dump(), pick.label)
        cfg = to_deepspeed_config(spec, pick, nvme_path="/tmp/nvme")
        check_round_trip(spec, pick, cfg, parse(cfg, pick, monkeypatch))
        plain = search(spec).best_executable
        assert plain is not None and plain.plan == pick, (pick.label, plain)
        launch_command(spec, pick, [Path("runs/pick")])  # no ExecutorError
        layouts.add((pick.tp > 1, pick.pp > 1, pick.dp > 1, int(pick.zero)))
        checked += 1
        if checked == SAMPLE:
            break
    assert checked == SAMPLE, f"only {checked} feasible specs in {MAX_TRIES} draws"
    # the sample exercises tensor, pipeline and data parallelism and several ZeRO stages
    assert any(tp for tp, _, _, _ in layouts) and any(pp for _, pp, _, _ in layouts)
    assert len({z for *_, z in layouts}) >= 3


@pytest.mark.parametrize("path", ["specs/70b_on_512xH100.yaml", "specs/7b_on_64xA100.yaml",
                                  "bench/specs/1t_on_4096xH100.yaml"])
def test_shipped_large_specs_pick_a_plan_the_executor_runs(path, root, monkeypatch):
    spec = load_spec(root / path)
    opened = spec.model_copy(update={"search": spec.search.model_copy(
        update={"tp": "auto", "pp": "auto", "zero": "auto"})})
    for s in (spec, opened):
        check_pick(s, monkeypatch)


def check_pick(spec, monkeypatch):
    pick = search(spec, executable=True).best.plan
    assert plan_problem(spec, pick) is None
    cfg = to_deepspeed_config(spec, pick, nvme_path="/tmp/nvme")
    check_round_trip(spec, pick, cfg, parse(cfg, pick, monkeypatch))
    assert launch_command(spec, pick, [Path("runs/x")]).sbatch is not None
    return pick


def test_70b_with_zero1_and_pp4_runs_in_3d(root, monkeypatch):
    """The case that used to be ranked and then refused at launch (AutoTP with a pipeline):
    Llama-2-70B on 512 H100s with ZeRO-1 and four pipeline stages now picks a 3-D layout:
    dp64·tp2·pp4, which is tight (13 % faster than the comfortable dp32·tp4·pp4)."""
    spec = load_spec(root / "specs" / "70b_on_512xH100.yaml")
    pinned = spec.model_copy(update={"search": spec.search.model_copy(
        update={"zero": (1,), "pp": (4,)})})
    pick = check_pick(pinned, monkeypatch)
    assert (pick.dp, pick.tp, pick.pp) == (64, 2, 4)
    assert search(pinned).best.plan == pick  # nothing marked: the plain best plan runs
