"""runtime.attention_kernel flash1: the first FlashAttention generation (flash-attn 1.x, or the
Triton port MPT's attn_impl triton ran), priced at the GPU's attention_flash1_fwd/bwd; refused
where no efficiency for it is known, and by --execute; the published llm-foundry rows mapped to
the kernel their benchmark scripts ran."""
import pytest

from planner.errors import SpecError
from planner.estimate.timing import attention_seconds
from planner.plan.strategy import Plan
from planner.spec.loading import spec_from_dict
from planner.spec.units import Offload, Precision, Recompute, ZeroStage
from planner.validate.published import load_published

from ..conftest import invoke, llama7b_spec_file, published_path


def _data(gpu="H100-SXM", **runtime):
    return {"model": {"preset": "llama2-7b", "seq_len": 8192},
            "cluster": {"gpu": gpu, "nodes": 1, "gpus_per_node": 8},
            "training": {"tokens": 1e12, "global_batch_sequences": 512}, "runtime": runtime}


def _plan(zero=ZeroStage.GRADIENTS):
    return Plan(dp=8, tp=1, pp=1, zero=zero, precision=Precision.BF16, micro_batch=1,
                grad_accum=64, recompute=Recompute.NONE, offload=Offload.NONE)


@pytest.mark.parametrize("gpu", ["H100-SXM", "A100-80GB-SXM"])
def test_flash1_prices_attention_at_the_first_generations_efficiency(gpu):
    flash1 = spec_from_dict(_data(gpu, attention_kernel="flash1"))
    eff = flash1.cluster.gpu.efficiency
    f1 = attention_seconds(flash1, _plan())
    f2 = attention_seconds(spec_from_dict(_data(gpu)), _plan())
    assert f1[0] / f2[0] == pytest.approx(eff.attention_fwd / eff.attention_flash1_fwd)
    assert f1[1] / f2[1] == pytest.approx(eff.attention_bwd / eff.attention_flash1_bwd)
    # the published speeds: the first generation is less than half as fast as the second
    assert f1[0] + f1[1] > 1.5 * (f2[0] + f2[1])


def test_flash1_where_no_efficiency_is_known_is_refused_naming_the_field():
    with pytest.raises(SpecError, match=r"runtime.attention_kernel: flash1 has no measured "
                                        r"efficiency on the L40S \(set cluster.gpu.efficiency."
                                        r"attention_flash1_fwd"):
        spec_from_dict(_data("L40S", attention_kernel="flash1"))
    # stated in the spec, it is priced
    data = _data("L40S", attention_kernel="flash1")
    data["cluster"]["gpu"] = {"name": "L40S", "efficiency": {"attention_flash1_fwd": 0.2,
                                                            "attention_flash1_bwd": 0.2}}
    s = spec_from_dict(data)
    assert s.cluster.gpu.efficiency.attention_flash1_fwd == 0.2
    assert attention_seconds(s, _plan())[0] > 0


def test_cli_refuses_an_unmeasured_flash1_in_one_line(tmp_path):
    f = tmp_path / "b200.yaml"
    f.write_text("model: {preset: llama2-7b}\ncluster: {gpu: L40S, nodes: 1, gpus_per_node: 8}\n"
                 "training: {tokens: 1.0e12, global_batch_sequences: 512}\n"
                 "runtime: {attention_kernel: flash1}\n")
    out = invoke(f)
    assert out.exit_code == 1 and len(out.stderr.strip().splitlines()) == 1
    assert "attention_flash1_fwd" in out.stderr and "Traceback" not in out.stderr


