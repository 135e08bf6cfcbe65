"""Inverse questions (planner/inverse.py): the sympy answers equal a brute-force scan of the same
estimate, and every answer names what binds."""
from dataclasses import replace
from pathlib import Path

import pytest
import sympy

from planner.capacity.budget import FINE_WIDTHS as WIDTHS
from planner.capacity.budget import Candidate, evaluate, family_shape, plan_budget
from planner.capacity.inverse import largest_micro_batch, largest_seq_len, seq_len_values
from planner.capacity.scaling import law_of
from planner.capacity.sizing import fewest_gpus, largest_model
from planner.capacity.whatif import edit
from planner.errors import SpecError
from planner.estimate.predict import estimate
from planner.model.shape import param_counts
from planner.search.engine import search
from planner.search.rules import check
from planner.spec.loading import load_spec, spec_from_dict
from planner.spec.units import GiB

ROOT = Path(__file__).resolve().parents[2]


def shipped(name):
    return load_spec(ROOT / "specs" / name)


def written(model, gpu="A100", nodes=1, per_node=8, batch=None, **search_):
    training = {"tokens": 1e10, **(batch or {"global_batch_sequences": 256})}
    return spec_from_dict({"model": model, "cluster": {"gpu": gpu, "nodes": nodes,
                                                       "gpus_per_node": per_node},
                           "training": training, "search": search_})


SPECS = {
    "7b-64xA100": lambda: shipped("7b_on_64xA100.yaml"),
    "125m-1xH100": lambda: shipped("125m_on_1xH100.yaml"),
    "1.1b-1xH200": lambda: shipped("1.1b_on_1xH200.yaml"),
    "gpt2-eager": lambda: written({"preset": "gpt2-124m", "attention": "eager"}, per_node=1,
                                  recompute="none", zero=0),
    "13b-pipeline": lambda: written("llama2-13b", nodes=2, pp=4, tp=2, zero=1,
                                    batch={"global_batch_tokens": 1048576}),
}


