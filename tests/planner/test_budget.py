"""Budget mode (planner/budget.py): the family rule, the budget field, the tokens a budget buys,
and the pick."""
import json
import math

import pytest
from click.testing import CliRunner

from planner.capacity.budget import (budget_seconds, family_shape, family_shapes, plan_budget,
                                     planned_spec, states_lower_bound_bytes)
from planner.capacity.scaling import model_flops_per_token
from planner.errors import SpecError
from planner.model.shape import param_counts
from planner.search.engine import search
from planner.spec.loading import load_spec, spec_from_dict
from planner.spec.spec import ModelSpec
from pretrain.cli import main

from ..conftest import ROOT

BUDGET_SPEC = ROOT / "specs" / "budget_64xA100_30days.yaml"


def spec(budget, model="llama2-7b", nodes=8, gpu="A100", **search_):
    return spec_from_dict({"model": model, "cluster": {"gpu": gpu, "nodes": nodes},
                           "training": {"budget": budget, "global_batch_tokens": 4194304},
                           "search": {"precision": "bf16", **search_}})


@pytest.fixture(scope="module")
def shipped():
    return plan_budget(load_spec(BUDGET_SPEC))


# ------------------------------------------------------------------------------ family rule

@pytest.mark.parametrize("preset", ["llama2-7b", "llama2-13b"])
def test_family_rule_reproduces_llama2_shapes(preset):
    """Heads of 128, d/L = 128 from d 4096, d_ff = 8/3 d rounded up to 256: Llama 2's 7B and 13B."""
    template = ModelSpec.model_validate(preset)
    shape = family_shape(template, template.d_model)
    for field in ("n_layers", "n_heads", "n_kv_heads", "d_ff"):
        assert getattr(shape, field) == getattr(template, field), field
    assert param_counts(shape).total == param_counts(template).total


def test_family_spans_50m_to_1t_in_15_to_25_shapes():
    shapes = family_shapes(ModelSpec.model_validate("llama2-7b"))
    sizes = [param_counts(m).total for m in shapes]
    assert 15 <= len(shapes) <= 25
    assert sizes == sorted(sizes)
    assert 4e7 <= sizes[0] <= 1e8 and 5e11 <= sizes[-1] <= 1.5e12
    assert all(3 <= m.d_model / m.n_layers <= 130 for m in shapes)


def test_family_keeps_the_templates_gqa_group_and_gpt2_style():
    llama3 = family_shape(ModelSpec.model_validate("llama3-8b"), 4096)
    assert (llama3.n_heads, llama3.n_kv_heads, llama3.vocab_size) == (32, 8, 128256)
    gpt = family_shape(ModelSpec.model_validate("gpt2-124m"), 1024)
    assert gpt.d_ff == 4096 and gpt.tied_embeddings and gpt.max_positions == gpt.seq_len


# ------------------------------------------------------------------------------ budget field

@pytest.mark.parametrize("budget, path, words", [
    ({}, "training.budget", "give one of gpu_hours, days, flops, dollars"),
    ({"days": 30, "flops": 1e23}, "training.budget.flops", "exactly one"),
    ({"dollars": 1e6}, "training.budget.price_per_gpu_hour", "needs price_per_gpu_hour"),
    ({"days": 3, "price_per_gpu_hour": 2.0}, "training.budget.price_per_gpu_hour", "only used"),
    ({"days": -1}, "training.budget.days", "greater than 0"),
    ({"weeks": 2}, "training.budget.weeks", "unknown key"),
], ids=["none", "two", "dollars-without-price", "price-without-dollars", "negative", "unknown"])
def test_bad_budget_names_its_path(budget, path, words):
    with pytest.raises(SpecError) as info:
        spec(budget)
    assert info.value.path == path
    assert words in info.value.problem


