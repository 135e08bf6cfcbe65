"""Mixture-of-experts in the executor (issue 13): DeepSpeed-MoE's layer with expert parallelism.

The built model holds the planner's parameters per rank (dense + experts / ep) and per tensor;
routing is deterministic, so a 2-process run with ep = 2 (real all-to-alls over gloo) follows a
plain single-process PyTorch loop with every expert, on the same global batches, and the same
run with ep = 1; ZeRO-2 partitions the experts over their own group; DeepSpeed's per-expert
checkpoint files are in the manifest and a resume continues exactly; the fp32 export is the
plain model that ran.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")
torch = pytest.importorskip("torch")

from executor.model import GPT, Block, MoEMLP  # noqa: E402
from executor.parallel import apply_expert_parallel, expert_param_names  # noqa: E402
from executor.run import ExecuteRequest, execute, make_options, prepare_run_dir  # noqa: E402
from executor.rundir import RunDir, complete_checkpoints  # noqa: E402
from planner.model.shape import (layer_tensor_sizes, param_counts, stage_params,  # noqa: E402
                                 stages_to_check)
from planner.plan.strategy import Plan  # noqa: E402
from planner.spec.loading import load_spec, spec_from_dict  # noqa: E402
from planner.spec.spec import ModelSpec, Spec  # noqa: E402
from planner.spec.units import Offload, Precision, Recompute, ZeroStage  # noqa: E402

from tests.executor.conftest import launch_runs  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LAB_CPU = {"name": "cpu", "memory_gib": 8, "peak_tflops": {"fp32": 0.2, "bf16": 0.1},
           "hbm_gbps": 20, "intra_node_link": "pcie", "intra_node_gbps": 10, "accelerator": "cpu"}
STEPS = 6

#: the tiny-moe preset (4 experts, top-2, every layer) and a Qwen2-MoE-shaped model: top-3 of
#: 4 experts on every second layer but one kept dense, a shared expert and its gate, GELU
#: experts with biases (GPT-2 block)
QWEN_FORM = dict(arch="gpt2", n_layers=4, d_model=32, n_heads=4, vocab_size=97, seq_len=16,
                 moe={"experts": 4, "top_k": 3, "expert_d_ff": 24, "shared_d_ff": 40,
                      "shared_expert_gate": True, "every": 2, "dense_layers": [3]})
MODELS = {"tiny-moe": {"preset": "tiny-moe"}, "qwen-form": QWEN_FORM,
          "mixtral-8x7b": {"preset": "mixtral-8x7b"}}


def model_spec(name: str) -> ModelSpec:
    return ModelSpec.model_validate(MODELS[name])


def built(m: ModelSpec, ep: int) -> GPT:
    with torch.device("meta"):
        return apply_expert_parallel(GPT(m), ep)


# ----------------------------------------------------------------------- the model, one process

@pytest.mark.parametrize("ep", [1, 2, 4])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_rank_holds_the_planners_parameters(name, ep):
    """A rank holds the dense parameters and experts / ep of every MoE layer's experts: the
    planner's stage_params(m, stage, tp=1, ep); with ep 1 the model's total."""
    m = model_spec(name)
    stage = stages_to_check(m, 1, 1)[0]
    held = sum(p.numel() for p in built(m, ep).parameters())
    assert held == stage_params(m, stage, 1, ep)
    if ep == 1:
        assert held == param_counts(m).total
    assert held < param_counts(m).total or ep == 1


@pytest.mark.parametrize("name", sorted(MODELS))
def test_tensors_of_a_moe_block_are_the_planners(name):
    """layer_tensor_sizes lists the MoE block's tensors (router, each expert's up and down, the
    shared expert and its gate): the ep 1 block's, and with ep 2 the dense tensors of one rank
    plus the experts of both ranks of the expert-parallel group."""
    m = model_spec(name)
    planned = sorted(layer_tensor_sizes(m, tp=1))
    with torch.device("meta"):
        whole = Block(m, moe=True)
    assert sorted(p.numel() for p in whole.parameters()) == planned
    with torch.device("meta"):
        half = MoEMLP(m, ep=2)
    experts = [p.numel() for n, p in half.named_parameters() if "deepspeed_experts" in n]
    dense = [p.numel() for n, p in whole.named_parameters() if "deepspeed_experts" not in n]
    assert len(experts) == len(planned) - len(dense) - len(experts)
    assert sorted(dense + 2 * experts) == planned


def test_expert_names_map_each_ranks_experts_onto_the_plain_model():
    """Local expert j on expert-parallel rank r is expert r * experts/ep + j of the plain GPT,
    DeepSpeed's own numbering; the ranks of a group together hold every expert once."""
    m = model_spec("tiny-moe")
    plain = {n for n, _ in built(m, 1).named_parameters()}
    seen: list[str] = []
    for rank in range(2):
        rename = expert_param_names(m, 2, rank)
        seen += [rename(n) for n, _ in built(m, 2).named_parameters()]
    assert expert_param_names(m, 2, 1)(
        "blocks.3.mlp.moe.deepspeed_moe.experts.deepspeed_experts.1.w2.weight") == \
        "blocks.3.mlp.moe.deepspeed_moe.experts.deepspeed_experts.3.w2.weight"
    experts = [n for n in seen if "deepspeed_experts" in n]
    assert sorted(experts) == sorted(n for n in plain if "deepspeed_experts" in n)
    assert set(seen) == plain


