"""Hugging Face config.json import (issue 13): for every supported architecture the planner's
parameter count equals sum(p.numel()) of the transformers model built from the same file on the
meta device, exactly.  The configs are the published ones, written here (nothing downloaded)."""
import json

import pytest
from click.testing import CliRunner

from planner.model.flops import layer_matmul_flops_per_token
from planner.model.shape import param_counts
from planner.search.engine import search
from planner.spec.loading import spec_from_dict
from pretrain.cli import main

CONFIGS = {
    "llama-2-7b": {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                   "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
                   "num_hidden_layers": 32, "num_key_value_heads": 32, "vocab_size": 32000,
                   "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "hidden_act": "silu",
                   "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
                   "pretraining_tp": 1, "torch_dtype": "float16", "use_cache": True},
    "llama-3.2-1b": {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                     "hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32,
                     "num_hidden_layers": 16, "num_key_value_heads": 8, "head_dim": 64,
                     "vocab_size": 128256, "tie_word_embeddings": True, "hidden_act": "silu",
                     "attention_bias": False, "mlp_bias": False, "rope_theta": 500000.0,
                     "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0,
                                      "low_freq_factor": 1.0, "rope_type": "llama3",
                                      "original_max_position_embeddings": 8192},
                     "max_position_embeddings": 131072},
    "llama-biased": {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                     "hidden_size": 256, "intermediate_size": 688, "num_attention_heads": 4,
                     "num_hidden_layers": 2, "num_key_value_heads": 2, "vocab_size": 1000,
                     "attention_bias": True, "mlp_bias": True},
    "mistral-7b": {"architectures": ["MistralForCausalLM"], "model_type": "mistral",
                   "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
                   "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 32000,
                   "sliding_window": 4096, "rope_theta": 10000.0, "hidden_act": "silu",
                   "max_position_embeddings": 32768, "tie_word_embeddings": False},
    "qwen2-0.5b": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                   "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
                   "num_hidden_layers": 24, "num_key_value_heads": 2, "vocab_size": 151936,
                   "tie_word_embeddings": True, "use_sliding_window": False,
                   "sliding_window": 131072, "max_window_layers": 24, "hidden_act": "silu",
                   "rope_theta": 1000000.0, "max_position_embeddings": 131072},
    "gemma-2-2b": {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
                   "hidden_size": 2304, "intermediate_size": 9216, "num_attention_heads": 8,
                   "num_hidden_layers": 26, "num_key_value_heads": 4, "head_dim": 256,
                   "vocab_size": 256000, "hidden_act": "gelu_pytorch_tanh",
                   "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": 30.0,
                   "attn_logit_softcapping": 50.0, "query_pre_attn_scalar": 256,
                   "sliding_window": 4096, "cache_implementation": "hybrid"},
    "phi-3-mini": {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
                   "hidden_size": 3072, "intermediate_size": 8192, "num_attention_heads": 32,
                   "num_hidden_layers": 32, "num_key_value_heads": 32, "vocab_size": 32064,
                   "sliding_window": 2047, "hidden_act": "silu", "resid_pdrop": 0.0,
                   "embd_pdrop": 0.0, "original_max_position_embeddings": 4096,
                   "max_position_embeddings": 4096, "tie_word_embeddings": False},
    "gpt2": {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 768,
             "n_head": 12, "n_layer": 12, "n_positions": 1024, "n_ctx": 1024, "vocab_size": 50257,
             "activation_function": "gelu_new", "resid_pdrop": 0.1, "embd_pdrop": 0.1,
             "attn_pdrop": 0.1, "layer_norm_epsilon": 1e-05, "summary_type": "cls_index",
             "summary_use_proj": True, "summary_activation": None,
             "summary_proj_to_labels": True, "summary_first_dropout": 0.1},
    "pythia-160m": {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
                    "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                    "num_hidden_layers": 12, "vocab_size": 50304, "rotary_pct": 0.25,
                    "rotary_emb_base": 10000, "use_parallel_residual": True,
                    "tie_word_embeddings": False, "hidden_act": "gelu",
                    "max_position_embeddings": 2048},
}
#: published totals, for the shipped shapes (a second check that the configs are the real ones)
PUBLISHED = {"llama-2-7b": 6_738_415_616, "llama-3.2-1b": 1_235_814_400,
             "mistral-7b": 7_241_732_096, "qwen2-0.5b": 494_032_768,
             "gemma-2-2b": 2_614_341_888, "phi-3-mini": 3_821_079_552, "gpt2": 124_439_808,
             "pythia-160m": 162_322_944}


def write(tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(CONFIGS[name]))
    return d


def planned(path, **model):
    return spec_from_dict({"model": {"hf_config": str(path), "seq_len": 1024, **model},
                           "cluster": {"gpu": "H100", "nodes": 1},
                           "training": {"tokens": 1e10, "global_batch_sequences": 64}})


