"""Fuzzing the boundary (issue 12): random specs, mutated from the shipped ones or built small
and well formed, go through spec_from_dict and, when valid, the search and the report text.
Nothing may escape but the project's own errors (PlannerError), each one line.  Derandomized:
CI runs the same 2,600 examples every time."""
import copy
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from planner.errors import PlannerError
from planner.estimate.memory import peak_bytes
from planner.report import to_text
from planner.search.engine import candidate_batch, search
from planner.spec.catalog import gpu_catalog, model_presets
from planner.spec.loading import _relative_to, _SpecLoader, spec_from_dict
from planner.spec.spec import (MAX_D_FF, MAX_D_MODEL, MAX_LAYERS, MAX_MICRO_BATCH, MAX_SEQ_LEN,
                               MAX_VOCAB)

SPECS = Path(__file__).resolve().parents[2] / "specs"
#: what each shipped spec says, as written (paths made absolute, as load_spec does)
SHIPPED = [_relative_to(yaml.load(p.read_text(), Loader=_SpecLoader), SPECS)
           for p in sorted(SPECS.glob("*.yaml"))]
FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---------------------------------------------------------------------------- values

#: numbers at the edges: zero, signs, int64 and float64 limits, the spec ceilings and past them
EDGE_NUMBERS = [0, -1, 1, 2, 3, 7, 2**31, 2**63, 10**15, 10**16, 10**400, -10**400, 0.5, -0.0,
                1e-300, 1e300, math.inf, -math.inf, math.nan, 1e15, MAX_LAYERS + 1,
                MAX_MICRO_BATCH + 1, 2**20 + 1]
scalars = st.one_of(
    st.integers(), st.integers(-10, 100), st.sampled_from(EDGE_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.text(max_size=12), st.sampled_from(["auto", "chinchilla", "llama2-7b", "H100", "bf16",
                                           "full", "", "8", "1e8", "lama2-7b"]))
junk = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=12)


def deep(levels: int):
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


# -------------------------------------------------------------------------- mutations

def _paths(data, prefix=()):
    """Every (path to a mapping, key) in a nested spec dict."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield prefix, key
            yield from _paths(value, (*prefix, key))


def _at(data, path):
    for key in path:
        data = data[key]
    return data


def typo(word: str, draw) -> str:
    if not word:
        return "x"
    i = draw(st.integers(0, len(word) - 1))
    kind = draw(st.sampled_from(["drop", "double", "swap", "case", "plural"]))
    if kind == "drop":
        return word[:i] + word[i + 1:] or "x"
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    if kind == "swap" and i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == "case":
        return word.upper()
    return word + "s"


def nudge(value, draw):
    """A value of the same kind, often still valid: a count doubled, halved or off by one, a
    float scaled, a name misspelt or swapped for another catalog name, a list shortened."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return draw(st.sampled_from([value * 2, max(1, value // 2), value + 1, max(1, value - 1),
                                     1, value * 1000, 3, 7]))
    if isinstance(value, float):
        return value * draw(st.sampled_from([0.5, 2.0, 1e-3, 1e3, 0.0, -1.0]))
    if isinstance(value, str):
        return draw(st.one_of(st.just(typo(value, draw)), st.sampled_from(NAMES)))
    if isinstance(value, list) and value:
        return value[:-1] or value * 2
    return value


NAMES = sorted(gpu_catalog()) + sorted(model_presets()) + ["auto", "chinchilla", "bf16", "fp32"]


@st.composite
def mutated(draw):
    """A shipped spec with one to three of: a value nudged (often still valid, so the search
    runs on odd values), a key dropped, misspelt or added, a value replaced by junk, an edge
    number, a deep list, a list or a mapping."""
    data = copy.deepcopy(draw(st.sampled_from(SHIPPED)))
    for _ in range(draw(st.integers(1, 3))):
        places = list(_paths(data))
        if not places:
            break
        path, key = draw(st.sampled_from(places))
        parent = _at(data, path)
        action = draw(st.sampled_from(["nudge"] * 6 + ["drop", "rename", "junk", "edge", "deep",
                                                        "nest", "add", "list"]))
        if action == "nudge":
            parent[key] = nudge(parent[key], draw)
        elif action == "drop":
            parent.pop(key)
        elif action == "rename":
            parent[typo(str(key), draw)] = parent.pop(key)
        elif action == "junk":
            parent[key] = draw(junk)
        elif action == "edge":
            parent[key] = draw(st.sampled_from(EDGE_NUMBERS))
        elif action == "deep":
            parent[key] = deep(draw(st.integers(1, 60)))
        elif action == "nest":
            parent[key] = {key: parent[key]}
        elif action == "add":
            parent[draw(st.text(min_size=1, max_size=10))] = draw(junk)
        else:
            parent[key] = draw(st.lists(scalars, max_size=6))
    return data


# ----------------------------------------------------------------- small, well-formed specs

SMALL_GPUS = sorted(gpu_catalog())
SMALL_PRESETS = ["tiny-gpt", "mini-gpt", "tiny-llama", "gpt2-124m"]