def test_routing_is_deterministic():
    """The same tokens route alike whatever the random state (so every layout routes a
    micro-batch alike): no Gumbel-sampled second expert, no random token selection.  DeepSpeed's
    defaults (top2_2nd_expert_sampling, use_rts) would make the two outputs differ."""
    m = ModelSpec.model_validate({**QWEN_FORM, "moe": {"experts": 4, "top_k": 2,
                                                       "expert_d_ff": 24}})
    torch.manual_seed(0)
    layer = MoEMLP(m)
    x = torch.randn(2, 16, m.d_model)
    outputs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        outputs.append(layer(x))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    from deepspeed.moe.layer import MoE
    sampled = MoE(m.d_model, layer.moe.deepspeed_moe.experts.deepspeed_experts[0], 4, k=2)
    sampled.load_state_dict(layer.moe.state_dict())
    drawn = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        drawn.append(sampled(x)[0])
    assert not torch.equal(drawn[0], drawn[1])


def test_trains_in_one_process_without_a_process_group():
    """ep 1 needs no torch.distributed: the loss and the routers' load-balancing loss reach every
    parameter (routers, experts, shared expert and its gate), and full recompute gives the
    same gradients."""
    from executor.model import MOE_AUX_LOSS_COEF
    from executor.parallel import apply_recompute
    assert not torch.distributed.is_initialized()
    m = model_spec("qwen-form")
    plain, wrapped = GPT(m, seed=3), apply_recompute(GPT(m, seed=3), Recompute.FULL)
    x = torch.randint(0, m.vocab_size, (2, m.seq_len), generator=torch.Generator().manual_seed(0))
    for model in (plain, wrapped):
        loss, aux = model(x, x), model.moe_aux_loss()
        assert aux.item() > 0 and aux.dtype == torch.float32
        (loss + MOE_AUX_LOSS_COEF * aux).backward()
    for (name, a), b in zip(plain.named_parameters(), wrapped.parameters()):
        assert a.grad.abs().sum() > 0, name
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    assert GPT(ModelSpec(preset="tiny-llama")).moe_aux_loss() is None


def test_optimizer_groups_split_the_experts_for_zero():
    """ZeRO-1/2 need the experts in param groups of their own, marked moe and named after their
    expert-parallel group; a dense model's parameters stay one list."""
    from executor.train import optimizer_groups
    model = built(model_spec("tiny-moe"), 2)
    groups = optimizer_groups(model)
    moe = [g for g in groups if g.get("moe")]
    assert [g["name"] for g in moe] == ["ep_size_2"]
    expert_ids = {id(p) for n, p in model.named_parameters() if "deepspeed_experts" in n}
    assert {id(p) for p in moe[0]["params"]} == expert_ids
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    dense = GPT(ModelSpec(preset="tiny-llama"))
    assert optimizer_groups(dense) == list(dense.parameters())


