"""Calibration from measured runs (planner/validate/calibrate.py, planner/spec/profile.py,
`plan calibrate`): constants recovered from runs a known profile generated, the profile applied
under what a spec writes, and leave-one-source-out on the published runs."""
import json
import math
from dataclasses import replace

import pytest
import yaml
from click.testing import CliRunner

from planner.estimate.timing import step_time
from planner.plan.strategy import Plan
from planner.spec.loading import load_spec, spec_from_dict
from planner.spec.profile import Profile, load_profile, save_profile, with_constants
from planner.spec.units import Precision, Recompute, ZeroStage
from planner.validate.calibrate import (MeasuredRun, calibrate, choose_constants, fit_constants,
                                        sensitivities)
from planner.validate.crossval import family, leave_one_source_out
from planner.validate.published import load_published
from pretrain.cli import main
from tests.conftest import published_path

TRUTH = {"gemm_max": 0.55, "cpu_op_us": 40.0}


def h100_spec(d_model: int, layers: int, seq: int = 2048):
    return spec_from_dict({
        "model": {"arch": "llama", "n_layers": layers, "d_model": d_model,
                  "n_heads": d_model // 128, "d_ff": 8 * d_model // 3 // 256 * 256 + 256,
                  "vocab_size": 32000, "seq_len": seq},
        "cluster": {"gpu": "H100", "nodes": 1, "gpus_per_node": 1},
        "training": {"tokens": 1e9, "global_batch_sequences": 8}})


def plan(mb: int = 4) -> Plan:
    return Plan(1, 1, 1, ZeroStage.OPTIMIZER, Precision.BF16, mb, 8 // mb, Recompute.NONE)


def synthetic_runs() -> list[MeasuredRun]:
    """Runs whose 'measured' step time is the model's own under TRUTH: a tiny model (host-bound)
    and large ones (GEMM-bound), so the two constants can be told apart."""
    runs = []
    for name, (d, layers, mb) in {"tiny": (256, 2, 1), "mid": (2048, 8, 4),
                                  "big": (4096, 16, 8)}.items():
        spec = h100_spec(d, layers)
        t = float(step_time(with_constants(spec, TRUTH), plan(mb)).total)
        runs.append(MeasuredRun(name, spec, plan(mb), t, source="synthetic"))
    return runs


def test_the_runs_choose_the_constants_they_can_see_and_the_fit_recovers_them():
    runs = synthetic_runs()
    result = calibrate(runs, max_constants=2)
    assert set(result.fitted) == set(TRUTH)
    for name, value in TRUTH.items():
        assert result.profile.constants[name] == pytest.approx(value, rel=0.02)
    assert result.profile.residual_before > 0.1 and result.profile.residual_after < 0.005
    assert result.profile.gpu == "H100-SXM" and result.profile.runs == 3


def test_a_prior_weighs_about_one_run_not_more_than_the_runs():
    """The cross-validation's prior (sigma 0.3 in log) pulls like one run 10 % off: runs
    that agree on gemm_max 0.55 win over a prior of 0.81 (two runs whose times move 0.6-0.7x as
    much as gemm_max leave a quarter of the pull at most; weighted as plain squares of their log
    residuals they would leave nine tenths of it), while a constant no run can see stays at its
    prior."""
    runs = synthetic_runs()[1:]  # the GEMM-bound two, host cost at its TRUTH value
    runs = [replace(r, spec=with_constants(r.spec, {"cpu_op_us": TRUTH["cpu_op_us"]}))
            for r in runs]
    prior = {"gemm_max": 0.81, "network": 0.85}
    fitted = fit_constants(runs, ("gemm_max", "network"), dict(prior), prior=prior,
                           prior_sigma=0.3)
    gap = math.log(prior["gemm_max"] / TRUTH["gemm_max"])
    assert 0 <= math.log(fitted["gemm_max"] / TRUTH["gemm_max"]) < 0.25 * gap
    assert fitted["network"] == pytest.approx(0.85, rel=1e-6)  # one GPU: no traffic to see


def test_a_constant_no_run_is_sensitive_to_is_never_chosen():
    runs = synthetic_runs()
    names = ("gemm_max", "network", "host_adam_params_per_s")
    chosen = choose_constants(sensitivities(runs, names), names, 3)
    assert chosen == ["gemm_max"]  # one GPU, no offload: no traffic, no host Adam


def test_fragmentation_is_the_median_reserved_over_allocated():
    base = synthetic_runs()[0]
    runs = [replace(base, name=f"m{i}", step_s=None, peak_alloc_bytes=10.0,
                    peak_reserved_bytes=10.0 * (1 + f)) for i, f in enumerate((0.05, 0.1, 0.3))]
    result = calibrate(runs)
    assert result.profile.constants == {"allocator_fragmentation": pytest.approx(0.1)}


def test_runs_of_several_gpus_are_refused():
    a = synthetic_runs()[0]
    b = replace(a, spec=spec_from_dict({**a.spec.model_dump(mode="json"),
                                        "cluster": {"gpu": "A100", "nodes": 1,
                                                    "gpus_per_node": 1}}))
    with pytest.raises(ValueError, match="several GPUs"):
        calibrate([a, b])


def test_a_spec_applies_its_profile_under_its_own_values(tmp_path):
    save_profile(Profile({"gemm_max": 0.5, "cpu_op_us": 40.0}, gpu="H100-SXM", runs=3,
                         residual_before=0.3, residual_after=0.01), tmp_path / "prof.yaml")
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump({
        "model": "llama2-7b", "cluster": {"gpu": {"name": "H100", "efficiency": {"gemm_max": 0.6}},
                                          "profile": "prof.yaml"},
        "training": {"tokens": 1e9, "global_batch_sequences": 8}}))
    spec = load_spec(spec_file)
    assert spec.cluster.gpu.efficiency.gemm_max == 0.6  # the spec's own value wins
    assert spec.runtime.cpu_op_us == 40.0
    assert spec.cluster.profile.kept == ("gemm_max",)
    assert spec.cluster.profile.constants == {"cpu_op_us": 40.0}
    out = CliRunner().invoke(main, [str(spec_file)])
    assert out.exit_code == 0, out.output
    assert (f"profile  {tmp_path / 'prof.yaml'}: cpu_op_us 40 from 3 measured run(s) (rms log "
            f"residual 0.010 on its runs, in-sample); the spec's own gemm_max kept over the "
            f"profile's") in out.stdout
    report = json.loads(CliRunner().invoke(main, [str(spec_file), "--json"]).stdout)
    assert report["cluster"]["profile"]["kept"] == ["gemm_max"]