def test_execute_refuses_flash1(tmp_path):
    """The executor runs PyTorch's SDPA, not the first generation's kernels."""
    from planner.backends.deepspeed import DEEPSPEED
    from planner.search.rules import check
    f = llama7b_spec_file(tmp_path / "flash1.yaml", "{attention_kernel: flash1}")
    out = invoke(f, "--execute", "--dry-run")
    assert out.exit_code == 1 and len(out.stderr.strip().splitlines()) == 1
    assert "runtime.attention_kernel flash1 prices first-generation FlashAttention" in out.stderr
    s = spec_from_dict(_data(attention_kernel="flash1"))
    refused = check(s, _plan(), DEEPSPEED, executable=True)
    assert refused is not None and "runtime.attention_kernel flash1" in refused.reason
    assert check(s, _plan(), DEEPSPEED, executable=False) is None
    assert invoke(llama7b_spec_file(tmp_path / "plan.yaml", "{attention_kernel: flash1}")
                  ).exit_code == 0


def test_llm_foundry_rows_take_the_kernel_their_scripts_ran():
    """October 2023 tables: attn_impl triton (submit_benchmarks.py's default); January 2024
    large-scale section: --attn_impl flash for 1B/3B/7B/70B, triton for 13B/30B (sweep.py);
    every other source its backend's default."""
    kernels = {r.id: r.spec.runtime.attention_impl for r in load_published(published_path())}
    assert kernels["llmfoundry-mpt7b-h100-bf16-large-s2048-g512"] == "flash2"
    assert kernels["llmfoundry-mpt3b-h100-bf16-large-s2048-g128"] == "flash2"
    assert kernels["llmfoundry-mpt30b-h100-bf16-large-s2048-g128"] == "flash1"
    assert kernels["llmfoundry-mpt7b-h100-bf16-s2048-g8"] == "flash1"
    assert kernels["llmfoundry-mpt3b-a10040gb-s2048-g8"] == "flash1"
    assert kernels["tinyllama-1.1b-16xa100-40gb"] == "flash2"


def test_llm_foundrys_long_runs_held_out_are_priced_at_the_kernel_they_ran():
    """Held out, llm-foundry's MPT-1B and MPT-3B at 32,768 tokens were +70 % and +59 % while
    priced as FlashAttention-2; at the first generation's published speed they are within 25 %
    (`python bench/published_runs.py --cv --extra`)."""
    import sys

    from planner.validate.crossval import leave_one_source_out
    from tests.conftest import ROOT
    sys.path.insert(0, str(ROOT / "bench"))
    import published_runs as bench
    extra = bench.extra_runs()
    back = {p.id: p for p in leave_one_source_out(extra, extra=load_published(published_path()))}
    for rid in ("llmf-mpt3b-h100-8gpu-s32768-bf16", "llmf-mpt1b-h100-8gpu-s32768-bf16"):
        assert abs(back[rid].error_out) <= 0.25, (rid, back[rid].error_out)
        assert abs(back[rid].error_in) <= 0.10, (rid, back[rid].error_in)


def test_calibrate_fits_only_constants_the_gpu_has_a_value_for():
    """A GPU without the first generation's efficiency (here a custom CPU entry) is calibrated
    without it, and asking for it by name says why in one message."""
    from planner.validate.calibrate import MeasuredRun, calibrate
    cpu = {"name": "cpu", "memory_gib": 16, "peak_tflops": {"fp32": 0.2}, "hbm_gbps": 10,
           "intra_node_gbps": 10, "accelerator": "cpu"}
    spec = spec_from_dict({"model": "tiny-gpt", "cluster": {"gpu": cpu, "gpus_per_node": 1},
                           "training": {"tokens": 1e6, "global_batch_sequences": 8}})
    plan = Plan(1, 1, 1, ZeroStage.NONE, Precision.FP32, 8, 1, Recompute.NONE)
    runs = [MeasuredRun("a", spec, plan, 0.05), MeasuredRun("b", spec, plan, 0.06)]
    assert "attention_flash1_fwd" not in calibrate(runs).profile.constants
    with pytest.raises(ValueError, match=r"constants: \['attention_flash1_fwd'\] have no value "
                                         r"on the cpu"):
        calibrate(runs, constants=["attention_flash1_fwd"])
