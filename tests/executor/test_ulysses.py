"""DeepSpeed-Ulysses context parallelism in the executor (issue 14).

Two CPU processes form one context-parallel group (dp1·cp2): each holds half of every sequence,
DeepSpeed's DistributedAttention exchanges heads for sequence around each attention, and ZeRO
partitions over the dp x cp ranks.  The run follows a plain single-process PyTorch loop on the
same batches within 1e-4 (Llama: GQA, RoPE; GPT-2: learned positions, tied table, eager
attention); each rank's tokens, the q/k/v its attention sees and its ZeRO partition are the
planner's; a resume continues exactly; the fp32 export is the plain model that ran.  Every
case trains in one torchrun launch.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")
torch = pytest.importorskip("torch")

from executor.context_parallel import local_slice, problem  # noqa: E402
from executor.ds_config import to_deepspeed_config  # noqa: E402
from executor.run import ExecuteRequest, execute, make_options, prepare_run_dir  # noqa: E402
from executor.rundir import RunDir  # noqa: E402
from planner.model.local import local_dims  # noqa: E402
from planner.model.shape import param_counts  # noqa: E402
from planner.plan.strategy import Plan  # noqa: E402
from planner.spec.loading import load_spec, spec_from_dict  # noqa: E402
from planner.spec.spec import Spec  # noqa: E402
from planner.spec.units import (ContextParallel, Offload, Precision, Recompute,  # noqa: E402
                                ZeroStage)

from tests.executor.conftest import launch_runs  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LAB_CPU = {"name": "cpu", "memory_gib": 8, "peak_tflops": {"fp32": 0.2, "bf16": 0.1},
           "hbm_gbps": 20, "intra_node_link": "pcie", "intra_node_gbps": 10, "accelerator": "cpu"}
STEPS = 6

#: 2 layers; Llama style (4 query heads over 2 kv heads, RoPE, SwiGLU) or GPT-2 style (learned
#: positions, tied embeddings, LayerNorm) with the eager softmax
MODELS = {
    "llama": {"arch": "llama", "n_kv_heads": 2, "d_ff": 128},
    "gpt2-eager": {"arch": "gpt2", "attention": "eager"},
}


def tiny_spec(model: str = "llama") -> Spec:
    """The schedule is 40 steps of 4 sequences of 64 tokens on 2 CPU processes."""
    return spec_from_dict({
        "model": {"n_layers": 2, "d_model": 64, "n_heads": 4, "vocab_size": 512, "seq_len": 64,
                  **MODELS[model]},
        "cluster": {"gpu": LAB_CPU, "nodes": 1, "gpus_per_node": 2},
        "training": {"tokens": 40 * 4 * 64, "global_batch_sequences": 4},
        "runtime": {"torch_adam": True}})


def plan(zero=1, precision="fp32", recompute="none", cp=2, tp=1) -> Plan:
    return Plan(1, tp, 1, ZeroStage(zero), Precision(precision), 2, 2, Recompute(recompute),
                Offload.NONE, cp=cp)


#: name -> (plan, model, option overrides); "interrupted" is resumed to STEPS by a test
CASES = {
    "z1": (plan(), "llama", {}),
    "z0": (plan(zero=0), "llama", {}),
    "z2": (plan(zero=2), "llama", {}),
    "z3": (plan(zero=3), "llama", {}),
    "z2-bf16": (plan(zero=2, precision="bf16"), "llama", {}),
    "z1-full": (plan(recompute="full"), "llama", {}),
    "gpt2-eager-z2-selective": (plan(zero=2, recompute="selective"), "gpt2-eager", {}),
    "interrupted": (plan(zero=2), "llama", {"max_steps": 3, "checkpoint_every": 3}),
}


# ------------------------------------------------------------------------- without processes

@pytest.mark.parametrize("changes,words", [
    ({"cp_kind": ContextParallel.RING}, "cp_kind ring"),
    ({"tp": 2}, "with tp (2)"),
    ({"pp": 2}, "with pp (2)"),
    ({"offload": Offload.OPTIMIZER_CPU}, "offload optimizer_cpu"),
    ({"precision": Precision.FP16}, "fp16"),
    ({"cp": 4}, "cp (4) must divide n_heads (4) and n_kv_heads (2)"),
], ids=["ring", "tp", "pp", "offload", "fp16", "kv-heads"])
def test_what_the_executor_cannot_run_says_why(changes, words):
    """One reason per unsupported layout, with its operands; cp 1 and dp1·cp2 pass."""
    spec = tiny_spec()
    assert problem(spec, plan()) is None and problem(spec, plan(cp=1, tp=2)) is None
    reason = problem(spec, replace(plan(), **changes))
    assert reason is not None and reason.startswith("context parallelism: ") and words in reason


def test_a_mixture_of_experts_model_is_refused():
    spec = spec_from_dict({"model": {"preset": "tiny-moe"},
                           "cluster": {"gpu": LAB_CPU, "nodes": 1, "gpus_per_node": 2},
                           "training": {"tokens": 1e5, "global_batch_sequences": 4}})
    assert "mixture-of-experts" in problem(spec, plan())


def test_build_refuses_before_any_process_group():
    """The per-rank loop raises the same one line before touching DeepSpeed's groups."""
    from executor.errors import ExecutorError
    from executor.train import build_engine
    spec = tiny_spec()
    p = replace(plan(), cp_kind=ContextParallel.RING)
    with pytest.raises(ExecutorError, match="cp_kind ring"):
        build_engine(spec, p, to_deepspeed_config(spec, p), seed=0)


