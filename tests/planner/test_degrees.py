"""Degrees (one value for the parallel degrees), LocalDims (the per-rank shape) and the layer
split, against layouts worked out by hand and against the executor's DeepSpeed topology order."""
import numpy as np
import pytest

from planner.model.local import local_dims
from planner.model.shape import first_stage_layers, last_stage_layers, layers_per_stage
from planner.plan.degrees import ORDERS, Degrees
from planner.plan.strategy import Plan, PlanBatch
from planner.spec.spec import ModelSpec
from planner.spec.units import Precision, Recompute, ZeroStage

LLAMA = ModelSpec.model_validate({"arch": "llama", "n_layers": 10, "d_model": 512, "n_heads": 8,
                                  "n_kv_heads": 2, "d_ff": 1536, "vocab_size": 32000,
                                  "seq_len": 1024})


def plan(dp=2, tp=2, pp=2, sp=False, mb=4):
    return Plan(dp, tp, pp, ZeroStage.OPTIMIZER, Precision.BF16, mb, 8, Recompute.NONE,
                sequence_parallel=sp)


def test_world_size_and_the_mismatch_names_the_operands():
    d = Degrees(dp=4, tp=2, pp=2)
    assert d.world_size == 16 and d.model_parallel == 4
    assert d.mismatch(16) is None
    assert d.mismatch(32) == "dp(4) * tp(2) * pp(2) != world size (32)"


def test_groups_tp_innermost():
    """tp, dp, pp order on 8 ranks with dp2·tp2·pp2: tp pairs are adjacent ranks, dp pairs two
    apart, pipeline pairs four apart (DeepSpeed's PipeModelDataParallelTopology)."""
    d = Degrees(dp=2, tp=2, pp=2)
    assert d.groups("tp") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert d.groups("dp") == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert d.groups("pp") == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert d.coords(6) == {"tp": 0, "cp": 0, "dp": 1, "pp": 1}
    assert all(d.rank(d.coords(r)) == r for r in range(8))


def test_context_parallel_ranks_sit_between_tp_and_dp():
    """Megatron-Core's tp-cp-dp-pp order: cp groups are tp apart, dp groups tp x cp apart; the
    world is the product of all four degrees."""
    d = Degrees(dp=2, tp=2, pp=1, cp=2)
    assert d.world_size == 8
    assert d.groups("tp") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert d.groups("cp") == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert d.groups("dp") == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert d.mismatch(16) == "dp(2) * tp(2) * pp(1) * cp(2) != world size (16)"


@pytest.mark.parametrize("order", ORDERS, ids=",".join)
def test_every_rank_is_in_exactly_one_group_per_axis(order):
    d = Degrees(dp=3, tp=4, pp=2)
    for axis in ("dp", "tp", "pp", "cp"):
        groups = d.groups(axis, order)
        assert sorted(r for g in groups for r in g) == list(range(24))
        assert all(len(g) == d.sizes()[axis] for g in groups)


def test_strides_of_arrays_match_one_by_one():
    batch = Degrees(dp=np.array([4, 2]), tp=np.array([2, 8]), pp=np.array([1, 4]))
    strides = batch.strides(ORDERS[0])
    assert list(strides["dp"]) == [2, 8] and list(strides["pp"]) == [8, 16]


def test_plan_degrees_and_serialisation_round_trip():
    p = plan(sp=True)
    assert p.degrees == Degrees(2, 2, 2)
    assert Plan.from_dict(p.to_dict()) == p
    assert p.to_dict()["zero"] == 1 and p.to_dict()["precision"] == "bf16"
    batch = PlanBatch.of([p, plan(dp=4, tp=1)])
    assert batch.plan(0) == p and list(batch.degrees.world_size) == [8, 8]


def test_local_dims_split_heads_ffn_and_vocab_over_tp():
    ld = local_dims(LLAMA, plan(tp=2))
    assert (ld.heads, ld.kv_heads, ld.ffn, ld.vocab) == (4, 1, 768, 16000)
    assert (ld.q_width, ld.kv_width, ld.d_model) == (256, 64, 512)
    assert ld.seq == 1024 and ld.tokens == 4 * 1024
    assert ld.norm_share == 1.0 and local_dims(LLAMA, plan(tp=2, sp=True)).norm_share == 0.5


def test_local_dims_of_a_batch_equal_each_plans():
    plans = [plan(tp=1), plan(tp=2, sp=True), plan(tp=4)]
    batch = local_dims(LLAMA, PlanBatch.of(plans))
    for i, p in enumerate(plans):
        one = local_dims(LLAMA, p)
        assert batch.heads[i] == one.heads and batch.ffn[i] == one.ffn
        assert batch.norm_share[i] == one.norm_share


@pytest.mark.parametrize("n,pp", [(10, 1), (10, 3), (10, 4), (32, 8), (7, 7)])
def test_one_layer_split(n, pp):
    split = layers_per_stage(n, pp)
    assert sum(split) == n and max(split) - min(split) <= 1
    assert first_stage_layers(n, pp) == split[0] and last_stage_layers(n, pp) == split[-1]
    arrays = first_stage_layers(n, np.array([pp])), last_stage_layers(n, np.array([pp]))
    assert (arrays[0][0], arrays[1][0]) == (split[0], split[-1])