def test_the_tiny_moe_spec_plans_expert_parallelism_the_executor_runs(tmp_path):
    """specs/tiny_moe_cpu.yaml: the best plan is dp2·ep2 ZeRO-2 and executable; its dry run
    writes a DeepSpeed config with no MoE key (the layer carries ep_size itself)."""
    from planner.api import plan
    spec = load_spec(ROOT / "specs" / "tiny_moe_cpu.yaml")
    best = plan(spec, executable=True).best
    assert best is not None and not best.not_executable
    assert (best.plan.dp, best.plan.ep, best.plan.zero) == (2, 2, ZeroStage.GRADIENTS)
    assert execute(spec, best.plan, tmp_path / "run", ExecuteRequest(dry_run=True)) == 0


# ------------------------------------------------------------------ 2 processes, one launch

def tiny_spec() -> Spec:
    """tiny-moe on 2 CPU processes; the schedule is 40 steps of 8 sequences of 128 tokens."""
    return spec_from_dict({"model": {"preset": "tiny-moe"},
                           "cluster": {"gpu": LAB_CPU, "nodes": 1, "gpus_per_node": 2},
                           "training": {"tokens": 40 * 8 * 128, "global_batch_sequences": 8},
                           "runtime": {"torch_adam": True}})


def plan(ep=2, zero=2, precision="fp32"):
    return Plan(2, 1, 1, ZeroStage(zero), Precision(precision), 2, 2, Recompute.NONE,
                Offload.NONE, ep=ep)


#: name -> (plan, option overrides); "interrupted" is resumed to STEPS by the test
CASES = {
    "ep2": (plan(), {}),
    "ep1": (plan(ep=1), {}),
    "ep2-z0": (plan(zero=0), {}),
    "interrupted": (plan(), {"max_steps": 3, "checkpoint_every": 3}),
}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, extensions):
    """Every case trained in one torchrun launch of 2 processes: (runs by name, output)."""
    root = tmp_path_factory.mktemp("moe")
    spec, runs = tiny_spec(), {}
    for name, (p, overrides) in CASES.items():
        options = make_options(spec, p, stories=2000, eval_every=STEPS, seed=7,
                               checkpoint_every=overrides.get("checkpoint_every", 100))
        options = replace(options, max_steps=overrides.get("max_steps", STEPS))
        runs[name] = prepare_run_dir(spec, p, root / name, options, cache_dir=root / "cache")
    return runs, launch_runs(spec, plan(), runs)


def records(run: RunDir, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, run.metrics.read_text().splitlines()) if r["kind"] == kind]


def losses(run: RunDir) -> list[float]:
    return [r["loss"] for r in records(run)]


def test_expert_parallel_run_trains_like_one_process_with_every_expert(matrix):
    """ep 2 (2 experts per rank, tokens exchanged by all-to-all) and ep 1 over dp 2 follow one
    plain PyTorch process holding all 4 experts on the same global batches, within 1e-4 (each
    rank's micro-batch is one of the plain loop's, so capacities and drops are the same)."""
    from executor.train import plain_training
    runs = matrix[0]
    spec, p, options = runs["ep2"].load()
    reference, _ = plain_training(spec, p, runs["ep2"].shards_dir(), options, STEPS)
    assert len(losses(runs["ep2"])) == STEPS
    assert losses(runs["ep2"]) == pytest.approx(reference, abs=1e-4)
    assert losses(runs["ep1"]) == pytest.approx(losses(runs["ep2"]), abs=1e-5)
    assert reference[-1] < reference[0] - 0.3  # it learns