def test_slices_cover_each_sequence_with_the_planners_tokens():
    """The cp slices of a micro-batch, side by side, are the micro-batch; each holds
    micro_batch x seq_len / cp tokens, the planner's local_dims(...).tokens."""
    spec, p = tiny_spec(), plan()
    x = torch.arange(p.micro_batch * spec.model.seq_len).view(p.micro_batch, -1)
    parts = [local_slice(x, p.cp, r) for r in range(p.cp)]
    assert torch.equal(torch.cat(parts, dim=1), x)
    assert {t.numel() for t in parts} == {local_dims(spec.model, p).tokens}


def test_deepspeed_config_keeps_the_groups_out_of_the_config():
    """The batch is dp's (DeepSpeed counts world / cp data-parallel ranks under Ulysses); no
    sequence_parallel_size + data_parallel_size pair, which would build a device mesh."""
    spec = tiny_spec()
    cfg = to_deepspeed_config(spec, plan())
    assert cfg["train_batch_size"] == 2 * 2 * 1
    assert "sequence_parallel_size" not in cfg and "data_parallel_size" not in cfg
    assert cfg["seq_parallel_communication_data_type"] == "fp32"
    assert "seq_parallel_communication_data_type" not in to_deepspeed_config(spec, plan(cp=1))


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_deepspeed_parses_the_config_with_its_ulysses_groups(zero, monkeypatch):
    """DeepSpeedConfig as deepspeed.initialize builds it with the Ulysses mpu
    (parallel_state_sp: no data-parallel getter, so it counts world / cp data-parallel ranks):
    the spec's global batch, the stage, and under ZeRO-3 the reduce-scatter the loss share
    relies on."""
    from types import SimpleNamespace

    from deepspeed.runtime import config as ds_config_module
    spec, p = tiny_spec(), plan(zero=zero)
    monkeypatch.setattr(ds_config_module, "dist", SimpleNamespace(
        get_rank=lambda: 0, get_world_size=lambda group=None: p.world_size))
    mpu = SimpleNamespace(initialize_sequence_parallel=None,
                          get_sequence_parallel_world_size=lambda: p.cp)
    ds = ds_config_module.DeepSpeedConfig(to_deepspeed_config(spec, p), mpu=mpu)
    assert ds.train_batch_size == spec.global_batch_sequences
    assert ds.zero_optimization_stage == zero
    assert ds.zero_config.reduce_scatter


def test_the_tiny_ulysses_spec_plans_context_parallelism_the_executor_runs(tmp_path):
    """specs/tiny_ulysses_cpu.yaml: the best plan is dp1·cp2 (Ulysses, tp1, pp1), executable
    by the planner's rules and the executor's own check; its dry run writes the config."""
    from planner.api import plan as plan_spec
    spec = load_spec(ROOT / "specs" / "tiny_ulysses_cpu.yaml")
    best = plan_spec(spec, executable=True).best
    assert best is not None and not best.not_executable
    p = best.plan
    assert (p.dp, p.cp, p.cp_kind, p.tp, p.pp) == (1, 2, ContextParallel.ULYSSES, 1, 1)
    assert problem(spec, p) is None
    assert execute(spec, p, tmp_path / "run", ExecuteRequest(dry_run=True)) == 0


# ------------------------------------------------------------------ 2 processes, one launch

@pytest.fixture(scope="module")
def matrix(tmp_path_factory, extensions):
    """Every case trained in one torchrun launch of 2 processes: (runs by name, output)."""
    root = tmp_path_factory.mktemp("ulysses")
    runs = {}
    for name, (p, model, overrides) in CASES.items():
        spec = tiny_spec(model)
        options = make_options(spec, p, stories=1000, eval_every=STEPS, seed=7, learning_rate=4e-3,
                               checkpoint_every=overrides.get("checkpoint_every", 100))
        options = replace(options, max_steps=overrides.get("max_steps", STEPS))
        runs[name] = prepare_run_dir(spec, p, root / name, options, cache_dir=root / "cache")
    return runs, launch_runs(tiny_spec(), plan(), runs, root / "launch.log")


def records(run: RunDir, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, run.metrics.read_text().splitlines()) if r["kind"] == kind]


def losses(run: RunDir) -> list[float]:
    return [r["loss"] for r in records(run)]


def reference(run: RunDir) -> list[float]:
    """The plain single-process loop (no DeepSpeed, whole sequences) on the run's batches."""
    from executor.train import plain_training
    spec, p, options = run.load()
    return plain_training(spec, p, run.shards_dir(), options, STEPS)[0]