@pytest.mark.parametrize("content, words", [
    ("constants: {gemm_max: 2.0}", "gemm_max = 2.0 is outside [0.05, 1]"),
    ("constants: {warp_speed: 9}", "unknown constants ['warp_speed']"),
    ("[1, 2", "invalid YAML"),
], ids=["out-of-range", "unknown", "bad-yaml"])
def test_a_bad_profile_names_its_field(tmp_path, content, words):
    (tmp_path / "p.yaml").write_text(content)
    spec = tmp_path / "s.yaml"
    spec.write_text("model: llama2-7b\ncluster: {gpu: H100, profile: p.yaml}\n"
                    "training: {tokens: 1.0e9, global_batch_sequences: 8}\n")
    out = CliRunner().invoke(main, [str(spec)])
    assert out.exit_code == 1
    assert out.stderr.startswith("error: cluster.profile: ") and words in out.stderr
    assert "Traceback" not in out.output


def test_plan_calibrate_writes_a_profile_from_calibration_rows(tmp_path, root):
    from tests.conftest import calibration_path
    out_file = tmp_path / "h200.yaml"
    out = CliRunner().invoke(main, ["calibrate", str(calibration_path()), "-o", str(out_file)])
    assert out.exit_code == 0, out.output
    profile = load_profile(out_file)
    assert profile.gpu == "H200" and profile.runs >= 10
    assert profile.residual_after <= profile.residual_before
    assert 0.1 < profile.constants["allocator_fragmentation"] < 0.3
    assert "rms log error of the step time: before" in out.stdout
    bad = CliRunner().invoke(main, ["calibrate", str(calibration_path()), "--constants",
                                    "warp_speed"])
    assert bad.exit_code == 1 and "unknown or not a step-time constant" in bad.stderr