def test_zero_0_reduces_expert_gradients_over_their_own_group(matrix):
    """ZeRO-0 with ep 2 (the engine reduces expert gradients over the expert-data-parallel
    group): the same trajectory within 1e-4.  Not exactly: DeepSpeed clips ZeRO-0 gradients by
    the mean of each rank's norm (runtime/utils.py clip_grad_norm_), whose expert part differs
    by rank, rather than by the global norm ZeRO-2 computes."""
    runs = matrix[0]
    assert losses(runs["ep2-z0"]) == pytest.approx(losses(runs["ep2"]), abs=1e-4)


def test_the_load_balancing_loss_is_reported(matrix):
    """metrics.jsonl carries the routers' load-balancing loss (DeepSpeed's top-2 l_aux summed
    over the 4 layers: 4 x E * sum(me * ce) is 4 x 1 when perfectly balanced), the same with ep
    1 and 2; the training loss stays the cross-entropy alone (it matches the eval loss's
    scale)."""
    runs = matrix[0]
    aux = [r["aux_loss"] for r in records(runs["ep2"])]
    assert len(aux) == STEPS and all(3.0 < a < 8.0 for a in aux), aux
    assert aux == pytest.approx([r["aux_loss"] for r in records(runs["ep1"])], abs=1e-5)


@pytest.mark.parametrize("name", ["ep2", "ep1", "ep2-z0"])
def test_each_rank_holds_the_planners_parameters_and_optimizer_states(matrix, name):
    """actual.json's per-rank elements: parameters are the planner's held count (dense + experts
    / ep); Adam's two moments cover 1/dp of all parameters under ZeRO-2 (the experts partitioned
    over their expert-data-parallel group of dp/ep ranks) and the rank's parameters under
    ZeRO-0."""
    run = matrix[0][name]
    spec, p, _ = run.load()
    stage = stages_to_check(spec.model, 1, p.grad_accum)[0]
    held = stage_params(spec.model, stage, 1, p.ep)
    for counted in json.loads(run.actual.read_text())["elements"]:
        assert counted["params"] == held, counted
        partition = param_counts(spec.model).total // p.dp if p.zero else held
        assert counted["optimizer_states"] == 2 * partition, counted


def test_checkpoint_manifest_covers_the_expert_files_and_resume_is_exact(matrix):
    """DeepSpeed writes one file per expert and layer; the manifest lists them with the rest, and
    the run resumed from step 3 (another launch) repeats the uninterrupted losses exactly."""
    runs = matrix[0]
    run = runs["interrupted"]
    tag = complete_checkpoints(run)[-1]
    manifest = json.loads((run.checkpoints / tag / "executor_complete.json").read_text())
    experts = sorted(f.name for f in (run.checkpoints / tag).glob("layer_*_expert_*"))
    assert len(experts) == 4 * 4  # layers x experts, each written by the rank that holds it
    assert set(experts) <= set(manifest["files"])
    spec, p, _ = run.load()
    assert execute(spec, p, run.path, ExecuteRequest(resume=True, max_steps=STEPS)) == 0
    assert losses(run) == losses(runs["ep2"])


@pytest.mark.parametrize("name", ["ep2", "ep1"])
def test_export_is_the_plain_model_that_ran(matrix, name):
    """The fp32 export (experts collected from the expert-parallel group under their plain
    names) loads into a plain GPT and scores the run's last eval batches as the run did, one
    rank's micro-batch at a time (a MoE layer's capacity depends on the batch it routes)."""
    from executor.data import BatchSampler, TokenDataset
    from executor.sample import load_exported
    run = matrix[0][name]
    spec, p, options = run.load()
    model, _ = load_exported(run.path)
    sampler = BatchSampler(TokenDataset(run.shards_dir(), "val"), spec.model.seq_len,
                           p.micro_batch * p.dp, 0, 1, options.seed)
    scores = []
    with torch.no_grad():
        for _ in range(options.eval_batches):
            x, y = sampler.next_batch()
            scores += [model(*rows).item() for rows in zip(x.split(p.micro_batch),
                                                           y.split(p.micro_batch))]
    assert sum(scores) / len(scores) == pytest.approx(records(run, "eval")[-1]["eval_loss"],
                                                      abs=2e-5)