@pytest.mark.parametrize("name", CONFIGS)
def test_parameter_count_equals_transformers_on_the_meta_device(tmp_path, name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = write(tmp_path, name)
    config = transformers.AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    numel = sum(p.numel() for p in model.parameters())  # a tied table once
    assert param_counts(planned(path).model).total == numel
    if name in PUBLISHED:
        assert numel == PUBLISHED[name]


@pytest.mark.parametrize("name, expect", [
    ("gemma-2-2b", dict(head_dim=256, q_dim=2048, norms_per_block=4, tied_embeddings=True,
                        logit_softcap=30.0, attention_softcap=50.0, sliding_window=4096,
                        sliding_window_layers="alternate")),
    ("qwen2-0.5b", dict(qkv_bias=True, out_bias=False, mlp_bias=False, sliding_window=None)),
    ("pythia-160m", dict(parallel_residual=True, rotary_fraction=0.25, tied_embeddings=False,
                         qkv_bias=True, mlp_bias=True)),
    ("gpt2", dict(max_positions=1024, tied_embeddings=True, bias=True)),
    ("mistral-7b", dict(n_kv_heads=8, sliding_window=4096, sliding_window_layers="all")),
])
def test_what_each_family_sets(tmp_path, name, expect):
    m = planned(write(tmp_path, name)).model
    assert {k: getattr(m, k) for k in expect} == expect


def test_a_window_cuts_attention_flops_and_a_wider_head_the_matmuls(tmp_path):
    from planner.model.flops import attention_flops_per_token
    mistral = planned(write(tmp_path, "mistral-7b"), seq_len=16384).model
    full = mistral.model_copy(update={"sliding_window": None})
    assert attention_flops_per_token(mistral) == attention_flops_per_token(full) / 4
    gemma = planned(write(tmp_path, "gemma-2-2b")).model
    d, q, kv, f = 2304, 2048, 1024, 9216
    assert layer_matmul_flops_per_token(gemma) == 2 * (d * (q + 2 * kv) + q * d + 3 * d * f)


@pytest.mark.parametrize("problem, config, message", [
    ("unsupported", {"architectures": ["MambaForCausalLM"]}, "MambaForCausalLM is not supported;"
                                                             " supported: LlamaForCausalLM"),
    ("unknown key", {**CONFIGS["llama-2-7b"], "num_experts": 8}, "'num_experts' is a key the "
                                                                 "planner does not know"),
    ("missing", {"architectures": ["LlamaForCausalLM"], "hidden_size": 64},
     "has no num_attention_heads"),
    ("activation", {**CONFIGS["llama-2-7b"], "hidden_act": "relu2"}, "hidden_act 'relu2'"),
    ("qwen windows", {**CONFIGS["qwen2-0.5b"], "use_sliding_window": True}, "use_sliding_window"),
])
def test_a_config_the_planner_cannot_read_is_one_line(tmp_path, problem, config, message):
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = tmp_path / "spec.yaml"
    spec.write_text("model: {hf_config: config.json, seq_len: 2048}\ncluster: {gpu: H100}\n"
                    "training: {tokens: 1e10, global_batch_sequences: 64}\n")
    out = CliRunner().invoke(main, [str(spec)])
    assert out.exit_code == 1
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: model.hf_config: ")
    assert message in out.stderr


def test_the_spec_gives_the_sequence_length_and_its_own_fields_win(tmp_path):
    path = write(tmp_path, "llama-2-7b")
    with pytest.raises(Exception, match="seq_len: a model read from hf_config needs"):
        spec_from_dict({"model": {"hf_config": str(path)}, "cluster": {"gpu": "H100"},
                        "training": {"tokens": 1e10, "global_batch_sequences": 64}})
    assert planned(path, n_layers=2).model.n_layers == 2


def test_a_config_path_is_relative_to_the_spec_and_set_works(tmp_path):
    write(tmp_path, "gpt2")
    spec = tmp_path / "spec.yaml"
    spec.write_text("model: {hf_config: gpt2, seq_len: 1024}\ncluster: {gpu: H100}\n"
                    "training: {tokens: 1e10, global_batch_sequences: 64}\n")
    out = CliRunner().invoke(main, [str(spec), "--json"])
    assert json.loads(out.stdout)["model"]["params"] == 124_439_808
    write(tmp_path, "pythia-160m")
    out = CliRunner().invoke(main, [str(spec), "--json", "--set",
                                    f"model.hf_config={tmp_path / 'pythia-160m'}"])
    assert json.loads(out.stdout)["model"]["params"] == 162_322_944


def test_plans_of_a_model_the_executor_does_not_build_are_not_executable(tmp_path):
    result = search(planned(write(tmp_path, "gemma-2-2b")), executable=True)
    assert result.best is None
    assert "model.head_dim: 8 heads x 256 != d_model 2304" in next(iter(result.examples.values()))
    llama = search(planned(write(tmp_path, "llama-2-7b")), executable=True)
    assert llama.best is not None  # a Llama the executor builds stays executable


@pytest.mark.parametrize("name", ["llama-2-7b", "llama-3.2-1b", "llama-biased", "mistral-7b",
                                  "qwen2-0.5b", "phi-3-mini", "gpt2"])
def test_the_executor_builds_what_it_may_run_with_the_planners_tensors(tmp_path, name):
    """A config the executor may run (no rule against it) builds in its GPT with the planner's
    parameter count and per-tensor sizes, which equal transformers' count."""
    torch = pytest.importorskip("torch")
    from executor.model import GPT, Block
    from planner.backends.deepspeed.rules import unbuilt_features
    from planner.model.shape import layer_tensor_sizes
    m = planned(write(tmp_path, name)).model
    assert unbuilt_features(m) == []
    with torch.device("meta"):
        model, block = GPT(m), Block(m)
    assert sum(p.numel() for p in model.parameters()) == param_counts(m).total
    assert sorted(p.numel() for p in block.parameters()) == sorted(layer_tensor_sizes(m, tp=1))
