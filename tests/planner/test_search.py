"""Plan search: the candidates the axes generate, rejection counting, ranking, and the nearest
fix for specs with no feasible plan."""
from planner.capacity.advice import nearest_fix
from planner.capacity.sizing import fewest_gpus
from planner.search.engine import candidates, micro_batches, parallel_degrees, search
from planner.spec.loading import load_spec, spec_from_dict
from planner.spec.units import Recompute, ZeroStage


def spec(model="llama2-7b", nodes=8, per_node=8, gpu="A100-80GB-SXM", batch=1024, **search_):
    return spec_from_dict({"model": model,
                           "cluster": {"gpu": gpu, "nodes": nodes, "gpus_per_node": per_node},
                           "training": {"tokens": 1e12, "global_batch_sequences": batch},
                           "search": search_})


def test_auto_degrees_factor_the_world_size():
    quads = list(parallel_degrees(spec()))
    assert {cp for *_, cp in quads} == {1}  # 4,096 tokens: no cp leaves a rank 4,096
    triples = [q[:3] for q in quads]
    assert all(dp * tp * pp == 64 for dp, tp, pp in triples)
    assert {tp for _, tp, _ in triples} == {1, 2, 4, 8}  # divisors of the 8-GPU node
    assert max(pp for _, _, pp in triples) == 32  # up to the layer count
    assert len(triples) == 6 + 6 + 5 + 4  # tp·pp must divide 64


def test_auto_micro_batch_is_powers_of_two_up_to_the_rank_share():
    assert micro_batches(spec(batch=64), dp=16) == (1, 2, 4)


def test_pinned_spec_has_exactly_one_candidate():
    s = spec(dp=16, tp=4, pp=1, zero=2, precision="bf16", micro_batch=2, recompute="full")
    (only,) = list(candidates(s))
    assert (only.dp, only.tp, only.pp, only.zero, only.micro_batch, only.grad_accum,
            only.recompute) == (16, 4, 1, ZeroStage.GRADIENTS, 2, 32, Recompute.FULL)
    result = search(s)
    assert result.evaluated == 1 and result.best.plan == only


def test_rejections_are_counted_by_reason():
    result = search(spec())
    assert result.evaluated == len(result.feasible) + len(result.rejected)
    assert sum(result.by_reason.values()) == len(result.rejected)
    assert result.by_reason["pipeline needs ZeRO 0/1"] > 0
    assert result.by_reason["out of memory"] > 0


def test_ranking_prefers_no_recompute_and_no_pipeline_bubble():
    best = search(spec()).best.plan
    assert best.recompute is Recompute.NONE and best.pp == 1


def test_every_feasible_plan_fits_and_the_best_is_first():
    result = search(spec())
    assert all(e.fits for e in result.feasible)
    assert result.feasible[0] is result.best


def test_shipped_7b_spec_finds_a_plan(root):
    result = search(load_spec(root / "specs" / "7b_on_64xA100.yaml"))
    assert result.best is not None and result.best.plan.world_size == 64


def test_nearest_fix_names_the_stage_and_recompute_that_fit():
    s = spec(nodes=1, per_node=8, zero=0, recompute="none", tp=1, pp=1, micro_batch=1)
    assert search(s).best is None
    fixes = nearest_fix(s)
    assert any("ZeRO-" in f for f in fixes)


def test_nearest_fix_counts_gpus_with_the_one_fewest_gpus_algorithm():
    """Llama-2-70B pinned to ZeRO-3 without tensor/pipeline parallelism on one node: 16
    bytes/param of model states over 8 GPUs is ~129 GiB each.  The fix's GPU count is
    fewest_gpus's answer, and that many GPUs (dp free) do have a plan."""
    s = spec(model="llama2-70b", nodes=1, per_node=8, zero=3, tp=1, pp=1, micro_batch=1,
             recompute="full")
    assert search(s).best is None
    answer = fewest_gpus(s)
    assert answer.value is not None and answer.value > 8
    assert f"needs at least {answer.value} GPUs" in nearest_fix(s)[-1]
    nodes = answer.value // 8
    bigger = s.model_copy(update={"cluster": s.cluster.model_copy(update={"nodes": nodes}),
                                  "search": s.search.model_copy(update={"dp": "auto"})})
    assert search(bigger).best is not None
