"""The spec language (planner/spec.py): shipped specs and presets load, parameter counts match the
published ones, and every invalid input is a SpecError naming its field path."""
import copy
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from planner.errors import SpecError
from planner.model.shape import param_counts
from planner.spec.catalog import gpu_catalog, model_presets
from planner.spec.loading import load_spec, spec_from_dict
from planner.spec.spec import GpuSpec, ModelSpec, Spec
from planner.spec.units import Activation, Norm, Position

ROOT = Path(__file__).resolve().parents[2]
SPEC_FILES = sorted((ROOT / "specs").glob("*.yaml"))
PRESETS = model_presets()
PUBLISHED = {name: e for name, e in PRESETS.items() if "published_params" in e}
GPUS = gpu_catalog()

#: sentinel for `build`: remove the key instead of setting it
DELETE = object()


def build(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A small valid spec dict with dotted-path overrides applied (`{"model.n_layers": 0}`)."""
    data: dict[str, Any] = {
        "model": {"arch": "gpt2", "n_layers": 2, "d_model": 64, "n_heads": 4, "vocab_size": 128,
                  "seq_len": 32},
        "cluster": {"gpu": "A100-80GB-SXM", "nodes": 1, "gpus_per_node": 8},
        "training": {"tokens": 1.0e6, "global_batch_tokens": 256},
    }
    data = copy.deepcopy(data)
    for path, value in (overrides or {}).items():
        *parents, leaf = path.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(leaf)
        else:
            node[leaf] = value
    return data


def spec_error(overrides: dict[str, Any]) -> SpecError:
    with pytest.raises(SpecError) as info:
        spec_from_dict(build(overrides))
    return info.value


def test_base_dict_is_valid():
    spec = spec_from_dict(build())
    assert spec.model.n_layers == 2
    assert spec.global_batch_sequences == 256 // 32


# ----------------------------------------------------------------------- shipped specs, presets

def test_specs_are_shipped():
    assert len(SPEC_FILES) >= 1


@pytest.mark.parametrize("path", SPEC_FILES, ids=[p.name for p in SPEC_FILES])
def test_shipped_spec_loads(path):
    spec = load_spec(path)
    assert isinstance(spec, Spec)
    assert spec.cluster.world_size >= 1


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_validates(name):
    model = ModelSpec.model_validate({"preset": name})
    assert model.preset == name
    assert model.name == name
    assert param_counts(model).total > 0


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_preset_param_count_matches_published(name):
    """The planner's count equals the count each preset's `source` (planner/spec/data/models.yaml)
    reports: HF transformers' GPT2LMHeadModel for GPT-2 (Radford et al. 2019), the config.json of
    meta-llama/Llama-2-*-hf (Touvron et al. 2023), Meta-Llama-3-* (Meta 2024) and TinyLlama-1.1B
    (Zhang et al. 2024).  GPT-3's "175.0B" (Brown et al. 2020, table 2.1) is rounded: 0.5 %."""
    entry = PUBLISHED[name]
    total = param_counts(ModelSpec.model_validate(name)).total
    if name == "gpt3-175b":
        assert total == pytest.approx(entry["published_params"], rel=0.005), entry["source"]
    else:
        assert total == entry["published_params"], entry["source"]


def test_gpt2_124m_padded_vocab_count_by_hand():
    """GPT-2 small with nanoGPT's vocab padded to 50304: the executor's model has 124,475,904
    parameters (`params` of every GPT-2 run in shared/calibration/h200_deepspeed_runs.jsonl)."""
    V, P, d, L = 50304, 1024, 768, 12
    wte = V * d  # token embedding, tied to the LM head
    wpe = P * d  # learned positions
    ln_1 = 2 * d  # weight + bias
    qkv = d * 3 * d + 3 * d  # c_attn
    proj = d * d + d  # attn c_proj
    ln_2 = 2 * d
    mlp = (d * 4 * d + 4 * d) + (4 * d * d + d)  # c_fc, mlp c_proj
    layer = ln_1 + qkv + proj + ln_2 + mlp
    ln_f = 2 * d
    assert wte + wpe + L * layer + ln_f == 124_475_904  # the hand count itself

    model = ModelSpec.model_validate({"preset": "gpt2-124m", "vocab_size": V})
    c = param_counts(model)
    assert (c.embedding, c.positions, c.layer.total, c.n_layers, c.final_norm, c.head) == \
        (wte, wpe, layer, L, ln_f, 0)
    assert c.total == 124_475_904


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_arch_defaults(name):
    model = ModelSpec.model_validate(name)
    if PRESETS[name]["arch"] == "llama":
        expected = (Norm.RMSNORM, Activation.SWIGLU, Position.ROPE, False, False)
    else:
        expected = (Norm.LAYERNORM, Activation.GELU, Position.LEARNED, True, True)
    assert (model.norm, model.activation, model.position, model.tied_embeddings,
            model.bias) == expected


def test_preset_fields_can_be_overridden():
    spec = spec_from_dict(build({"model": {"preset": "gpt2-124m", "vocab_size": 50304},
                                   "training.global_batch_tokens": 1024 * 8}))
    assert spec.model.vocab_size == 50304
    assert spec.model.n_layers == 12
    assert spec.model.d_model == 768
    assert spec.model.name == "gpt2-124m"


@pytest.mark.parametrize("written", ["llama2-7b", "LLaMA2-7B"])
def test_model_given_as_preset_string(written):
    spec = spec_from_dict(build({"model": written, "training.global_batch_tokens": 4096 * 8}))
    assert spec.model.preset == "llama2-7b"
    assert (spec.model.n_layers, spec.model.d_model, spec.model.d_ff) == (32, 4096, 11008)
    assert spec.model.n_kv_heads == spec.model.n_heads == 32


def test_loaded_spec_is_frozen():
    spec = spec_from_dict(build())
    with pytest.raises(ValidationError):
        spec.model.n_layers = 3
    with pytest.raises(ValidationError):
        spec.search = spec.search
    assert spec.model.n_layers == 2


# ------------------------------------------------------------------------------ invalid input

INVALID = [
    # id, overrides, field path the message starts with, fragments the message contains
    ("unknown-top-level-key", {"modle": {}}, "modle", ["unknown key"]),
    ("unknown-nested-key", {"model.n_layer": 3}, "model.n_layer", ["unknown key"]),
    ("unknown-deep-key", {"cluster.inter_node.nic_gbt": 400}, "cluster.inter_node.nic_gbt",
     ["unknown key"]),
    ("unknown-key-beside-preset", {"model": {"preset": "gpt2-124m", "n_layer": 3}},
     "model.n_layer", ["unknown key"]),
    ("unknown-preset", {"model": {"preset": "gpt5-1t"}}, "model.preset",
     ["unknown preset 'gpt5-1t'", "gpt2-124m", "llama2-7b", "tiny-gpt"]),
    ("unknown-gpu", {"cluster.gpu": "B300"}, "cluster.gpu.name",
     ["unknown GPU 'B300'", "A100-80GB-SXM", "H100-SXM"]),
    ("custom-gpu-missing-fields", {"cluster.gpu": {"name": "my-accel", "memory_gib": 40}},
     "cluster.gpu.name", ["unknown GPU 'my-accel'", "needs hbm_gbps, intra_node_gbps"]),
    ("zero-layers", {"model.n_layers": 0}, "model.n_layers", ["greater than 0"]),
    ("negative-nodes", {"cluster.nodes": -1}, "cluster.nodes", ["greater than 0"]),
    ("zero-gpu-memory", {"cluster.gpu": {"name": "a100", "memory_gib": 0}},
     "cluster.gpu.memory_gib", ["greater than 0"]),
    ("heads-not-dividing-d_model", {"model.n_heads": 5}, "model.n_heads",
     ["n_heads (5) must divide d_model (64)"]),
    ("kv-heads-not-dividing-heads", {"model.n_kv_heads": 3}, "model.n_kv_heads",
     ["n_kv_heads (3) must divide n_heads (4)"]),
    ("swiglu-without-d_ff", {"model.activation": "swiglu"}, "model.d_ff", ["d_ff is required"]),
    ("both-batch-sizes", {"training.global_batch_sequences": 8}, "training.global_batch_tokens",
     ["exactly one of global_batch_tokens or global_batch_sequences"]),
    ("neither-batch-size", {"training.global_batch_tokens": DELETE},
     "training.global_batch_tokens",
     ["exactly one of global_batch_tokens or global_batch_sequences"]),
    ("missing-section", {"training": DELETE}, "training", ["required field is missing"]),
    ("bad-zero-stage", {"search.zero": 5}, "search.zero", []),
    ("bad-zero-in-list", {"search.zero": [1, 5]}, "search.zero", []),
    ("bad-precision", {"search.precision": "fp8x"}, "search.precision", []),
    ("bad-arch", {"model.arch": "bert"}, "model.arch", ["'gpt2' or 'llama'"]),
    ("bad-arch-is-the-only-error", {"model.arch": "bert"}, "model.arch", ["llama'"]),
    ("empty-axis-list", {"search.tp": []}, "search.tp", ["empty list"]),
    ("headroom-too-large", {"search.memory_headroom": 0.9}, "search.memory_headroom",
     ["less than 0.9"]),
    ("headroom-negative", {"search.memory_headroom": -0.1}, "search.memory_headroom",
     ["greater than or equal to 0"]),
]


@pytest.mark.parametrize("overrides, path, fragments", [c[1:] for c in INVALID],
                         ids=[c[0] for c in INVALID])
def test_invalid_spec_names_field_path(overrides, path, fragments):
    err = spec_error(overrides)
    assert err.path == path
    assert str(err).startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in str(err)


def test_batch_tokens_not_multiple_of_seq_len():
    err = spec_error({"training.global_batch_tokens": 100})
    assert err.path == "training.global_batch_tokens"
    assert "100 is not a multiple of model.seq_len (32)" in str(err)


@pytest.mark.parametrize("overrides, allowed", [
    ({"search.zero": 5}, "0, 1, 2 or 3"),
    ({"search.precision": "fp8x"}, "'fp32', 'fp16', 'bf16' or 'fp8'"),
], ids=["zero", "precision"])
def test_bad_enum_message_lists_allowed_values(overrides, allowed):
    """A union ('auto' | list of enum) must report the enum's allowed values, once."""
    message = str(spec_error(overrides))
    assert allowed in message and "more)" not in message


def test_top_level_must_be_a_mapping():
    with pytest.raises(SpecError, match="top level must be a mapping"):
        spec_from_dict(["model"])


def test_load_spec_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: no such spec file"


def test_load_spec_invalid_yaml_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: llama2-7b\ncluster: {gpu: a100, nodes: [1\ntraining: {}\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid YAML (line 3")
    assert "\n" not in message


def test_load_spec_reports_field_path(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("model: {preset: gpt2-124m, n_layer: 3}\n"
                    "cluster: {gpu: a100}\ntraining: {tokens: 1.0e9, global_batch_sequences: 8}\n")
    with pytest.raises(SpecError, match=r"^model\.n_layer: unknown key; did you mean n_layers\?$"):
        load_spec(path)


# -------------------------------------------------------------------------------- GPU catalog

@pytest.mark.parametrize("name", list(GPUS))
def test_catalog_gpu_validates(name):
    entry = GPUS[name]
    gpu = GpuSpec.model_validate(name)
    assert gpu.name == name
    assert entry["source"].strip()
    assert gpu.source == entry["source"]
    for field in ("memory_gib", "peak_tflops", "hbm_gbps", "intra_node_gbps"):
        assert getattr(gpu, field) == entry[field], field


def test_catalog_names_are_unambiguous():
    owner: dict[str, str] = {}
    for canonical, entry in GPUS.items():
        for n in (canonical, *entry.get("aliases", ())):
            assert owner.setdefault(n.lower(), canonical) == canonical, n


ALIASES = [("a100", "A100-80GB-SXM"), ("A100", "A100-80GB-SXM"),
           ("A100-SXM4-40GB", "A100-40GB-SXM"), ("h100-SXM", "H100-SXM"),
           ("H200-141GB", "H200"), ("mi300x", "MI300X")]


@pytest.mark.parametrize("written, canonical", ALIASES, ids=[f"{w}->{c}" for w, c in ALIASES])
def test_gpu_alias_resolves_case_insensitively(written, canonical):
    spec = spec_from_dict(build({"cluster.gpu": written}))
    assert spec.cluster.gpu.name == canonical
    assert spec.cluster.gpu.memory_gib == GPUS[canonical]["memory_gib"]


def test_catalog_gpu_field_override():
    spec = spec_from_dict(build({"cluster.gpu": {"name": "a100", "memory_gib": 40}}))
    assert spec.cluster.gpu.name == "A100-80GB-SXM"
    assert spec.cluster.gpu.memory_gib == 40
    assert spec.cluster.gpu.hbm_gbps == GPUS["A100-80GB-SXM"]["hbm_gbps"]


def test_explicit_gpu_without_catalog():
    gpu = {"name": "my-accel", "memory_gib": 24, "peak_tflops": {"fp32": 10, "bf16": 100},
           "hbm_gbps": 900, "intra_node_link": "pcie", "intra_node_gbps": 64, "pcie_gbps": 16,
           "cublas_workspace_mib": 4, "accelerator": "cuda", "source": "bench notes"}
    spec = spec_from_dict(build({"cluster.gpu": gpu}))
    assert spec.cluster.gpu.model_dump(exclude={"efficiency"}) == {
        **gpu, "price_per_gpu_hour": None, "price_source": ""}
    assert spec.cluster.gpu.memory_bytes == 24 * 2**30
    assert spec.cluster.price == (None, "")  # no cited price: the report asks for one


def test_overriding_one_efficiency_keeps_the_catalog_rest():
    spec = spec_from_dict(build({"cluster.gpu": {"name": "H100", "efficiency": {"gemm_max": 0.7}}}))
    assert spec.cluster.gpu.efficiency.gemm_max == 0.7
    assert spec.cluster.gpu.efficiency.attention_fwd == 0.333  # the catalog's H100 value
