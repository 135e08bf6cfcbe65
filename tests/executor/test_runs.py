"""Real 2-process CPU jobs (torchrun, gloo, DeepSpeed 0.19.8's CPU accelerator).

One launch trains every strategy of the matrix one after another in one process group (start-up
is most of a job's cost), then ``execute`` resumes one of them and trains specs/tiny_cpu.yaml.
Cross-checks: ZeRO stages against ZeRO-0, recompute and offload against their plain stage, the
pipeline and AutoTP against a plain PyTorch loop on the same batches, each fp32 export against
the run's own eval loss, the resumed trajectory against the uninterrupted one.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")
torch = pytest.importorskip("torch")

from executor.errors import ExecutorError  # noqa: E402
from executor.launch import launch_command  # noqa: E402
from executor.run import ExecuteRequest, execute, make_options, prepare_run_dir  # noqa: E402
from executor.rundir import RunDir, complete_checkpoints  # noqa: E402
from planner.plan.strategy import Plan  # noqa: E402
from planner.search.engine import search  # noqa: E402
from planner.spec.loading import load_spec, spec_from_dict  # noqa: E402
from planner.spec.spec import Spec  # noqa: E402
from planner.spec.units import Offload, Precision, Recompute, ZeroStage  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
#: JIT-built DeepSpeed ops (shm comm, CPU Adam, fused Adam) cached across test sessions
STEPS = 8
LAB_CPU = {"name": "cpu", "memory_gib": 8, "peak_tflops": {"fp32": 0.2, "bf16": 0.1},
           "hbm_gbps": 20, "intra_node_link": "pcie", "intra_node_gbps": 10, "accelerator": "cpu"}


def tiny_spec(torch_adam: bool = True, arch: str = "gpt2", gpus: int = 2) -> Spec:
    """A 2-layer model, GPT-2 style (tied, learned positions) or Llama style (GQA, SwiGLU, RoPE,
    untied) on one node of ``gpus`` CPU processes; the schedule is 40 steps of 8 sequences of 64
    tokens."""
    llama = {"n_kv_heads": 2, "d_ff": 128} if arch == "llama" else {}
    return spec_from_dict({
        "model": {"arch": arch, "n_layers": 2, "d_model": 64, "n_heads": 4, "vocab_size": 512,
                  "seq_len": 64, **llama},
        "cluster": {"gpu": LAB_CPU, "nodes": 1, "gpus_per_node": gpus},
        "training": {"tokens": 40 * 8 * 64, "global_batch_sequences": 8},
        "runtime": {"torch_adam": torch_adam}})


def plan(dp=2, tp=1, pp=1, zero=0, precision="fp32", mb=2, ga=2, recompute="none", offload="none"):
    return Plan(dp, tp, pp, ZeroStage(zero), Precision(precision), mb, ga, Recompute(recompute),
                Offload(offload))


#: name -> (plan, DeepSpeedCPUAdam instead of torch's AdamW, option overrides).  Order matters:
#: "nan" stops the launch, so it is last.
CASES = {
    "z0": (plan(), False, {}), "z1": (plan(zero=1), False, {}),
    "z2": (plan(zero=2), False, {}), "z3": (plan(zero=3), False, {}),
    "z0-bf16": (plan(precision="bf16"), False, {}),
    "z1-bf16": (plan(zero=1, precision="bf16"), False, {}),
    "z2-bf16": (plan(zero=2, precision="bf16"), False, {}),
    "z3-bf16": (plan(zero=3, precision="bf16"), False, {}),
    "z3-recompute": (plan(zero=3, recompute="full"), False, {}),
    "z2-offload": (plan(zero=2, offload="optimizer_cpu"), True, {}),
    "pp2-z1": (plan(dp=1, pp=2, zero=1, ga=4), False, {}),
    "pp2-z1-llama": (plan(dp=1, pp=2, zero=1, ga=4), False, {"arch": "llama"}),
    "tp2-z1": (plan(dp=1, tp=2, zero=1, ga=4), False, {}),
    "tp2-z2-llama": (plan(dp=1, tp=2, zero=2, ga=4), False, {"arch": "llama"}),
    "uninterrupted": (plan(zero=2), False, {"max_steps": 12, "checkpoint_every": 6}),
    "interrupted": (plan(zero=2), False, {"max_steps": 6, "checkpoint_every": 6}),
    "nan": (plan(zero=2), False, {"learning_rate": 1e30, "checkpoint_every": 1}),
}
FINISHING = [name for name in CASES if name != "nan"]

#: the same on 4 processes: tensor parallelism with a pipeline and with data parallelism
#: (ZeRO-1, and ZeRO-3 over the data-parallel group), Megatron-style on both block families, with
#: and without sequence parallelism
CASES4 = {
    "tp2-pp2": (plan(dp=1, tp=2, pp=2, zero=1, ga=4), False, {}),
    "tp2-pp2-llama": (plan(dp=1, tp=2, pp=2, zero=1, ga=4), False, {"arch": "llama"}),
    "dp2-tp2": (plan(dp=2, tp=2, zero=1, ga=2), False, {}),
    "dp2-tp2-z3-llama": (plan(dp=2, tp=2, zero=3, ga=2), False, {"arch": "llama"}),
    "tp2-pp2-bf16-llama": (plan(dp=1, tp=2, pp=2, zero=1, ga=4, precision="bf16"), False,
                           {"arch": "llama"}),
    "tp2-pp2-sp": (replace(plan(dp=1, tp=2, pp=2, zero=1, ga=4), sequence_parallel=True), False,
                   {}),
    "dp2-tp2-sp-z3-llama": (replace(plan(dp=2, tp=2, zero=3, ga=2), sequence_parallel=True),
                            False, {"arch": "llama"}),
    "tp2-pp2-uninterrupted": (plan(dp=1, tp=2, pp=2, zero=1, ga=4), False,
                              {"max_steps": 12, "checkpoint_every": 6}),
    "tp2-pp2-interrupted": (plan(dp=1, tp=2, pp=2, zero=1, ga=4), False,
                            {"max_steps": 6, "checkpoint_every": 6}),
}


#: every launch of this module with the cached extensions (tests/executor/conftest.py)
pytestmark = pytest.mark.usefixtures("extensions")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def prepare(name: str, root: Path, cache: Path, cases: dict = CASES) -> RunDir:
    p, cpu_adam, overrides = cases[name]
    spec = tiny_spec(torch_adam=not cpu_adam, arch=overrides.get("arch", "gpt2"),
                     gpus=p.world_size)
    lr = overrides.get("learning_rate")
    options = make_options(spec, p, stories=2000, eval_every=4, seed=7, learning_rate=lr,
                           checkpoint_every=overrides.get("checkpoint_every", 100))
    options = replace(options, max_steps=overrides.get("max_steps", STEPS))
    return prepare_run_dir(spec, p, root / name, options, cache_dir=cache)


def losses(run: RunDir, kind: str = "train") -> list[float]:
    key = "loss" if kind == "train" else "eval_loss"
    return [r[key] for r in map(json.loads, run.metrics.read_text().splitlines())
            if r["kind"] == kind]


def launch_cases(root: Path, cache: Path, cases: dict):
    """Every case trained in one launch: (runs by name, exit code, output)."""
    runs = {name: prepare(name, root, cache, cases) for name in cases}
    first = next(iter(cases.values()))[0]
    launch = launch_command(tiny_spec(gpus=first.world_size), first,
                            [r.path for r in runs.values()])
    proc = subprocess.run(launch.argv, env={**os.environ, **launch.env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    (root / "launch.log").write_text(proc.stdout + proc.stderr)
    return runs, proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, cache):
    """The 2-process cases in one launch."""
    return launch_cases(tmp_path_factory.mktemp("matrix"), cache, CASES)


@pytest.fixture(scope="module")
def matrix4(tmp_path_factory, cache):
    """The 4-process cases in one launch."""
    return launch_cases(tmp_path_factory.mktemp("matrix4"), cache, CASES4)


@pytest.mark.parametrize("name", FINISHING)
def test_strategy_trains_and_exports(matrix, name):
    runs, _, output = matrix
    run = runs[name]
    train = losses(run)
    assert len(train) == json.loads(run.run_file.read_text())["options"]["max_steps"], output[-3000:]
    assert all(x == x for x in train)
    assert (run.export / "pytorch_model.bin").is_file()
    assert complete_checkpoints(run)[-1] == f"global_step{len(train)}"


def test_zero_stages_match_zero0(matrix):
    """ZeRO partitions the same arithmetic: equal to ZeRO-0 within float noise (the flat
    buffers sum in another order; ~5e-7 here and in shared/notes/deepspeed-on-cpu.md)."""
    runs = matrix[0]
    z0 = losses(runs["z0"])
    assert losses(runs["z1"]) == pytest.approx(z0, abs=2e-6)
    assert losses(runs["z2"]) == pytest.approx(z0, abs=2e-6)
    assert losses(runs["z3"]) == pytest.approx(z0, abs=1e-5)


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_bf16_tracks_fp32(matrix, zero):
    runs = matrix[0]
    fp32, bf16 = losses(runs[f"z{zero}"]), losses(runs[f"z{zero}-bf16"])
    assert bf16 != fp32  # it really ran in bf16
    assert bf16 == pytest.approx(fp32, abs=2e-2)


def test_recompute_and_offload_change_nothing(matrix):
    runs = matrix[0]
    assert losses(runs["z3-recompute"]) == pytest.approx(losses(runs["z3"]), abs=1e-6)
    # DeepSpeedCPUAdam on the offloaded partition vs torch AdamW on the GPU-side one
    assert losses(runs["z2-offload"]) == pytest.approx(losses(runs["z2"]), abs=1e-5)


@pytest.mark.parametrize("names", [("z0", "pp2-z1", "tp2-z1"), ("pp2-z1-llama", "tp2-z2-llama")],
                         ids=["gpt2", "llama"])
def test_model_parallel_matches_plain_pytorch(matrix, names):
    """Reference equivalence: ZeRO-0 over dp=2, the 2-stage pipeline and tensor parallelism over 2
    ranks all see the same global batches (the sampler deals one window order out to the dp ranks), so
    each matches one plain PyTorch process on those batches."""
    from executor.train import plain_training
    runs = matrix[0]
    spec, p, options = runs[names[0]].load()
    reference, _ = plain_training(spec, p, runs[names[0]].shards_dir(), options, STEPS)
    for name in names:
        assert losses(runs[name]) == pytest.approx(reference, abs=2e-5), name


@pytest.mark.parametrize("name,rows", [("tp2-z1", 3 * 64 // 2), ("tp2-z2-llama", (4 + 2 + 2) * 16 // 2)])
def test_tensor_parallelism_really_shards(matrix, name, rows):
    """Each rank keeps half of every split weight: the DeepSpeed checkpoint holds one
    model-states file per tensor-parallel rank with half the fused QKV rows."""
    run = matrix[0][name]
    tag = complete_checkpoints(run)[-1]
    files = sorted((run.checkpoints / tag).glob("mp_rank_0*_model_states.pt"))
    assert len(files) == 2
    state = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
    assert state["blocks.0.attn.qkv.weight"].shape == (rows, 64)


def check_export_scores_like_the_run(run: RunDir) -> None:
    """The fp32 export, loaded into a plain GPT, scores the run's last eval batches as the run
    did (bf16 runs computed in bf16 from the fp32 masters the export holds)."""
    from executor.data import BatchSampler, TokenDataset
    from executor.sample import load_exported
    spec, p, options = run.load()
    model, _ = load_exported(run.path)
    # one dp=1 sampler with dp x micro_batch rows draws the windows the dp ranks evaluated
    sampler = BatchSampler(TokenDataset(run.shards_dir(), "val"), spec.model.seq_len,
                           p.micro_batch * p.dp, 0, 1, options.seed)
    with torch.no_grad():
        scores = [model(*sampler.next_batch()).item() for _ in range(options.eval_batches)]
    tolerance = 2e-3 if p.precision is Precision.BF16 else 2e-5
    assert sum(scores) / len(scores) == pytest.approx(losses(run, "eval")[-1], abs=tolerance)


@pytest.mark.parametrize("name", FINISHING)
def test_export_reproduces_eval_loss(matrix, name):
    check_export_scores_like_the_run(matrix[0][name])


def test_nonfinite_loss_stops_with_last_good_checkpoint(matrix):
    runs, rc, output = matrix
    run = runs["nan"]
    assert rc != 0, output[-3000:]  # torchrun reports any failed rank as 1; the ranks exit 3
    error = next(json.loads(line[len("@error "):]) for line in output.splitlines()
                 if line.startswith("@error "))
    step = error["step"]
    assert f"at step {step}: training stopped" in error["message"]
    assert complete_checkpoints(run)[-1] == f"global_step{step - 1}"
    assert str(run.checkpoints / f"global_step{step - 1}") in error["message"]
    assert not (run.export / "pytorch_model.bin").exists()
    assert len(losses(run)) == step - 1  # the non-finite step is not recorded as progress


def test_resume_continues_the_trajectory_exactly(matrix):
    runs = matrix[0]
    run = runs["interrupted"]
    spec, p, _ = run.load()
    assert execute(spec, p, run.path, ExecuteRequest(resume=True, max_steps=12)) == 0
    assert losses(run) == losses(runs["uninterrupted"])
    assert len(losses(run)) == 12


def test_tiny_cpu_spec_learns_and_reports(tmp_path, cache):
    """specs/tiny_cpu.yaml through execute(): the eval loss clearly falls within 36 steps, and the
    report, loss curve and a text sample come out."""
    from executor.sample import generate
    spec = load_spec(ROOT / "specs" / "tiny_cpu.yaml")
    best = search(spec).best.plan
    run = RunDir(tmp_path / "tiny")
    request = ExecuteRequest(max_steps=36, eval_every=12, cache_dir=cache)
    assert execute(spec, best, run.path, request) == 0
    evals = losses(run, "eval")
    assert len(evals) == 3 and evals[0] > evals[1] > evals[2]
    assert evals[-1] < evals[0] - 0.5, evals
    report = json.loads(run.report_json.read_text())
    assert report["measured"]["peak_memory_bytes"] is None  # not measured on CPU
    assert report["measured"]["tokens_per_s"] > 0 and report["predicted"]["peak_memory_bytes"] > 0
    assert "not measured" in run.report_txt.read_text()
    assert run.loss_png.stat().st_size > 1000
    assert generate(run.path, "Once upon a time", max_new_tokens=8).startswith("Once upon a time")


@pytest.mark.parametrize("recompute", ["full", "selective"])
def test_recompute_keeps_gradients(recompute):
    """Recomputation changes what is stored, not what is computed: the checkpointed model's
    loss and gradients equal the plain model's, and its attention runs again in backward (eager
    attention, so that selective recompute has something to do)."""
    from executor.model import GPT
    from executor.parallel import apply_recompute
    from planner.spec.spec import ModelSpec
    m = ModelSpec.model_validate({**tiny_spec().model.model_dump(mode="json"),
                                  "attention": "eager"})
    torch.manual_seed(0)
    plain = GPT(m)
    wrapped = apply_recompute(GPT(m), Recompute(recompute))
    wrapped.load_state_dict(plain.state_dict())
    x = torch.randint(0, m.vocab_size, (2, m.seq_len))
    calls = []
    for model in (plain, wrapped):
        hook = model.blocks[0].attn.qkv.register_forward_hook(lambda *_: calls.append(model))
        model(x, x).backward()
        hook.remove()
    assert calls.count(plain) == 1 and calls.count(wrapped) == 2
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in wrapped.named_parameters()]
    for (name, a), b in zip(plain.named_parameters(), wrapped.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


# ----------------------------------------------------------------------------------- bad input

def snapshot(path: Path) -> dict[str, bytes]:
    return {str(f): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.fixture
def finished(matrix, tmp_path) -> RunDir:
    """A copy of a finished run to damage."""
    target = tmp_path / "copy"
    shutil.copytree(matrix[0]["z2"].path, target)
    return RunDir(target)


def test_existing_run_dir_without_resume(finished):
    spec, p, _ = finished.load()
    before = snapshot(finished.path)
    with pytest.raises(ExecutorError, match="exists; pass --resume or choose another"):
        execute(spec, p, finished.path)
    assert snapshot(finished.path) == before


def test_resume_without_checkpoint(finished):
    spec, p, _ = finished.load()
    shutil.rmtree(finished.checkpoints)
    with pytest.raises(ExecutorError, match="no complete checkpoint"):
        execute(spec, p, finished.path, ExecuteRequest(resume=True))


def test_resume_from_corrupt_checkpoint(finished):
    spec, p, _ = finished.load()
    tag_dir = finished.checkpoints / complete_checkpoints(finished)[-1]
    victim = next(tag_dir.glob("*optim_states.pt"))
    victim.write_bytes(victim.read_bytes()[:100])
    before = snapshot(finished.path)
    with pytest.raises(ExecutorError, match="corrupt"):
        execute(spec, p, finished.path, ExecuteRequest(resume=True))
    assert snapshot(finished.path) == before


def test_resume_with_another_plan_says_how_to_go_on(finished):
    spec, _, _ = finished.load()
    export = finished.export / "pytorch_model.bin"
    with pytest.raises(ExecutorError, match=f"a resume needs the same plan; .*--init-from "
                                            f"{re.escape(str(export))}"):
        execute(spec, plan(zero=3), finished.path, ExecuteRequest(resume=True))


def test_another_layout_starts_from_the_weights(matrix4, tmp_path, cache):
    """The tp2·pp2 run's export, loaded by a new dp2 ZeRO-1 run (another layout, 2 processes):
    its first loss is the trained model's, not a fresh one's."""
    source = matrix4[0]["tp2-pp2"]
    spec = tiny_spec()
    fresh = losses(matrix4[0]["tp2-pp2-uninterrupted"])[0]
    run = tmp_path / "continued"
    request = ExecuteRequest(max_steps=1, stories=2000, seed=7, cache_dir=str(cache),
                             init_from=str(source.export / "pytorch_model.bin"))
    assert execute(spec, plan(zero=1), run, request) == 0
    assert losses(RunDir(run))[0] < fresh - 0.1


def test_resume_of_nothing(tmp_path):
    with pytest.raises(ExecutorError, match="nothing to resume"):
        execute(tiny_spec(), plan(), tmp_path, ExecuteRequest(resume=True))


def test_missing_data_path(tmp_path):
    with pytest.raises(ExecutorError, match="data path .* does not exist"):
        execute(tiny_spec(), plan(), tmp_path / "run",
                ExecuteRequest(data=str(tmp_path / "nope.jsonl")))
    assert not (tmp_path / "run").exists()


def test_tokenizer_larger_than_the_model_vocabulary(tmp_path, cache):
    spec = tiny_spec()
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"vocab_size": 200})})
    with pytest.raises(ExecutorError, match="model.vocab_size: the tokenizer has 257 tokens"):
        execute(spec, plan(), tmp_path / "run",
                ExecuteRequest(tokenizer="byte", stories=50, cache_dir=cache))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("p,words", [
    (plan(precision="fp16"), "fp16 cannot run on CPU"),
    (plan(dp=1, pp=2, zero=2, ga=4), "pipeline parallelism \\(pp=2\\) needs ZeRO 0 or 1"),
    (plan(zero=3, offload="params_nvme"), "needs an NVMe directory: pass --nvme-path"),
], ids=["fp16-on-cpu", "pipeline-zero2", "nvme-without-path"])
def test_unrealisable_plan(tmp_path, p, words):
    """Each is refused before anything is written: fp16 by the machine check (the spec's GPU has
    fp16, this CPU does not), a pipeline with ZeRO-2 by DeepSpeed's rule, NVMe without a path."""
    spec = tiny_spec()
    if p.precision is Precision.FP16:
        gpu = spec.cluster.gpu.model_copy(update={"peak_tflops": {**LAB_CPU["peak_tflops"],
                                                                  "fp16": 0.1}})
        spec = spec.model_copy(update={"cluster": spec.cluster.model_copy(update={"gpu": gpu})})
    if p.world_size != spec.cluster.world_size:
        spec = spec.model_copy(update={"cluster": spec.cluster.model_copy(
            update={"gpus_per_node": p.world_size})})
    with pytest.raises(ExecutorError, match=words):
        execute(spec, p, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------- 4 processes: 3-D

@pytest.mark.parametrize("name", [n for n in CASES4 if n != "tp2-pp2-interrupted"])
def test_3d_layouts_train_like_one_process(matrix4, name):
    """tp2·pp2 and dp2·tp2 (4 processes) see the same global batches as one plain PyTorch
    process and follow its losses within 1e-4 in fp32 (bf16 against an autocast reference)."""
    from executor.train import plain_training
    runs, _, output = matrix4
    run = runs[name]
    spec, p, options = run.load()
    train = losses(run)
    assert len(train) == options.max_steps, output[-3000:]
    reference, _ = plain_training(spec, p, run.shards_dir(), options, len(train))
    tolerance = 1e-3 if p.precision is Precision.BF16 else 1e-4
    assert train == pytest.approx(reference, abs=tolerance)
    assert (run.export / "pytorch_model.bin").is_file()


@pytest.mark.parametrize("name", ["tp2-pp2", "tp2-pp2-llama", "dp2-tp2", "dp2-tp2-z3-llama",
                                  "tp2-pp2-sp", "tp2-z1", "tp2-z2-llama", "pp2-z1",
                                  "pp2-z1-llama"])
def test_engine_holds_the_planners_per_rank_counts(matrix, matrix4, name):
    """Each rank's parameters (its stage, its tensor-parallel shard) and Adam moments (two per
    parameter of its data-parallel partition) are the planner's per-rank counts, exactly: tp2,
    pp2, tp2·pp2 and dp2·tp2, GPT-2 (tied, learned positions) and Llama (GQA, SwiGLU)."""
    from planner.model.shape import layers_per_stage, stage_params, stages_to_check
    run = (matrix4 if name in CASES4 else matrix)[0][name]
    spec, p, _ = run.load()
    stages = stages_to_check(spec.model, p.pp, p.grad_accum)
    assert sum(layers_per_stage(spec.model.n_layers, p.pp)) == spec.model.n_layers
    for counted in json.loads(run.actual.read_text())["elements"]:
        stage = stages[p.degrees.coords(counted["rank"])["pp"]]
        planned = stage_params(spec.model, stage, p.tp)
        assert counted["params"] == planned, (counted, stage)
        partition = planned // p.dp if p.zero >= ZeroStage.OPTIMIZER else planned
        assert counted["optimizer_states"] == 2 * partition, counted


@pytest.mark.parametrize("name", ["tp2-pp2", "dp2-tp2", "dp2-tp2-z3-llama", "tp2-pp2-sp",
                                  "dp2-tp2-sp-z3-llama"])
def test_3d_export_reproduces_eval_loss(matrix4, name):
    """The merged export (tensor-parallel shards joined, stages joined) is the model that ran."""
    check_export_scores_like_the_run(matrix4[0][name])


def test_3d_resume_continues_the_trajectory_exactly(matrix4):
    runs = matrix4[0]
    run = runs["tp2-pp2-interrupted"]
    spec, p, _ = run.load()
    assert execute(spec, p, run.path, ExecuteRequest(resume=True, max_steps=12)) == 0
    assert losses(run) == losses(runs["tp2-pp2-uninterrupted"])

