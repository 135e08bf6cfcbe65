"""What-if (planner/whatif.py): an edit by dotted paths plans exactly like the edited YAML planned
from scratch; sweeps; the CLI's --set and --sweep."""
import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.capacity.whatif import edit, parse_assignment, sweep, what_if
from planner.errors import SpecError
from planner.search.engine import search
from planner.spec.loading import load_spec, spec_from_dict, spec_to_dict
from pretrain.cli import main

ROOT = Path(__file__).resolve().parents[2]
SPEC_FILES = sorted((ROOT / "specs").glob("*.yaml"))
SPEC_7B = ROOT / "specs" / "7b_on_64xA100.yaml"

#: small specs as a user writes them (short forms included), so each search is quick
BASES = {
    "gpt2-short-forms": {"model": "gpt2-124m", "cluster": {"gpu": "a100", "nodes": 1},
                         "training": {"tokens": 1e9, "global_batch_sequences": 64}},
    "tinyllama-2-nodes": {"model": {"preset": "tinyllama-1.1b"},
                          "cluster": {"gpu": "H100", "nodes": 2, "gpus_per_node": 8},
                          "training": {"tokens": "chinchilla", "global_batch_tokens": 262144},
                          "search": {"zero": [1, 2, 3]}},
}

#: paths a capacity planner asks about, with values (some invalid on purpose)
OVERRIDES = {
    "cluster.nodes": st.integers(0, 4),
    "cluster.gpus_per_node": st.sampled_from([1, 2, 4, 8]),
    "cluster.gpu": st.sampled_from(["A100", "A100-40GB", "H100", "H200", "B200"]),
    "model.seq_len": st.sampled_from([256, 512, 1000, 1024, 2048]),
    "model.n_layers": st.integers(1, 24),
    "training.global_batch_sequences": st.sampled_from([8, 16, 64]),
    "search.zero": st.sampled_from([0, 1, 2, 3, "auto"]),
    "search.recompute": st.sampled_from(["none", "full", "auto"]),
}

#: how a user spells a section given as one string when they add a key to it
SHORT = {("model",): "preset", ("cluster", "gpu"): "name"}


def written_from_scratch(base: dict, overrides: dict) -> dict:
    """The YAML mapping a user would write for the edited spec."""
    data = copy.deepcopy(base)
    for path, value in overrides.items():
        keys = tuple(path.split("."))
        node = data
        for i, key in enumerate(keys[:-1]):
            if isinstance(node.get(key), str):
                node[key] = {SHORT[keys[:i + 1]]: node[key]}
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return data


def outcome(make):
    """('error', path) or the search result's comparable facts."""
    try:
        result = make()
    except SpecError as exc:
        return ("error", exc.path)
    best = result.best
    facts = (result.evaluated, len(result.feasible), dict(result.by_reason))
    if best is None:
        return facts
    return facts + (best.plan, best.step_time_s, best.required_bytes, best.memory.moment)


@settings(max_examples=40, deadline=None)
@given(base=st.sampled_from(sorted(BASES)),
       overrides=st.dictionaries(st.sampled_from(sorted(OVERRIDES)), st.none(), min_size=1,
                                 max_size=2).flatmap(
           lambda d: st.fixed_dictionaries({k: OVERRIDES[k] for k in d})))
def test_what_if_equals_planning_the_edited_spec_from_scratch(base, overrides):
    spec = spec_from_dict(BASES[base])
    edited = outcome(lambda: what_if(spec, overrides))
    scratch = outcome(lambda: search(spec_from_dict(written_from_scratch(BASES[base], overrides))))
    assert edited == scratch


def test_keyword_forms_are_the_same_edit():
    spec = load_spec(SPEC_7B)
    a = what_if(spec, {"cluster.nodes": 16}).best
    b = what_if(spec, cluster__nodes=16).best
    c = what_if(spec, **{"cluster.nodes": 16}).best
    assert a.plan == b.plan == c.plan and a.plan.world_size == 128


def test_edits_rederive_what_depends_on_the_edited_field():
    gpt2 = spec_from_dict(BASES["gpt2-short-forms"])
    longer = edit(gpt2, {"model.seq_len": 2048})
    assert longer.model.max_positions == 2048  # the learned table follows seq_len
    h200 = edit(gpt2, {"cluster.gpu": "H200"})
    assert h200.cluster.intra_node.gbps == 900  # the H200's own NVSwitch, not the A100's 600
    bigger = edit(gpt2, {"model.preset": "gpt2-350m"})
    assert bigger.model.n_layers == 24