def test_plan_spec_still_works_beside_the_calibrate_subcommand():
    out = CliRunner().invoke(main, ["specs/7b_on_64xA100.yaml", "--top", "1"])
    assert out.exit_code == 0 and "best plan" in out.stdout
    assert CliRunner().invoke(main, ["--schema"]).exit_code == 0
    assert "calibrate" in CliRunner().invoke(main, ["--help"]).stdout


def test_leave_one_source_out_never_sees_the_held_source():
    """Changing a source's measured numbers changes nothing about its own CV prediction."""
    runs = load_published(published_path())
    before = {p.id: p.out_of_sample for p in leave_one_source_out(runs)}
    source = "Narayanan et al. 2021"
    scaled = [replace(r, tokens_per_s_per_gpu=r.tokens_per_s_per_gpu * 3)
              if r.source == source else r for r in runs]
    after = {p.id: p.out_of_sample for p in leave_one_source_out(scaled)}
    for r in runs:
        if r.source == source:
            assert after[r.id] == pytest.approx(before[r.id], rel=1e-9)
    # the other A100 sources' predictions did move: they were refitted on the changed runs
    assert any(not math.isclose(after[r.id], before[r.id], rel_tol=1e-6) for r in runs
               if r.source != source and r.spec.cluster.gpu.name.startswith("A100"))


def test_extra_runs_of_the_held_publisher_never_reach_its_prediction():
    """A pooled run from another sample whose publisher is the held-out source's (another
    llm-foundry page) is left out with it; one from another publisher joins the refit."""
    runs = [r for r in load_published(published_path())  # one source's H100 runs: a quick CV
            if "llm-foundry" in r.source and r.spec.cluster.gpu.name.startswith("H100")]
    held = runs[0]
    assert family("llm-foundry-bench") == family(held.source) == "llm-foundry"
    assert family("torchtitan-2412") == family("torchtitan docs/performance.md")
    twin = replace(held, id="twin", source="llm-foundry-bench",
                   tokens_per_s_per_gpu=held.tokens_per_s_per_gpu * 3)
    other = replace(twin, id="other", source="some other lab")
    base = {p.id: p.out_of_sample for p in leave_one_source_out(runs)}
    same = {p.id: p.out_of_sample for p in leave_one_source_out(runs, extra=[twin])}
    moved = {p.id: p.out_of_sample for p in leave_one_source_out(runs, extra=[other])}
    assert same[held.id] == pytest.approx(base[held.id], rel=1e-9)
    assert not math.isclose(moved[held.id], base[held.id], rel_tol=1e-6)
    assert "twin" not in same and "other" not in moved  # pooled runs are not predicted


def test_a_profile_of_the_same_gpu_name_with_other_stated_peaks_is_refused(tmp_path):
    """Efficiencies are fractions of the peaks the runs' spec stated: a spec that states other
    peaks for a GPU of the same name would apply them to the wrong base."""
    cpu = {"name": "cpu", "memory_gib": 8, "peak_tflops": {"fp32": 0.333}, "hbm_gbps": 20,
           "intra_node_gbps": 10, "accelerator": "cpu"}
    spec = spec_from_dict({"model": "tiny-gpt", "cluster": {"gpu": cpu, "gpus_per_node": 1},
                           "training": {"tokens": 1e6, "global_batch_sequences": 8}})
    run = MeasuredRun("a", spec, Plan(1, 1, 1, ZeroStage.NONE, Precision.FP32, 8, 1,
                                      Recompute.NONE), 0.05)
    save_profile(calibrate([run]).profile, tmp_path / "cpu.yaml")
    same = {**cpu}
    other = {**cpu, "peak_tflops": {"fp32": 0.2}}
    for gpu, ok in ((same, True), (other, False)):
        data = {"model": "tiny-gpt", "cluster": {"gpu": gpu, "gpus_per_node": 1,
                                                 "profile": str(tmp_path / "cpu.yaml")},
                "training": {"tokens": 1e6, "global_batch_sequences": 8}}
        if ok:
            assert spec_from_dict(data).cluster.profile.runs == 1
        else:
            with pytest.raises(Exception, match="fractions of other peaks"):
                spec_from_dict(data)
