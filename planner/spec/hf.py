"""A Hugging Face ``config.json`` as the spec's model fields (``model: {hf_config: PATH}``).

Each supported architecture maps its config keys to the shape the planner counts, with the
defaults of that architecture's config class where a key is missing (transformers 4.57, the
``__init__`` of each ``configuration_*.py``): Mistral's 8 kv-heads, Gemma 2's head_dim 256 and
tied embeddings, GPT-NeoX's rotary_pct 0.25.  A key is either read (it changes the shape, the
FLOPs or the memory), or known not to matter for memory and compute (dropouts, token ids, RoPE
base and scaling, epsilons: ``NEUTRAL``), or refused: an unknown key might change the shape, and
a planner that guessed would be wrong without saying so.  Nothing is downloaded.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

#: keys that do not change parameter counts, FLOPs or memory (read and ignored on purpose)
NEUTRAL = frozenset({
    # bookkeeping
    "architectures", "model_type", "_name_or_path", "transformers_version", "torch_dtype", "dtype",
    "auto_map", "_attn_implementation_autoset", "use_cache", "return_dict", "output_attentions",
    "output_hidden_states", "output_router_logits", "is_decoder", "is_encoder_decoder",
    "tie_encoder_decoder", "pruned_heads", "chunk_size_feed_forward", "problem_type",
    "id2label", "label2id", "task_specific_params", "finetuning_task", "tokenizer_class",
    "prefix", "add_cross_attention", "cross_attention_hidden_size", "torchscript",
    "use_bfloat16", "tf_legacy_loss", "pretraining_tp", "cache_implementation",
    # token ids
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    # initialisation and numerics
    "initializer_range", "initializer_factor", "rms_norm_eps", "layer_norm_eps",
    "layer_norm_epsilon",
    # dropouts (the planner's model has none in pre-training)
    "attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
    "classifier_dropout", "summary_first_dropout", "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    # RoPE's base and scaling change angles, not shapes; the run's length is the spec's seq_len
    "rope_theta", "rope_scaling", "rope_parameters", "rotary_emb_base",
    "original_max_position_embeddings", "max_position_embeddings", "partial_rotary_factor",
    # attention scaling conventions
    "query_pre_attn_scalar", "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
    "reorder_and_upcast_attn", "use_flash_attn",
    # GPT-2's sequence-summary head (classification only)
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
    "n_ctx", "layer_types",
})

#: activations the supported architectures use, as the planner models them
GATED = {"silu", "swish", "gelu_pytorch_tanh", "gelu", "gelu_new"}
PLAIN = {"gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu", "quick_gelu"}


class _Reader:
    """The config's keys as read: ``get`` marks a key used, ``unused`` lists the others."""

    def __init__(self, config: dict, source: str, arch: str):
        self.config, self.source, self.arch = config, source, arch
        self.used: set[str] = set()

    def get(self, key: str, default: Any = None, *alias: str) -> Any:
        for k in (key, *alias):
            self.used.add(k)
        for k in (key, *alias):
            if self.config.get(k) is not None:
                return self.config[k]
        return default

    def need(self, key: str, *alias: str) -> Any:
        value = self.get(key, None, *alias)
        if value is None:
            raise ValueError(f"hf_config: {self.source} has no {key} ({self.arch} needs it)")
        return value

    def unused(self) -> list[str]:
        return sorted(k for k in self.config if k not in self.used and k not in NEUTRAL)


def _activation(r: _Reader, key: str, default: str, allowed: set) -> None:
    act = r.get(key, default)
    if act not in allowed:
        raise ValueError(f"hf_config: {r.source}: {key} {act!r} is not one the planner models for "
                         f"{r.arch} ({', '.join(sorted(allowed))})")


def _llama_like(r: _Reader, *, kv_default: Any, vocab: int, tie: bool, qkv_bias: Any,
                out_bias: Any, mlp_bias: Any = False, act_key: str = "hidden_act",
                act: str = "silu") -> dict[str, Any]:
    """RMSNorm, a gated MLP, RoPE: Llama, Mistral, Qwen2, Phi-3, Gemma 2."""
    heads = r.need("num_attention_heads")
    _activation(r, act_key, act, GATED)
    fields = dict(arch="llama", n_layers=r.need("num_hidden_layers"), d_model=r.need("hidden_size"),
                  n_heads=heads, n_kv_heads=r.get("num_key_value_heads", kv_default) or heads,
                  d_ff=r.need("intermediate_size"), vocab_size=r.get("vocab_size", vocab),
                  tied_embeddings=bool(r.get("tie_word_embeddings", tie)), bias=False,
                  qkv_bias=bool(qkv_bias), out_bias=bool(out_bias), mlp_bias=bool(mlp_bias))
    head_dim = r.get("head_dim")
    if head_dim is not None:
        fields["head_dim"] = head_dim
    return fields