@st.composite
def small_specs(draw):
    """A small spec of valid shape: a tiny preset or a custom model of a few layers, up to four
    nodes of up to eight GPUs, a few search axes pinned or listed (so each search is quick)."""
    if draw(st.booleans()):
        model = draw(st.sampled_from(SMALL_PRESETS))
    else:
        heads = draw(st.sampled_from([1, 2, 4, 8]))
        arch = draw(st.sampled_from(["gpt2", "llama"]))
        model = {"arch": arch, "n_layers": draw(st.integers(1, 8)),
                 "d_model": heads * draw(st.sampled_from([8, 16, 32, 64])), "n_heads": heads,
                 "vocab_size": draw(st.integers(16, 4096)),
                 "seq_len": draw(st.sampled_from([16, 64, 128, 256])),
                 "attention": draw(st.sampled_from(["flash", "eager"]))}
        if arch == "llama":
            model["d_ff"] = draw(st.integers(8, 1024))
            model["n_kv_heads"] = draw(st.sampled_from([k for k in (1, 2, 4, 8) if heads % k == 0]))
    cluster = {"gpu": draw(st.sampled_from(SMALL_GPUS)), "nodes": draw(st.integers(1, 4)),
               "gpus_per_node": draw(st.sampled_from([1, 2, 4, 8]))}
    training = {"tokens": draw(st.one_of(st.floats(1e6, 1e13), st.just("chinchilla"))),
                "global_batch_sequences": draw(st.integers(1, 512))}
    axes = {"zero": st.sampled_from([0, 1, 2, 3, [0, 3], "auto"]),
            "precision": st.sampled_from(["bf16", "fp16", "fp32", ["bf16", "fp32"], "auto"]),
            "micro_batch": st.sampled_from([1, 2, [1, 4], "auto"]),
            "recompute": st.sampled_from(["none", "selective", "full", "auto"]),
            "offload": st.sampled_from(["none", "optimizer_cpu", "params_cpu", "auto"]),
            "sequence_parallel": st.sampled_from([False, True, "auto"]),
            "tp": st.sampled_from([1, 2, [1, 2], "auto"]), "pp": st.sampled_from([1, 2, "auto"]),
            "memory_headroom": st.sampled_from([0.0, 0.05, 0.5])}
    chosen = draw(st.lists(st.sampled_from(sorted(axes)), unique=True, max_size=5))
    search_ = {name: draw(axes[name]) for name in chosen}
    spec = {"model": model, "cluster": cluster, "training": training, "search": search_}
    if draw(st.booleans()):
        spec["runtime"] = {"virtual_stages": draw(st.integers(1, 4)),
                           "overlap_comm": draw(st.sampled_from([None, True, False]))}
    return spec


# ------------------------------------------------------------------------------ the check

def plan_or_refuse(data) -> str:
    """What `plan` does with a spec mapping, short of printing: the project's own error (one
    line), or a search and its report text."""
    try:
        spec = spec_from_dict(data)
    except PlannerError as exc:
        assert "\n" not in str(exc) and str(exc), repr(str(exc))
        return "refused"
    try:
        result = search(spec)
        if spec.training.tokens is not None:  # budget mode and the lab report elsewhere
            assert to_text(result, [], "fuzz")
    except PlannerError as exc:
        assert "\n" not in str(exc) and str(exc), repr(str(exc))
        return "no plan"
    assert result.evaluated == len(result.feasible) + len(result.rejected)
    return "planned" if result.best is not None else "no plan"


@settings(FUZZ, max_examples=2000)
@given(mutated())
def test_mutated_shipped_specs_raise_only_project_errors(data):
    event(plan_or_refuse(data))


@settings(FUZZ, max_examples=600)
@given(small_specs())
def test_small_specs_validate_and_plan(data):
    """Well formed by construction: each validates (a refusal here would be a spec rule the
    generator does not know, so it must say why in one line) and most plan."""
    event(plan_or_refuse(data))


def test_the_fuzz_generators_reach_every_outcome():
    """Not a vacuous fuzz: the mutations both break specs and leave some valid, and the small
    specs mostly validate, some with a plan."""
    from hypothesis import find
    assert plan_or_refuse(find(mutated(), lambda d: plan_or_refuse(d) == "refused",
                               settings=FUZZ)) == "refused"
    assert plan_or_refuse(find(mutated(), lambda d: plan_or_refuse(d) == "planned",
                               settings=FUZZ)) == "planned"
    assert plan_or_refuse(find(small_specs(), lambda d: plan_or_refuse(d) == "planned",
                               settings=FUZZ)) == "planned"


# ------------------------------------------------------------------------ the ceilings' corner

LARGEST = {"arch": "llama", "n_layers": MAX_LAYERS, "d_model": MAX_D_MODEL, "d_ff": MAX_D_FF,
           "vocab_size": MAX_VOCAB, "seq_len": MAX_SEQ_LEN}


@pytest.mark.parametrize("attention", ["flash", "eager"])
@pytest.mark.parametrize("heads", [MAX_D_MODEL, 128], ids=["head-dim-1", "128-heads"])
def test_the_largest_spec_the_ceilings_allow_stays_in_range(attention, heads):
    """Every model ceiling at once, the largest micro-batch, fp32 and bf16: the memory estimate
    of every candidate is finite and positive (an int64 wrap-around would turn negative), and
    the search runs without an internal error."""
    spec = spec_from_dict({
        "model": {**LARGEST, "attention": attention, "n_heads": heads, "n_kv_heads": heads},
        "cluster": {"gpu": "H200", "nodes": 1, "gpus_per_node": 1},
        "training": {"tokens": 1e15, "global_batch_sequences": MAX_MICRO_BATCH},
        "search": {"micro_batch": [1, MAX_MICRO_BATCH], "precision": ["fp32", "bf16"],
                   "recompute": "auto", "offload": "auto", "zero": "auto"}})
    peak = peak_bytes(spec, candidate_batch(spec))
    assert np.isfinite(peak).all() and (peak > 0).all()
    assert search(spec).best is None  # some 4.5e15 parameters fit no GPU