@pytest.mark.parametrize("name", ["z1", "gpt2-eager-z2-selective"])
def test_context_parallel_run_trains_like_one_process(matrix, name):
    """dp1·cp2 follows one plain PyTorch process on whole sequences within 1e-4 per step:
    RoPE at global positions (Llama, GQA) and learned positions offset to the slice (GPT-2,
    tied table, eager attention under selective recompute)."""
    run = matrix[0][name]
    got, want = losses(run), reference(run)
    assert len(got) == STEPS
    assert got == pytest.approx(want, abs=1e-4)
    assert want[-1] < want[0] - 0.2  # it learns
    print(f"{name}: max |cp2 - plain| = {max(abs(a - b) for a, b in zip(got, want)):.2e}")


@pytest.mark.parametrize("name", ["z0", "z2", "z3", "z1-full"])
def test_zero_stages_and_recompute_follow_the_same_trajectory(matrix, name):
    """ZeRO 0, 2 and 3 over the dp x cp group and full recompute (the all-to-alls rerun in
    backward) give ZeRO-1's losses within 1e-5."""
    runs = matrix[0]
    assert losses(runs[name]) == pytest.approx(losses(runs["z1"]), abs=1e-5)


@pytest.mark.parametrize("name", ["z2", "z3"])
def test_gradient_norms_are_the_whole_sequences(matrix, name):
    """The global gradient norm DeepSpeed reports (and clips by) is ZeRO-1's under ZeRO 2 and
    3: each stage averages over the dp x cp group as the loss share expects (ZeRO-3's
    reduce-scatter divides by every rank of it; a wrong share shows here as a factor cp)."""
    runs = matrix[0]
    norms = [[r["grad_norm"] for r in records(runs[n])] for n in (name, "z1")]
    assert norms[0] == pytest.approx(norms[1], rel=1e-4)


def test_bf16_tracks_fp32(matrix):
    runs = matrix[0]
    assert losses(runs["z2-bf16"]) == pytest.approx(losses(runs["z2"]), abs=2e-2)


@pytest.mark.parametrize("name", ["z0", "z1", "z2", "z3"])
def test_each_rank_holds_the_planners_elements(matrix, name):
    """actual.json, per rank: the micro-batch tokens it computed are micro_batch x seq_len / cp
    (local_dims(...).tokens); its attention core received whole sequences with heads / cp query
    heads and kv_heads / cp key/value heads; it holds every parameter (ZeRO-3 counts each
    partitioned tensor's whole size, as test_runs does) and Adam's two moments for 1/(dp x cp)
    of them under ZeRO 1-3 (all of them under ZeRO-0)."""
    run = matrix[0][name]
    spec, p, _ = run.load()
    m, dims, total = spec.model, local_dims(spec.model, p), param_counts(spec.model).total
    elements = json.loads(run.actual.read_text())["elements"]
    assert len(elements) == p.world_size == p.zero_ranks * p.tp * p.pp
    for counted in elements:
        assert counted["tokens"] == dims.tokens == p.micro_batch * m.seq_len // p.cp
        seq = dims.seq * dims.cp  # the all-to-all gathers the sequence and scatters the heads
        assert counted["attention"] == {
            "q": [p.micro_batch, seq, dims.heads / p.cp, m.head_dim],
            "k": [p.micro_batch, seq, dims.kv_heads / p.cp, m.head_dim],
            "v": [p.micro_batch, seq, dims.kv_heads / p.cp, m.head_dim]}, counted
        partition = total // p.zero_ranks if p.zero >= ZeroStage.OPTIMIZER else total
        assert counted["params"] == total, counted  # ZeRO-3: ds_numel, the whole tensor's
        assert counted["optimizer_states"] == 2 * partition, counted


def test_resume_is_exact(matrix):
    """The run stopped at step 3 (a checkpoint of both cp ranks) and resumed in another launch
    repeats the uninterrupted ZeRO-2 losses exactly."""
    runs = matrix[0]
    run = runs["interrupted"]
    spec, p, _ = run.load()
    assert p.cp == 2
    assert execute(spec, p, run.path, ExecuteRequest(resume=True, max_steps=STEPS)) == 0
    assert losses(run) == losses(runs["z2"])


@pytest.mark.parametrize("name", ["z0", "z2"])
def test_export_is_the_plain_model_that_ran(matrix, name):
    """The fp32 export loads into a plain GPT (whole sequences, no process group) and scores
    the run's last eval batches as the cp ranks did together."""
    from executor.data import BatchSampler, TokenDataset
    from executor.sample import load_exported
    run = matrix[0][name]
    spec, p, options = run.load()
    model, _ = load_exported(run.path)
    sampler = BatchSampler(TokenDataset(run.shards_dir(), "val"), spec.model.seq_len,
                           p.micro_batch, 0, 1, options.seed)
    with torch.no_grad():
        scores = [model(*sampler.next_batch()).item() for _ in range(options.eval_batches)]
    assert sum(scores) / len(scores) == pytest.approx(records(run, "eval")[-1]["eval_loss"],
                                                      abs=2e-5)