def _llama(r: _Reader) -> dict[str, Any]:
    bias = r.get("attention_bias", False)
    return _llama_like(r, kv_default=None, vocab=32000, tie=False, qkv_bias=bias, out_bias=bias,
                       mlp_bias=r.get("mlp_bias", False))


def _sliding(r: _Reader, default: Any = None) -> dict[str, Any]:
    window = r.get("sliding_window", default)
    return {} if window is None else {"sliding_window": window}


def _mistral(r: _Reader) -> dict[str, Any]:
    return {**_llama_like(r, kv_default=8, vocab=32000, tie=False, qkv_bias=False,
                          out_bias=False), **_sliding(r, 4096)}


def _qwen2(r: _Reader) -> dict[str, Any]:
    fields = _llama_like(r, kv_default=32, vocab=151936, tie=False, qkv_bias=True,
                         out_bias=False)
    r.get("sliding_window")  # only read when use_sliding_window is on
    if r.get("use_sliding_window", False):
        raise ValueError(f"hf_config: {r.source}: use_sliding_window with max_window_layers "
                         f"(Qwen2's per-layer windows) is not modelled; set it false")
    r.get("max_window_layers")
    return fields


def _phi3(r: _Reader) -> dict[str, Any]:
    """Fused qkv_proj and gate_up_proj: the same parameters as Llama's separate matrices."""
    fields = _llama_like(r, kv_default=None, vocab=32064, tie=False, qkv_bias=False,
                         out_bias=False)
    for key in ("resid_pdrop", "embd_pdrop"):
        r.get(key)
    return {**fields, **_sliding(r)}


def _gemma2(r: _Reader) -> dict[str, Any]:
    bias = r.get("attention_bias", False)
    fields = _llama_like(r, kv_default=4, vocab=256000, tie=True, qkv_bias=bias, out_bias=bias,
                         act_key="hidden_activation", act="gelu_pytorch_tanh")
    r.get("hidden_act")
    fields.setdefault("head_dim", 256)
    fields.update(norms_per_block=4, sliding_window_layers="alternate",
                  logit_softcap=r.get("final_logit_softcapping", 30.0),
                  attention_softcap=r.get("attn_logit_softcapping", 50.0), **_sliding(r, 4096))
    return {k: v for k, v in fields.items() if v is not None}


def _gpt2(r: _Reader) -> dict[str, Any]:
    d = r.need("n_embd", "hidden_size")
    _activation(r, "activation_function", "gelu_new", PLAIN)
    return dict(arch="gpt2", n_layers=r.need("n_layer", "num_hidden_layers"), d_model=d,
                n_heads=r.need("n_head", "num_attention_heads"),
                d_ff=r.get("n_inner", None) or 4 * d, vocab_size=r.get("vocab_size", 50257),
                max_positions=r.get("n_positions", 1024),
                tied_embeddings=bool(r.get("tie_word_embeddings", True)), bias=True)


def _gpt_neox(r: _Reader) -> dict[str, Any]:
    _activation(r, "hidden_act", "gelu", PLAIN)
    bias = r.get("attention_bias", True)
    return dict(arch="gpt2", position="rope", n_layers=r.need("num_hidden_layers"),
                d_model=r.need("hidden_size"), n_heads=r.need("num_attention_heads"),
                d_ff=r.need("intermediate_size"), vocab_size=r.get("vocab_size", 50432),
                tied_embeddings=bool(r.get("tie_word_embeddings", False)), bias=True,
                qkv_bias=bool(bias), out_bias=bool(bias), mlp_bias=True,
                parallel_residual=bool(r.get("use_parallel_residual", True)),
                rotary_fraction=r.get("rotary_pct", 0.25))


def _mixtral(r: _Reader) -> dict[str, Any]:
    """Mistral's blocks with a router (no bias) and num_local_experts SwiGLU experts of width
    intermediate_size (block_sparse_moe: gate, experts.w1/w2/w3)."""
    fields = {**_llama_like(r, kv_default=8, vocab=32000, tie=False, qkv_bias=False,
                            out_bias=False), **_sliding(r)}
    for key in ("router_aux_loss_coef", "router_jitter_noise"):
        r.get(key)
    fields["moe"] = {"experts": r.get("num_local_experts", 8),
                     "top_k": r.get("num_experts_per_tok", 2),
                     "expert_d_ff": fields["d_ff"]}
    return fields


