"""The model a spec describes: its shape, written out, named by a preset or read from a Hugging
Face config.json (planner/spec/hf.py), with each architecture family's defaults, and its
mixture-of-experts layers.  Validated once; derived widths are properties."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, PositiveFloat, model_validator

from planner.spec.base import Frozen as _Frozen
from planner.spec.base import PositiveInt
from planner.spec.catalog import (PRESET_META_KEYS, find_preset, model_presets, over_entry,
                                  unknown_name)
from planner.spec.units import Activation, Arch, AttentionKernel, Norm, Position


#: what each architecture family implies unless the spec says otherwise
ARCH_DEFAULTS: dict[Arch, dict[str, Any]] = {
    Arch.GPT2: dict(norm=Norm.LAYERNORM, activation=Activation.GELU, position=Position.LEARNED,
                    tied_embeddings=True, bias=True),
    Arch.LLAMA: dict(norm=Norm.RMSNORM, activation=Activation.SWIGLU, position=Position.ROPE,
                     tied_embeddings=False, bias=False),
}


#: the largest shape the planner sizes, several times today's largest dense models (Llama 3
#: 405B: 126 layers, d_model 16384, d_ff 53248, vocab 128256; contexts of 1-10M tokens): within
#: them every count and byte size stays exact in int64 (a 10^12-layer model overflowed it)
MAX_LAYERS = 2**14
MAX_D_MODEL = 2**17
MAX_D_FF = 4 * MAX_D_MODEL  # the default d_ff of the widest model
MAX_VOCAB = 2**24
MAX_SEQ_LEN = 2**24


#: experts one MoE layer may have (DeepSeek-V3: 256 routed; a few thousand is beyond any model)
MAX_EXPERTS = 4096


class MoESpec(_Frozen):
    """Mixture-of-experts MLPs: a router picks ``top_k`` of ``experts`` MLPs per token (Shazeer
    et al. 2017; Mixtral, Jiang et al. 2024), with DeepSpeed-MoE's capacity (Rajbhandari et al.
    2022; deepspeed/moe/sharded_moe.py): each expert takes at most C = max(ceil(top_k x
    capacity_factor x tokens / experts), min_capacity) tokens of a micro-batch, and computes on
    all C slots whether filled or not."""

    experts: PositiveInt = Field(le=MAX_EXPERTS, description="routed experts per MoE layer")
    top_k: PositiveInt = Field(2, description="experts each token is routed to")
    expert_d_ff: Optional[PositiveInt] = Field(None, le=MAX_D_FF,
                                               description="one expert's MLP width; default d_ff")
    shared_d_ff: int = Field(0, ge=0, le=MAX_D_FF, description="an always-on shared expert's "
                                                                "width (Qwen2-MoE); 0: none")
    shared_expert_gate: bool = Field(False, description="a sigmoid gate (d_model -> 1) on the "
                                                        "shared expert (Qwen2-MoE)")
    every: PositiveInt = Field(1, le=MAX_LAYERS, description="layer i is MoE when (i + 1) is a "
                                                             "multiple of every (Qwen2-MoE's "
                                                             "decoder_sparse_step)")
    dense_layers: tuple[int, ...] = Field((), description="layers kept dense (Qwen2-MoE's "
                                                          "mlp_only_layers), 0-based")
    capacity_factor: float = Field(1.0, gt=0, le=64, description="slots per expert as a multiple "
                                                                 "of an even share (DeepSpeed's "
                                                                 "default 1.0)")
    min_capacity: int = Field(4, ge=0, le=2**20, description="DeepSpeed's floor on the slots")
    drop_tokens: bool = Field(True, description="tokens beyond an expert's capacity are dropped; "
                                                "false: capacity is the busiest expert's load")
    load_imbalance: float = Field(1.0, ge=1, le=MAX_EXPERTS, description="without dropping, the "
                                  "busiest expert's load over an even share (allowance)")

    @model_validator(mode="after")
    def _check(self) -> "MoESpec":
        if self.top_k > self.experts:
            raise ValueError(f"top_k: top_k ({self.top_k}) is more than experts "
                             f"({self.experts})")
        if self.shared_expert_gate and not self.shared_d_ff:
            raise ValueError("shared_expert_gate: the gate scales the shared expert, and there "
                             "is none (shared_d_ff is 0)")
        return self


class ModelSpec(_Frozen):
    """Transformer shape.  ``preset`` names a shipped model; explicit fields override it."""

    preset: Optional[str] = Field(None, description="name of a shipped model preset")
    name: str = Field("custom", description="label used in reports")
    arch: Arch = Field(Arch.GPT2, description="block family; sets the defaults below")
    n_layers: PositiveInt = Field(le=MAX_LAYERS)
    d_model: PositiveInt = Field(le=MAX_D_MODEL)
    n_heads: PositiveInt
    n_kv_heads: PositiveInt = Field(description="key/value heads (GQA); defaults to n_heads")
    d_ff: PositiveInt = Field(le=MAX_D_FF, description="MLP inner size; defaults to 4*d_model "
                              "(GELU)")
    vocab_size: PositiveInt = Field(le=MAX_VOCAB)
    seq_len: PositiveInt = Field(le=MAX_SEQ_LEN)
    max_positions: PositiveInt = Field(le=MAX_SEQ_LEN, description="learned position table "
                                       "size; default seq_len")
    norm: Norm
    activation: Activation
    position: Position
    tied_embeddings: bool
    bias: bool
    attention: AttentionKernel = AttentionKernel.FLASH
    loss_dtype: Literal["fp32", "param"] = Field(
        "fp32", description="fp32: logits are upcast before cross-entropy (the usual recipe)")
    fused_kernels: bool = Field(
        False, description="fused norm, rotary, SwiGLU and chunked cross-entropy kernels (Megatron,"
                           " Liger, lit-gpt): fewer memory passes and saved tensors; the "
                           "executor's model runs PyTorch's unfused ops")
    fused_loss: Optional[bool] = Field(
        None, description="the cross-entropy alone: fused and chunked (true: no full-size fp32 "
                          "copies of the logits) or PyTorch's (false: torchtitan compiles each "
                          "block but not the loss); null follows fused_kernels")
    hf_config: Optional[str] = Field(
        None, description="a Hugging Face config.json (or a directory holding one; relative to "
                          "the spec) the shape is read from; fields written here override it "
                          "(docs/hf-configs.md)")
    head_dim: Optional[PositiveInt] = Field(
        None, le=MAX_D_MODEL, description="width of one attention head; default d_model / "
                                          "n_heads (Gemma 2: 256 whatever d_model is)")
    qkv_bias: Optional[bool] = Field(None, description="biases on q, k, v (default: bias; Qwen2: "
                                                       "true with bias false)")
    out_bias: Optional[bool] = Field(None, description="bias on the attention output projection "
                                                       "(default: bias)")
    mlp_bias: Optional[bool] = Field(None, description="biases on the MLP's matrices (default: "
                                                       "bias)")
    norms_per_block: Literal[2, 4] = Field(
        2, description="4: Gemma 2's sandwich norms (before and after attention and the MLP)")
    parallel_residual: bool = Field(
        False, description="attention and MLP both read the block's input (GPT-NeoX, GPT-J)")
    rotary_fraction: float = Field(1.0, gt=0, le=1, description="share of each head rotated by "
                                                                "RoPE (GPT-NeoX rotary_pct 0.25)")
    logit_softcap: Optional[PositiveFloat] = Field(
        None, description="c·tanh(logits/c) before the loss (Gemma 2: 30)")
    attention_softcap: Optional[PositiveFloat] = Field(
        None, description="c·tanh(scores/c) in attention (Gemma 2: 50); FlashAttention >= 2.6 "
                          "applies it in the kernel")
    sliding_window: Optional[PositiveInt] = Field(
        None, le=MAX_SEQ_LEN, description="keys each query attends to on sliding-window layers "
                                          "(Mistral 4096, Gemma 2 4096)")
    moe: Optional[MoESpec] = Field(None, description="mixture-of-experts MLPs "
                                                     "(docs/hf-configs.md, MoE)")
    sliding_window_layers: Literal["all", "alternate"] = Field(
        "all", description="which layers slide: all (Mistral), or every other one from the "
                           "first (Gemma 2)")

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"preset": data}
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("hf_config") is not None:
            from planner.spec.hf import model_fields
            if data.get("preset") is not None:
                raise ValueError("hf_config: give a preset or an hf_config, not both")
            if "seq_len" not in data:
                raise ValueError("seq_len: a model read from hf_config needs the training "
                                 "sequence length (max_position_embeddings is the model's "
                                 "limit, not the run's)")
            data = {**model_fields(str(data["hf_config"])), **data}
        preset = data.get("preset")
        if preset is not None:
            found = find_preset(str(preset))
            if found is None:
                raise ValueError("preset: " + unknown_name("preset", "presets", str(preset),
                                                           model_presets()))
            data = over_entry(data, "preset", found, drop=PRESET_META_KEYS)
        try:
            arch = Arch(data.get("arch", Arch.GPT2))
        except ValueError:
            arch = Arch.GPT2  # pydantic reports the bad value; defaults keep it the only error
        for key, value in ARCH_DEFAULTS[arch].items():
            data.setdefault(key, value)
        data.setdefault("n_kv_heads", data.get("n_heads"))
        for key in ("qkv_bias", "out_bias", "mlp_bias"):
            if data.get(key) is None:
                data[key] = data.get("bias")
        d, heads = data.get("d_model"), data.get("n_heads")
        if data.get("head_dim") is None and isinstance(d, int) and isinstance(heads, int) \
                and heads > 0:
            if d % heads:
                raise ValueError(f"n_heads: n_heads ({heads}) must divide d_model ({d}), or give "
                                 f"head_dim")
            data["head_dim"] = d // heads
        data.setdefault("max_positions", data.get("seq_len"))
        if "d_ff" not in data and isinstance(data.get("d_model"), int):
            if Activation(data["activation"]) is Activation.SWIGLU:
                raise ValueError("d_ff: d_ff is required for a SwiGLU MLP (Llama uses "
                                 "~8/3*d_model, rounded to a multiple of 256)")
            data["d_ff"] = 4 * data["d_model"]
        return data

    @model_validator(mode="after")
    def _check_shape(self) -> "ModelSpec":
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads: n_kv_heads ({self.n_kv_heads}) must divide n_heads "
                             f"({self.n_heads})")
        if self.moe is not None:
            bad = [i for i in self.moe.dense_layers if not 0 <= i < self.n_layers]
            if bad:
                raise ValueError(f"moe.dense_layers: layer {bad[0]} is not one of the "
                                 f"{self.n_layers} layers (0-based)")
            if self.moe.expert_d_ff is None:
                object.__setattr__(self, "moe", self.moe.model_copy(
                    update={"expert_d_ff": self.d_ff}))
        if self.position is Position.LEARNED and self.max_positions < self.seq_len:
            raise ValueError(f"max_positions: max_positions ({self.max_positions}) is smaller than seq_len "
                             f"({self.seq_len})")
        return self

    def is_moe_layer(self, i: int) -> bool:
        """Layer i (0-based) has experts: Qwen2-MoE's rule (i + 1) % every == 0, less the layers
        kept dense."""
        moe = self.moe
        return moe is not None and (i + 1) % moe.every == 0 and i not in moe.dense_layers

    @property
    def moe_layers(self) -> int:
        """Layers with experts: every ``every``-th, less the dense ones among them."""
        moe = self.moe
        if moe is None:
            return 0
        return self.n_layers // moe.every - sum(
            (i + 1) % moe.every == 0 for i in set(moe.dense_layers))

    @property
    def loss_fused(self) -> bool:
        """The cross-entropy runs fused and chunked: fused_loss, or fused_kernels when unset."""
        return self.fused_kernels if self.fused_loss is None else self.fused_loss

    @property
    def q_dim(self) -> int:
        """Width of Q (and of the attention output): n_heads * head_dim."""
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V): n_kv_heads * head_dim."""
        return self.n_kv_heads * self.head_dim