def test_none_removes_a_field_so_a_budget_can_replace_tokens():
    spec = edit(load_spec(SPEC_7B), {"training.tokens": None, "training.budget.days": 30})
    assert spec.training.tokens is None and spec.training.budget.days == 30


@pytest.mark.parametrize("overrides, path", [
    ({"cluster.nodez": 3}, "cluster.nodez"),
    ({"cluster.nodes.count": 3}, "cluster.nodes"),
    ({"cluster.nodes": 0}, "cluster.nodes"),
    ({"model.seq_len": 1000}, "training.global_batch_tokens"),
    ({"cluster..nodes": 3}, "cluster..nodes"),
], ids=["unknown", "through-a-number", "invalid-value", "breaks-another-field", "empty-key"])
def test_bad_overrides_name_the_path(overrides, path):
    with pytest.raises(SpecError) as info:
        edit(load_spec(SPEC_7B), overrides)
    assert info.value.path == path


@pytest.mark.parametrize("path", SPEC_FILES, ids=[p.name for p in SPEC_FILES])
def test_spec_to_dict_round_trips(path):
    spec = load_spec(path)
    assert spec_from_dict(spec_to_dict(spec)).model_dump() == spec.model_dump()
    copied = spec.model_copy(update={"name": "copied"})  # no longer what was written
    assert spec_to_dict(copied)["name"] == "copied"
    assert spec_from_dict(spec_to_dict(copied)).model_dump() == copied.model_dump()


def test_parse_assignment_reads_yaml_scalars():
    assert parse_assignment("cluster.nodes=16") == ("cluster.nodes", 16)
    assert parse_assignment("training.tokens=2e12") == ("training.tokens", 2e12)
    assert parse_assignment("cluster.gpu=H200") == ("cluster.gpu", "H200")
    assert parse_assignment("training.tokens=null") == ("training.tokens", None)
    with pytest.raises(SpecError):
        parse_assignment("cluster.nodes")


# --------------------------------------------------------------------------------------- sweep

def test_sweep_rows_follow_the_values_and_name_rejections():
    spec = load_spec(SPEC_7B)
    rows = sweep(spec, "cluster.nodes", [4, 8])
    assert [r.value for r in rows] == [4, 8]
    assert rows[1].best.plan == search(spec).best.plan
    assert rows[0].days > rows[1].days
    none = sweep(spec, "cluster.gpu", [{"name": "A100", "memory_gib": 4}])[0]
    assert none.best is None and "out of memory" in none.reason
    assert none.as_dict()["plan"] is None


def test_sweep_in_budget_mode_reports_the_pick():
    spec = load_spec(ROOT / "specs" / "budget_64xA100_30days.yaml")
    (row,) = sweep(spec, "cluster.nodes", [4])
    assert row.picked and row.params and row.loss and row.days == pytest.approx(30, rel=1e-3)


# ----------------------------------------------------------------------------------------- CLI

def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_set_plans_the_edited_spec():
    result = invoke(SPEC_7B, "--set", "cluster.nodes=16", "--set", "model.seq_len=8192", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    best = what_if(load_spec(SPEC_7B), {"cluster.nodes": 16, "model.seq_len": 8192}).best
    assert report["cluster"]["gpus"] == 128
    assert report["best"]["label"] == best.plan.label


@pytest.mark.parametrize("arg, path", [
    ("cluster.nodez=16", "cluster.nodez"), ("cluster.nodes=many", "cluster.nodes"),
    ("cluster.nodes", "cluster.nodes")])
def test_cli_bad_set_is_one_error_line_naming_the_path(arg, path):
    result = invoke(SPEC_7B, "--set", arg)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}:")


def test_cli_sweep_table_and_json():
    text = invoke(SPEC_7B, "--sweep", "cluster.nodes=4,8,16,32")
    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines()[0].split()[0] == "cluster.nodes"
    assert len(text.stdout.strip().splitlines()) == 2 + 4
    report = json.loads(invoke(SPEC_7B, "--sweep", "cluster.nodes=4,8", "--json").stdout)
    assert [r["value"] for r in report["rows"]] == [4, 8]
    assert report["rows"][0]["days"] > report["rows"][1]["days"]
