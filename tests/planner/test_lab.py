"""The scaling-law lab's IsoFLOP grid (planner/capacity/lab.py): budget, levels, sizes around the
law's optimum, tokens = C / 6N, and the plan and predicted time of every point."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from planner.capacity.lab import lab_grid
from planner.capacity.scaling import law_of
from planner.errors import SpecError
from planner.spec.loading import spec_from_dict
from pretrain.cli import main


def lab_spec(**lab):
    return spec_from_dict({
        "model": {"preset": "llama2-7b", "seq_len": 2048},
        "cluster": {"gpu": "H100", "nodes": 1, "gpus_per_node": 8},
        "training": {"global_batch_tokens": 524288, "lab": lab}})


def test_flops_budget_lays_out_an_isoflop_grid():
    spec = lab_spec(flops=1e21, levels=3, level_ratio=4, sizes=5, spread=4)
    grid = lab_grid(spec)
    law = law_of(spec)
    assert grid.flops == pytest.approx(1e21, rel=1e-9)
    levels = sorted({p.flops for p in grid.points})
    assert len(levels) == 3 and levels[1] / levels[0] == pytest.approx(4)
    for c in levels:
        points = [p for p in grid.points if p.flops == c]
        sizes = [p.params for p in points]
        assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes) >= 3
        assert min(sizes) < law.optimal_params(c) < max(sizes)  # the minimum is bracketed
        for p in points:
            assert p.tokens == pytest.approx(c / 6 / p.params)
            assert p.steps == np.ceil(p.tokens / (256 * 2048)) and p.best is not None


def test_hours_budget_matches_the_predicted_time():
    grid = lab_grid(lab_spec(hours=24))
    assert grid.seconds / 3600 == pytest.approx(24, rel=0.02)


@pytest.mark.parametrize("training, path", [
    ({"lab": {"flops": 1e20, "hours": 3}}, "training.lab.flops"),
    ({"lab": {"levels": 3}}, "training.lab.flops"),
    ({"lab": {"flops": 1e20}, "tokens": 1e9}, "training.lab"),
    ({"lab": {"flops": 1e20, "sizes": 2}}, "training.lab.sizes"),
], ids=["both-budgets", "no-budget", "lab-and-tokens", "too-few-sizes"])
def test_bad_lab_names_its_field(training, path):
    with pytest.raises(SpecError) as info:
        spec_from_dict({"model": "llama2-7b", "cluster": {"gpu": "H100"},
                        "training": {"global_batch_sequences": 8, **training}})
    assert info.value.path == path


def test_plan_prints_the_grid_and_dry_run_says_what_execute_trains(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text("model: {preset: llama2-7b, seq_len: 2048}\n"
                    "cluster: {gpu: H100, nodes: 1, gpus_per_node: 8}\n"
                    "training: {global_batch_tokens: 524288, lab: {flops: 1.0e21}}\n")
    out = CliRunner().invoke(main, [str(path)])
    assert out.exit_code == 0, out.output
    assert "scaling-law lab" in out.stdout and "15 runs, 1e+21 FLOPs" in out.stdout
    assert "peak lr" in out.stdout and "warmup 10% of each point's steps" in out.stdout
    report = json.loads(CliRunner().invoke(main, [str(path), "--json"]).stdout)
    assert report["mode"] == "lab" and len(report["points"]) == 15
    assert all(p["peak_lr"] == pytest.approx(6e-4 * 768 / p["d_model"]) for p in report["points"])
    run_dir = tmp_path / "lab"
    dry = CliRunner().invoke(main, [str(path), "--execute", "--dry-run", "--run-dir", str(run_dir)])
    assert dry.exit_code == 0, dry.output
    assert f"--execute would train these 15 points in {run_dir}/points/" in dry.stdout
    assert not run_dir.exists()  # a dry run writes nothing
    cut = CliRunner().invoke(main, [str(path), "--execute", "--max-steps", "3"])
    assert cut.exit_code == 1 and "--max-steps: the lab trains every point" in cut.stderr