def _qwen2_moe(r: _Reader) -> dict[str, Any]:
    """Qwen2's blocks (q, k, v biases per qkv_bias) whose MLP is, on every decoder_sparse_step-th
    layer not in mlp_only_layers, num_experts experts of moe_intermediate_size, a shared expert
    of shared_expert_intermediate_size and its sigmoid gate; dense layers keep
    intermediate_size."""
    fields = _llama_like(r, kv_default=16, vocab=151936, tie=False,
                         qkv_bias=r.get("qkv_bias", True), out_bias=False)
    if r.get("use_sliding_window", False):
        raise ValueError(f"hf_config: {r.source}: use_sliding_window with max_window_layers "
                         f"(per-layer windows) is not modelled; set it false")
    for key in ("sliding_window", "max_window_layers", "router_aux_loss_coef", "norm_topk_prob"):
        r.get(key)
    experts = r.get("num_experts", 60)
    if experts:
        shared = r.get("shared_expert_intermediate_size", 5632)
        fields["moe"] = {"experts": experts, "top_k": r.get("num_experts_per_tok", 4),
                         "expert_d_ff": r.get("moe_intermediate_size", 1408),
                         "shared_d_ff": shared, "shared_expert_gate": bool(shared),
                         "every": r.get("decoder_sparse_step", 1),
                         "dense_layers": list(r.get("mlp_only_layers", []))}
    return fields


#: the supported architectures (the config's ``architectures[0]``)
ARCHITECTURES: dict[str, Callable[[_Reader], dict[str, Any]]] = {
    "LlamaForCausalLM": _llama,
    "MistralForCausalLM": _mistral,
    "Qwen2ForCausalLM": _qwen2,
    "Gemma2ForCausalLM": _gemma2,
    "Phi3ForCausalLM": _phi3,
    "GPT2LMHeadModel": _gpt2,
    "GPTNeoXForCausalLM": _gpt_neox,
    "MixtralForCausalLM": _mixtral,
    "Qwen2MoeForCausalLM": _qwen2_moe,
}
#: model_type -> architecture, for configs without an ``architectures`` list
MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
               "qwen2": "Qwen2ForCausalLM", "gemma2": "Gemma2ForCausalLM",
               "phi3": "Phi3ForCausalLM", "gpt2": "GPT2LMHeadModel",
               "gpt_neox": "GPTNeoXForCausalLM", "mixtral": "MixtralForCausalLM",
               "qwen2_moe": "Qwen2MoeForCausalLM"}


def read_config(path: str) -> tuple[dict, str]:
    """The parsed config and the file it came from (a directory's config.json)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ValueError(f"hf_config: {p}: no such file (a config.json, or a directory holding "
                         f"one; nothing is downloaded)")
    if p.stat().st_size > 2**20:
        raise ValueError(f"hf_config: {p}: {p.stat().st_size:,} bytes; a config.json is a few kB")
    try:
        config = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"hf_config: {p}: not a JSON config ({str(exc).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise ValueError(f"hf_config: {p}: the top level is not an object")
    return config, str(p)


def architecture(config: dict, source: str) -> str:
    names = config.get("architectures") or []
    name = names[0] if isinstance(names, list) and names else MODEL_TYPES.get(
        str(config.get("model_type")))
    if name not in ARCHITECTURES:
        what = name or f"model_type {config.get('model_type')!r}"
        raise ValueError(f"hf_config: {source}: {what} is not supported; supported: "
                         f"{', '.join(ARCHITECTURES)}")
    return name


def model_fields(path: str) -> dict[str, Any]:
    """The ModelSpec fields a config.json describes; one ValueError line naming the problem."""
    config, source = read_config(path)
    arch = architecture(config, source)
    reader = _Reader(config, source, arch)
    fields = ARCHITECTURES[arch](reader)
    unknown = reader.unused()
    if unknown:
        raise ValueError(f"hf_config: {source}: {unknown[0]!r} is a key the planner does not know "
                         f"for {arch}, and it may change the shape (keys read or ignored on "
                         f"purpose: docs/hf-configs.md); remove it if it does not")
    name = str(config.get("_name_or_path") or Path(source).parent.name or arch)
    return {"name": name, **fields}