def test_tokens_and_budget_are_exclusive():
    with pytest.raises(SpecError) as info:
        spec_from_dict({"model": "llama2-7b", "cluster": {"gpu": "A100"},
                        "training": {"tokens": 1e12, "budget": {"days": 1},
                                     "global_batch_sequences": 8}})
    assert info.value.path == "training.budget"
    with pytest.raises(SpecError) as info:
        spec_from_dict({"model": "llama2-7b", "cluster": {"gpu": "A100"},
                        "training": {"global_batch_sequences": 8}})
    assert info.value.path == "training.tokens"


def test_days_gpu_hours_and_dollars_buy_the_same_time():
    days = spec({"days": 30})
    hours = spec({"gpu_hours": 30 * 24 * 64})
    money = spec({"dollars": 30 * 24 * 64 * 1.5, "price_per_gpu_hour": 1.5})
    seconds = {budget_seconds(s.training.budget, 64) for s in (days, hours, money)}
    assert seconds == {30 * 86400.0}
    assert plan_budget(hours).pick.model == plan_budget(days).pick.model


# ------------------------------------------------------------------------------------- picks

def test_pick_has_the_lowest_loss_and_spends_the_budget(shipped):
    feasible = [c for c in shipped.candidates if c.feasible]
    assert shipped.pick.loss == min(c.loss for c in feasible)
    seconds = 30 * 86400
    for c in feasible:
        step = c.best.flops.tokens
        assert c.tokens / c.best.tokens_per_s <= seconds  # within the budget
        assert (c.tokens + step) / c.best.tokens_per_s > seconds  # whole steps, none left over
        assert c.result.spec.training.tokens == c.tokens and c.result.spec.model == c.model


def test_shipped_budget_picks_a_near_compute_optimal_model(shipped):
    """At a fixed budget the loss is U-shaped in N: small models starve on parameters, large
    ones on tokens; the pick sits near the law's ~20 tokens/param."""
    pick = shipped.pick
    losses = [c.loss for c in shipped.candidates if c.feasible]
    assert losses[0] > pick.loss < losses[-1]
    assert 8 <= pick.tokens_per_param <= 60
    assert 5e9 <= pick.params <= 3e10


def test_skipped_candidates_really_have_no_plan(shipped):
    """The model-state lower bound only skips shapes the search would reject too."""
    skipped = [c for c in shipped.candidates if c.result is None]
    assert skipped
    base = load_spec(BUDGET_SPEC)
    usable = base.cluster.gpu.memory_bytes * (1 - base.search.memory_headroom)
    for c in skipped:
        assert states_lower_bound_bytes(base, c.params) > usable
    assert search(planned_spec(base, skipped[0].model)).best is None


def test_flops_budget_fixes_the_tokens_whatever_the_plan():
    s = spec({"flops": 1e22}, nodes=2)
    for c in plan_budget(s).candidates:
        if c.feasible:
            step = c.best.flops.tokens
            expected = math.floor(1e22 / model_flops_per_token(c.model) / step) * step
            assert c.tokens == expected


def test_a_tiny_budget_buys_nothing():
    result = plan_budget(spec({"gpu_hours": 0.001}, nodes=1))
    assert result.pick is None
    assert all(not c.feasible for c in result.candidates)


# ----------------------------------------------------------------------------------------- CLI

def test_cli_budget_mode_text_and_json():
    text = CliRunner().invoke(main, [str(BUDGET_SPEC)])
    assert text.exit_code == 0, text.output
    assert "<- pick" in text.stdout and "budget mode" in text.stdout
    assert "best plan" in text.stdout  # the pick's own plan report follows the table
    out = CliRunner().invoke(main, [str(BUDGET_SPEC), "--json"])
    report = json.loads(out.stdout)
    pick = report["candidates"][report["pick"]]
    assert report["mode"] == "budget" and report["plan"]["model"]["name"] == pick["model"]
    assert pick["predicted_loss"] == min(c["predicted_loss"] for c in report["candidates"]
                                         if c["predicted_loss"] is not None)
