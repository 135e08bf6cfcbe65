"""The step-time model against published multi-GPU runs (shared/calibration/
published_runs_sample.yaml): tokens/s per GPU within 10 % median and 25 % worst (issue 3), and
every run that really ran must fit in memory by the planner's account."""
import statistics

import pytest

from planner.estimate.predict import estimate
from planner.estimate.timing import throughput
from planner.validate.published import error, load_published

from ..conftest import published_path

RUNS = load_published(published_path())


def test_sample_has_runs():
    assert len(RUNS) >= 20


@pytest.mark.parametrize("run", RUNS, ids=[r.id for r in RUNS])
def test_throughput_within_25_percent(run):
    t = throughput(run.spec, run.plan)
    assert abs(error(run, t.tokens_per_s / run.plan.world_size)) <= 0.25


def test_median_error_within_10_percent():
    errors = [abs(error(r, throughput(r.spec, r.plan).tokens_per_s / r.plan.world_size))
              for r in RUNS]
    assert statistics.median(errors) <= 0.10


# runs whose memory relied on something the planner does not model
ACTIVATION_OFFLOAD = {"deepspeed-azure-zero3-1t-1024gpu-s1024"}


@pytest.mark.parametrize("run", [r for r in RUNS if r.id not in ACTIVATION_OFFLOAD],
                         ids=[r.id for r in RUNS if r.id not in ACTIVATION_OFFLOAD])
def test_runs_that_ran_fit_in_memory(run):
    e = estimate(run.spec, run.plan, with_time=False)
    assert e.peak_bytes <= run.spec.cluster.gpu.memory_bytes, e.memory.as_gib()


def test_every_published_run_that_ran_is_predicted_to_run():
    """The graded verdict: no published run that really ran is 'does not fit' (two are tight:
    they need the allocator to fragment less than the assumed 17.5 %)."""
    from planner.estimate.predict import estimate
    verdicts = {r.id: estimate(r.spec, r.plan, with_time=False).verdict
                for r in load_published(published_path())}
    assert "does not fit" not in verdicts.values(), verdicts
    assert list(verdicts.values()).count("tight") <= 2


def test_cpu_checkpointing_moves_the_checkpoints_to_the_host():
    """DeepSpeed's 1T ZeRO-3 run (activations and optimizer states in host memory): with the
    checkpoints on the GPU it would not fit with the assumed fragmentation; with them on the
    host the GPU keeps one block's input, and the host holds every block's."""
    from planner.estimate.predict import estimate
    from planner.model import activations as act
    run = next(r for r in load_published(published_path()) if r.id.startswith("deepspeed-azure"))
    assert run.spec.runtime.cpu_checkpointing and run.plan.offload.value == "optimizer_cpu"
    on_gpu = run.spec.model_copy(update={"runtime": run.spec.runtime.model_copy(
        update={"cpu_checkpointing": False})})
    with_host = estimate(run.spec, run.plan, with_time=False)
    without = estimate(on_gpu, run.plan, with_time=False)
    per_block = act.block_input_bytes(run.spec.model, run.plan)
    layers = run.spec.model.n_layers
    assert without.memory.activations - with_host.memory.activations == pytest.approx(
        (layers - 1) * per_block)
    assert with_host.host_bytes_per_node - without.host_bytes_per_node == pytest.approx(
        8 * layers * per_block)
    assert without.verdict != "fits" and with_host.verdict == "fits"


def test_runs_outside_the_shared_sample_that_ran_are_predicted_to_run():
    """bench/data/published_fp8_cp.yaml (torchtitan, torchao, llm-foundry, NeMo, Megatron-Bridge;
    fp8, context-parallel and bf16 runs, every one of which ran): none is 'does not fit'.  Five
    of them (NeMo's GPT-3 175B on 128 and 512 H100s, Megatron-Bridge's Llama 3.1 405B on 1,024
    H100s and 128 B200s) were while priced with DeepSpeed's buffers; their framework's own,
    under runtime.backend megatron, fit (docs/memory-model.md, the fit verdict)."""
    import sys

    import yaml

    from planner.spec.loading import spec_from_dict
    from tests.conftest import ROOT
    sys.path.insert(0, str(ROOT / "bench"))
    import published_fp8_cp as pub
    megatron_core = {"nemo2407-gpt3_175b-128gpu-h100-128gpu-fp8",
                     "nemo2407-gpt3_175b-512gpu-h100-512gpu-fp8",
                     "mbridge2511-l31_405b-h100-sxm-1024gpu-fp8cs",
                     "mbridge2511-l31_405b-b200-128gpu-fp8cs",
                     "mbridge2511-l31_405b-b200-128gpu-mxfp8"}
    refused, estimated, under_deepspeed = [], 0, []
    for row in yaml.safe_load(pub.DATA.read_text())["rows"]:
        try:
            data, plan, _ = pub.build(row)
        except pub.Skip:
            continue
        estimated += 1
        spec = spec_from_dict(data)
        verdict = estimate(spec, plan, with_time=False).verdict
        if verdict == "does not fit":
            refused.append(row["id"])
        if row["id"] in megatron_core:
            assert spec.runtime.backend == "megatron"
            # DeepSpeed's buffers, and its plain 1F1B (it has no interleaved schedule)
            data["runtime"] = {k: v for k, v in data["runtime"].items()
                               if k not in ("backend", "grad_reduce_in_fp32", "virtual_stages")}
            under_deepspeed.append(estimate(spec_from_dict(data), plan,
                                            with_time=False).verdict)
    assert estimated >= 80
    assert refused == []
    assert under_deepspeed == ["does not fit"] * 5


def test_leave_one_source_out_on_the_shared_runs_meets_its_targets():
    """Issue 11's bar for the 20 shared runs, each publisher held out of the refit (with the
    not-shared bf16 runs joining every refit whose held-out source is not theirs): median error
    at most 8 %, 90th percentile at most 15 % (`python bench/published_runs.py --cv --extra`)."""
    import sys

    from planner.validate.crossval import leave_one_source_out, summary
    from tests.conftest import ROOT
    sys.path.insert(0, str(ROOT / "bench"))
    import published_runs as bench
    runs = load_published(published_path())
    preds = leave_one_source_out(runs, extra=bench.extra_runs())
    s = summary([p.error_out for p in preds])
    assert len(preds) == len(runs) == 20
    assert s["median"] <= 0.08 and s["p90"] <= 0.15, s