def brute_micro_batch(spec, plan):
    gb = spec.global_batch_sequences
    best = None
    for mb in range(1, gb // plan.dp + 1):
        p = replace(plan, micro_batch=mb, grad_accum=max(1, gb // (plan.dp * mb)))
        if check(spec, p) is None and estimate(spec, p, with_time=False).fits_comfortably:
            best = mb
    return best


def brute_seq_len(spec, plan, values):
    best = None
    for s in values:
        try:
            edited = edit(spec, {"model.seq_len": s})
        except SpecError:
            continue
        ga = max(1, edited.global_batch_sequences // (plan.dp * plan.micro_batch))
        p = replace(plan, grad_accum=ga)
        if check(edited, p) is None and estimate(edited, p, with_time=False).fits_comfortably:
            best = s
    return best


@pytest.mark.parametrize("name", SPECS)
def test_largest_micro_batch_agrees_with_brute_force(name):
    spec = SPECS[name]()
    plan = search(spec).best.plan
    answer = largest_micro_batch(spec, plan)
    assert answer.value == brute_micro_batch(spec, plan)
    assert answer.binding


@pytest.mark.parametrize("name", SPECS)
def test_largest_seq_len_agrees_with_brute_force(name):
    spec = SPECS[name]()
    plan = search(spec).best.plan
    cap = 16384
    answer = largest_seq_len(spec, plan, multiple_of=128, cap=cap)
    assert answer.value == brute_seq_len(spec, plan, seq_len_values(spec, 128, cap))


def test_micro_batch_is_solved_symbolically_and_names_the_moment():
    """Llama-2-7B on 64 A100s at 2,048 tokens: memory is affine in the micro-batch; the root is
    between 3 and 4, and 3 does not divide the global batch."""
    answer = largest_micro_batch(edit(shipped("7b_on_64xA100.yaml"), {"model.seq_len": 2048}))
    assert answer.method == "sympy" and answer.value == 2
    assert 3 <= answer.memory_limit < 4
    assert "memory alone allows micro_batch up to 3" in answer.binding
    x = sympy.Symbol("x")
    poly = sympy.sympify(answer.expression.removesuffix(" GiB"))
    assert float(poly.subs(x, 2)) == pytest.approx(answer.estimate.required_bytes / GiB, rel=1e-5)


def test_the_largest_micro_batch_fits_comfortably():
    """At 4,096 tokens micro-batch 2 is tight (the best plan runs it), so the largest that fits
    with the spec's allocator fragmentation is 1, and the answer says why 2 is not."""
    answer = largest_micro_batch(shipped("7b_on_64xA100.yaml"))
    assert answer.value == 1
    assert answer.binding.startswith("memory at backward through the loss (micro_batch 2 needs")


def test_divisibility_binds_when_memory_would_allow_more():
    """GPT-2 124M on one H100, 512 sequences per step: mb 65..75 would fit in memory but do not
    divide the global batch, and 128 does not fit."""
    answer = largest_micro_batch(shipped("125m_on_1xH100.yaml"))
    assert answer.value == 64
    assert answer.binding.startswith("batch not divisible")
    assert "memory alone allows micro_batch up to" in answer.binding


def test_eager_attention_is_quadratic_in_seq_len():
    spec = SPECS["gpt2-eager"]()
    answer = largest_seq_len(spec, search(spec).best.plan, multiple_of=128, cap=16384)
    assert answer.method == "sympy"
    assert sympy.degree(sympy.sympify(answer.expression.removesuffix(" GiB"))) == 2


def test_fewest_gpus_is_the_boundary():
    spec = written("llama2-13b", nodes=4, zero=3, recompute="full")
    answer = fewest_gpus(spec)
    assert answer.value == 4 and "out of memory" in answer.binding

    def feasible(gpus):
        cluster = spec.cluster.model_copy(update={"nodes": max(1, gpus // 8),
                                                  "gpus_per_node": min(gpus, 8)})
        return search(spec.model_copy(update={"cluster": cluster})).best is not None

    assert feasible(answer.value) and not feasible(2) and not feasible(1)


def test_largest_model_is_budget_modes_pick_and_the_lowest_loss_of_a_scan():
    """One algorithm: --max model answers what budget mode picks, and no width of the fine grid
    (multiples of 256) up to twice the pick's predicts a lower loss."""
    spec = spec_from_dict({"model": "llama2-7b", "cluster": {"gpu": "H100", "nodes": 1},
                           "training": {"budget": {"days": 7}, "global_batch_tokens": 1048576},
                           "search": {"precision": "bf16"}})
    law = law_of(spec)
    answer = largest_model(spec)
    pick = plan_budget(spec).pick
    assert answer.value == pick.params
    assert answer.binding.startswith("the budget:")

    def loss(d):
        model = family_shape(spec.model, d)
        c = evaluate(spec, Candidate(model, param_counts(model).total), law)
        return c.loss if c.feasible else float("inf")

    scan = {d: loss(d) for d in WIDTHS if d <= 2 * pick.model.d_model}
    assert min(scan, key=scan.get) == pick.model.d_model


def test_largest_model_at_a_fixed_ratio_agrees_with_a_scan_of_widths():
    spec = spec_from_dict({"model": "llama2-7b", "cluster": {"gpu": "H100", "nodes": 1},
                           "training": {"budget": {"days": 7}, "global_batch_tokens": 1048576},
                           "search": {"precision": "bf16"}})
    law = law_of(spec)
    answer = largest_model(spec, tokens_per_param=20)

    def ok(d):
        model = family_shape(spec.model, d)
        n = param_counts(model).total
        c = evaluate(spec, Candidate(model, n), law)
        return c.feasible and c.tokens >= 20 * law.params(param_counts(model))

    largest = max(d for d in WIDTHS if d <= 6144 and ok(d))
    assert answer.value == param_counts(family_shape(spec.model, largest)).total
    assert answer.binding.startswith("budget:")


def test_replanned_seq_len_agrees_with_a_scan():
    """Without a plan the search re-plans at each length: the answer has a plan, and no length
    above it up to twice the answer has one."""
    spec = shipped("1.1b_on_1xH200.yaml")
    answer = largest_seq_len(spec, multiple_of=1024, cap=2**20)
    assert answer.method.startswith("bisection, re-planned")
    values = seq_len_values(spec, 1024, 2**20)

    def feasible(s):
        return search(edit(spec, {"model.seq_len": s})).best is not None

    assert feasible(answer.value)
    assert not any(feasible(s) for s in values if answer.value < s <= 2 * answer.value)
    assert answer.binding.startswith(f"seq_len {values[values.index(answer.value) + 1]}:")


def test_fewest_gpus_in_30_days_agrees_with_a_brute_force_sweep():
    """plan specs/70b_on_512xH100.yaml --min gpus --days 30: every whole-node count below the
    answer either has no plan or trains 2e12 tokens in more than 30 days."""
    spec = shipped("70b_on_512xH100.yaml")
    answer = fewest_gpus(spec, days=30)
    assert answer.value is not None and answer.estimate.days_to_train(2e12) <= 30
    nodes = answer.value // 8

    def days(n):
        on = edit(spec, {"cluster.nodes": n, "search.dp": "auto"})
        best = search(on).best
        return None if best is None else best.days_to_train(2e12)

    assert days(nodes) <= 30
    for n in range(1, nodes):
        d = days(n)
        assert d is None or d > 30, n
    assert "30 days" in answer.binding or "> 30" in answer.binding


def test_largest_model_needs_a_budget():
    with pytest.raises(SpecError) as info:
        largest_model(shipped("7b_on_64xA100.yaml"))
    assert info.value.path == "training.budget"
