"""The spec language: YAML validated once, at the boundary, into frozen pydantic models.

Downstream code never re-validates or re-defaults: presets and per-architecture defaults are
resolved here, and derived values (``head_dim``, ``world_size``) are properties.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt,
                      ValidationError, field_validator, model_validator)

from .catalog import GPU_NAME_KEYS, PRESET_META_KEYS, find_gpu, find_preset, gpu_catalog, model_presets
from .errors import SpecError
from .units import (Activation, Arch, AttentionKernel, Norm, Offload, Optimizer, Position,
                    Precision, Recompute, ZeroStage)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)


# --------------------------------------------------------------------------------------- model

#: what each architecture family implies unless the spec says otherwise
ARCH_DEFAULTS: dict[Arch, dict[str, Any]] = {
    Arch.GPT2: dict(norm=Norm.LAYERNORM, activation=Activation.GELU, position=Position.LEARNED,
                    tied_embeddings=True, bias=True),
    Arch.LLAMA: dict(norm=Norm.RMSNORM, activation=Activation.SWIGLU, position=Position.ROPE,
                     tied_embeddings=False, bias=False),
}


class ModelSpec(_Frozen):
    """Transformer shape.  ``preset`` names a shipped model; explicit fields override it."""

    preset: Optional[str] = Field(None, description="name of a shipped model preset")
    name: str = Field("custom", description="label used in reports")
    arch: Arch = Field(Arch.GPT2, description="block family; sets the defaults below")
    n_layers: PositiveInt
    d_model: PositiveInt
    n_heads: PositiveInt
    n_kv_heads: PositiveInt = Field(description="key/value heads (GQA); defaults to n_heads")
    d_ff: PositiveInt = Field(description="MLP inner size; defaults to 4*d_model (GELU)")
    vocab_size: PositiveInt
    seq_len: PositiveInt
    max_positions: PositiveInt = Field(description="learned position table size; default seq_len")
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

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"preset": data}
        if not isinstance(data, dict):
            return data
        data = dict(data)
        preset = data.get("preset")
        if preset is not None:
            found = find_preset(str(preset))
            if found is None:
                known = ", ".join(model_presets())
                raise ValueError(f"preset: unknown preset {preset!r}; known presets: {known}")
            canonical, entry = found
            base = {k: v for k, v in entry.items() if k not in PRESET_META_KEYS}
            data = {**base, "name": canonical, **data, "preset": canonical}
        try:
            arch = Arch(data.get("arch", Arch.GPT2))
        except ValueError:
            arch = Arch.GPT2  # pydantic reports the bad value; defaults keep it the only error
        for key, value in ARCH_DEFAULTS[arch].items():
            data.setdefault(key, value)
        data.setdefault("n_kv_heads", data.get("n_heads"))
        data.setdefault("max_positions", data.get("seq_len"))
        if "d_ff" not in data and isinstance(data.get("d_model"), int):
            if Activation(data["activation"]) is Activation.SWIGLU:
                raise ValueError("d_ff: d_ff is required for a SwiGLU MLP (Llama uses "
                                 "~8/3*d_model, rounded to a multiple of 256)")
            data["d_ff"] = 4 * data["d_model"]
        return data

    @model_validator(mode="after")
    def _check_shape(self) -> "ModelSpec":
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads: n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads: n_kv_heads ({self.n_kv_heads}) must divide n_heads "
                             f"({self.n_heads})")
        if self.position is Position.LEARNED and self.max_positions < self.seq_len:
            raise ValueError(f"max_positions: max_positions ({self.max_positions}) is smaller than seq_len "
                             f"({self.seq_len})")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V): n_kv_heads * head_dim."""
        return self.n_kv_heads * self.head_dim


# ------------------------------------------------------------------------------------- cluster

LinkKind = Literal["nvswitch", "nvlink", "pcie", "infinity_fabric"]

#: what a GPU that is not in the catalog must state
CUSTOM_GPU_FIELDS = {"memory_gib", "peak_tflops", "hbm_gbps", "intra_node_gbps"}


class EfficiencySpec(_Frozen):
    """Achieved fractions of peak the step-time model uses (docs/time-model.md)."""

    gemm_max: float = Field(0.8, gt=0, le=1, description="large-GEMM fraction of dense peak")
    gemm_half_dim: PositiveFloat = Field(256, description="GEMM dimension at half efficiency")
    attention_fwd: float = Field(0.5, gt=0, le=1, description="fused attention forward")
    attention_bwd: float = Field(0.4, gt=0, le=1, description="fused attention backward")
    gemm_fp32_max: float = Field(0.9, gt=0, le=1, description="fp32 (SIMT) GEMM fraction of "
                                 "the fp32 peak")
    gemm_fp32_half_dim: PositiveFloat = Field(64, description="fp32 GEMM dimension at half "
                                              "efficiency")
    attention_fp32: float = Field(0.5, gt=0, le=1, description="memory-efficient attention in "
                                  "fp32, of the fp32 peak")
    hbm: float = Field(0.85, gt=0, le=1, description="memory-bound kernels, of hbm_gbps")
    network: float = Field(0.85, gt=0, le=1, description="NCCL bus bandwidth, of link speed")


class GpuSpec(_Frozen):
    """One accelerator: memory, dense peak throughput per dtype, bandwidths (GB/s)."""

    name: str
    memory_gib: PositiveFloat = Field(description="capacity visible to the framework, GiB")
    peak_tflops: dict[str, PositiveFloat] = Field(description="dense peak TFLOP/s per dtype")
    hbm_gbps: PositiveFloat = Field(description="HBM bandwidth, GB/s")
    intra_node_link: LinkKind = "nvswitch"
    intra_node_gbps: PositiveFloat = Field(description="per-GPU bidirectional link bandwidth, GB/s")
    pcie_gbps: PositiveFloat = Field(32, description="host<->GPU bandwidth per direction, GB/s")
    efficiency: EfficiencySpec = EfficiencySpec()
    cublas_workspace_mib: NonNegativeFloat = Field(
        8.125, description="PyTorch's cuBLAS workspace per (handle, stream), MiB")
    source: str = "user supplied"

    @model_validator(mode="before")
    @classmethod
    def _from_catalog(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"name": data}
        if isinstance(data, dict) and "name" in data:
            found = find_gpu(str(data["name"]))
            if found is not None:
                canonical, entry = found
                base = {k: v for k, v in entry.items() if k not in GPU_NAME_KEYS}
                data = {**base, **data, "name": canonical}
            elif not CUSTOM_GPU_FIELDS <= set(data):
                known = ", ".join(gpu_catalog())
                raise ValueError(f"name: unknown GPU {data['name']!r}; known GPUs: {known} (a GPU "
                                 f"outside the catalog needs {', '.join(sorted(CUSTOM_GPU_FIELDS))})")
        return data

    def supports(self, precision: Precision) -> bool:
        return precision.value in self.peak_tflops

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * 2**30


class IntraNodeSpec(_Frozen):
    """The link between GPUs of one node; defaults to the GPU catalog's usual server."""

    link: LinkKind
    gbps: PositiveFloat = Field(description="per-GPU bidirectional bandwidth, GB/s")
    latency_us: PositiveFloat = Field(3.0, description="per hop, microseconds")


class InterNodeSpec(_Frozen):
    """The network between nodes."""

    network: Literal["infiniband", "ethernet", "roce"] = "infiniband"
    nics_per_node: PositiveInt = 8
    nic_gbit: PositiveFloat = Field(200, description="per NIC, Gbit/s")
    latency_us: PositiveFloat = Field(15.0, description="per ring hop through the network "
                                      "(NCCL), microseconds")
    nodes_per_leaf: PositiveInt = Field(32, description="nodes under one leaf switch")
    oversubscription: float = Field(1.0, ge=1.0, description="leaf uplink oversubscription "
                                    "(1 = non-blocking fat tree)")

    @property
    def node_gbps(self) -> float:
        """Injection bandwidth of one node, GB/s."""
        return self.nics_per_node * self.nic_gbit / 8


class ClusterSpec(_Frozen):
    gpu: GpuSpec
    nodes: PositiveInt = 1
    gpus_per_node: PositiveInt = 8
    intra_node: IntraNodeSpec = Field(description="defaults to the GPU's usual server link")
    inter_node: InterNodeSpec = InterNodeSpec()
    host_memory_gib: PositiveFloat = Field(1024, description="host RAM per node (offload)")

    @model_validator(mode="before")
    @classmethod
    def _default_link(cls, data: Any) -> Any:
        if isinstance(data, dict) and "intra_node" not in data and "gpu" in data:
            try:
                gpu = GpuSpec.model_validate(data["gpu"])
            except ValidationError:
                return data  # reported with its path when the field itself is validated
            data = {**data, "intra_node": {"link": gpu.intra_node_link,
                                           "gbps": gpu.intra_node_gbps}}
        return data

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


# ------------------------------------------------------------------------------------ training

class TrainingSpec(_Frozen):
    tokens: Union[PositiveFloat, Literal["chinchilla"]] = Field(
        description="tokens to train on, or 'chinchilla' (compute-optimal for the model)")
    global_batch_tokens: Optional[PositiveInt] = None
    global_batch_sequences: Optional[PositiveInt] = None
    optimizer: Optimizer = Optimizer.ADAMW
    gradient_clipping: NonNegativeFloat = 1.0

    @model_validator(mode="after")
    def _one_batch(self) -> "TrainingSpec":
        given = [self.global_batch_tokens is not None, self.global_batch_sequences is not None]
        if sum(given) != 1:
            raise ValueError("global_batch_tokens: give exactly one of global_batch_tokens or "
                             "global_batch_sequences")
        return self


# -------------------------------------------------------------------------------------- search

def _as_axis(value: Any) -> Any:
    if value == "auto":
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("an empty list allows nothing; use 'auto' or list values")
        return tuple(value)
    return (value,)


class SearchSpec(_Frozen):
    """Each dimension: one value, a list, or 'auto' (every value that can make sense)."""

    dp: Union[Literal["auto"], tuple[PositiveInt, ...]] = "auto"
    tp: Union[Literal["auto"], tuple[PositiveInt, ...]] = "auto"
    pp: Union[Literal["auto"], tuple[PositiveInt, ...]] = "auto"
    zero: Union[Literal["auto"], tuple[ZeroStage, ...]] = "auto"
    precision: Union[Literal["auto"], tuple[Precision, ...]] = "auto"
    micro_batch: Union[Literal["auto"], tuple[PositiveInt, ...]] = "auto"
    recompute: Union[Literal["auto"], tuple[Recompute, ...]] = "auto"
    offload: Union[Literal["auto"], tuple[Offload, ...]] = (Offload.NONE,)
    sequence_parallel: Union[Literal["auto"], tuple[bool, ...]] = (False,)
    memory_headroom: float = Field(0.0, ge=0, lt=0.9,
                                   description="fraction of GPU memory kept free")
    top: PositiveInt = Field(5, description="alternatives shown in the report")

    @field_validator("dp", "tp", "pp", "zero", "precision", "micro_batch", "recompute",
                     "offload", "sequence_parallel", mode="before")
    @classmethod
    def _axis(cls, value: Any) -> Any:
        return _as_axis(value)


class RuntimeSpec(_Frozen):
    """DeepSpeed buffer sizes (its defaults) and the allocator facts the report shows."""

    cuda_context_gib: NonNegativeFloat = Field(
        0.5, description="CUDA context + kernels, outside PyTorch's allocator")
    allocator_fragmentation: NonNegativeFloat = Field(
        0.175, description="reserved/allocated - 1 of the caching allocator "
        "(median of the H200 calibration runs)")
    reduce_bucket_size: PositiveInt = Field(500_000_000, description="elements")
    allgather_bucket_size: PositiveInt = Field(500_000_000, description="elements")
    stage3_prefetch_bucket_size: PositiveInt = Field(50_000_000, description="elements")
    stage3_max_live_parameters: PositiveInt = Field(1_000_000_000, description="elements")
    stage3_param_persistence_threshold: PositiveInt = Field(100_000, description="elements")
    stage3_max_reuse_distance: PositiveInt = Field(1_000_000_000, description="elements")
    sub_group_size: PositiveInt = Field(1_000_000_000, description="elements")
    contiguous_gradients: bool = Field(True, description="DeepSpeed's gradient bucket copies")
    overlap_comm: Optional[bool] = Field(
        None, description="None: DeepSpeed's default (on for ZeRO-3, off for 1/2); on doubles "
                          "the ZeRO-1/2 bucket")
    virtual_stages: PositiveInt = Field(1, description="interleaved pipeline chunks per stage "
                                        "(1 = DeepSpeed's 1F1B)")
    cpu_op_us: NonNegativeFloat = Field(
        75.0, description="host time per kernel of eager PyTorch under the DeepSpeed engine "
                          "(module and dispatch overhead), microseconds")
    zero_hook_us: NonNegativeFloat = Field(
        30.0, description="DeepSpeed ZeRO-1/2 gradient-hook work per parameter tensor and "
                          "micro-batch, microseconds")
    zero3_module_us: NonNegativeFloat = Field(
        700.0, description="DeepSpeed ZeRO-3 fetch/release bookkeeping per module and pass, "
                           "microseconds")
    optimizer_tensor_us: NonNegativeFloat = Field(
        100.0, description="per-parameter-tensor host work of an unfused optimizer step, "
                          "microseconds")
    zero3_gather_granularity: Literal["tensor", "module", "block"] = Field(
        "module", description="ZeRO-3 gathers per parameter tensor (DeepSpeed < 0.7), per "
                              "module (DeepSpeed now) or per block (FSDP units)")
    host_sync_fraction: float = Field(
        0.8, ge=0, le=1, description="share of the host's per-micro-batch work that waits on "
                                     "the GPU (synchronising calls) instead of running ahead")
    host_adam_params_per_s: PositiveFloat = Field(
        1.0e9, description="DeepSpeedCPUAdam throughput per GPU's share of the host")
    torch_adam: bool = Field(False, description="PyTorch's foreach AdamW instead of DeepSpeed's "
                             "fused kernel (adds a 4-byte/param temporary in the step)")


# ---------------------------------------------------------------------------------------- spec

class Spec(_Frozen):
    model: ModelSpec
    cluster: ClusterSpec
    training: TrainingSpec
    search: SearchSpec = SearchSpec()
    runtime: RuntimeSpec = RuntimeSpec()
    name: Optional[str] = None
    description: Optional[str] = None

    @model_validator(mode="after")
    def _batch_fits_sequence(self) -> "Spec":
        tokens = self.training.global_batch_tokens
        if tokens is not None and tokens % self.model.seq_len:
            raise ValueError(f"training.global_batch_tokens: {tokens} is not a multiple of "
                             f"model.seq_len ({self.model.seq_len})")
        return self

    @property
    def global_batch_sequences(self) -> int:
        if self.training.global_batch_sequences is not None:
            return self.training.global_batch_sequences
        return self.training.global_batch_tokens // self.model.seq_len


# --------------------------------------------------------------------------------- loading

def _field_path(loc: tuple) -> str:
    """Dotted path of a pydantic error location, without union-branch tags and list indices."""
    parts = [str(p) for p in loc if not isinstance(p, int)
             and not (isinstance(p, str) and ("[" in p or p.startswith("function-")))]
    return ".".join(parts)


def _problem(err: dict) -> tuple[str, str]:
    """(extra path, message): validators prefix their message with the field they blame."""
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if err["type"] == "extra_forbidden":
        return "", "unknown key"
    if err["type"] == "missing":
        return "", "required field is missing"
    field, sep, rest = msg.partition(": ")
    if sep and field.replace(".", "").replace("_", "").isalnum() and " " not in field:
        return field, rest
    return "", msg


def _best_errors(errors: list[dict]) -> list[tuple[str, str]]:
    """One (path, problem) per field.  A union such as ``'auto' | list`` reports every branch;
    the literal 'auto' branch is the least informative, so it only counts when alone."""
    by_path: dict[str, list[dict]] = {}
    for err in errors:
        by_path.setdefault(_field_path(err["loc"]), []).append(err)
    out = []
    for path, errs in by_path.items():
        informative = [e for e in errs if e["type"] != "literal_error"] or errs
        extra, problem = _problem(informative[0])
        out.append((".".join(p for p in (path, extra) if p), problem))
    return out


def spec_from_dict(data: Any, source: str = "spec") -> Spec:
    """Validate a parsed spec; raise SpecError naming the first bad field."""
    if not isinstance(data, dict):
        raise SpecError("", f"{source}: the top level must be a mapping of sections")
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        problems = _best_errors(exc.errors())
        path, problem = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SpecError(path, problem + more) from None


class _SpecLoader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where ``4e6`` is a string; specs are written with YAML 1.2
    numbers in mind (``tokens: 2e12``, ``global_batch_tokens: 4.194304e6``)."""


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    if not path.is_file():
        raise SpecError("", f"{path}: no such spec file")
    try:
        data = yaml.load(path.read_text(), Loader=_SpecLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise SpecError("", f"{path}: invalid YAML{where}: "
                        f"{getattr(exc, 'problem', None) or exc}") from None
    return spec_from_dict(data, str(path))


def json_schema() -> dict:
    """The validator's schema, widened to the short forms the validators accept: a preset name
    for ``model``, a catalog name for ``cluster.gpu``, one value for a search axis, and fields
    that presets and architecture defaults fill in."""
    schema = Spec.model_json_schema()
    defs, props = schema["$defs"], schema["properties"]
    props["model"] = {"anyOf": [{"type": "string", "description": "a preset name"},
                                props["model"]]}
    defs["ModelSpec"].pop("required", None)
    defs["ModelSpec"]["anyOf"] = [{"required": ["preset"]},
                                  {"required": ["n_layers", "d_model", "n_heads", "vocab_size",
                                                "seq_len"]}]
    cluster = defs["ClusterSpec"]["properties"]
    cluster["gpu"] = {"anyOf": [{"type": "string", "description": "a catalog name or alias"},
                                cluster["gpu"]]}
    defs["GpuSpec"]["required"] = ["name"]
    defs["ClusterSpec"]["required"] = ["gpu"]
    for prop in defs["SearchSpec"]["properties"].values():
        arrays = [b for b in prop.get("anyOf", []) if b.get("type") == "array"]
        if arrays:
            prop["anyOf"].append(arrays[0]["items"])
    return schema


__all__ = ["Spec", "ModelSpec", "ClusterSpec", "GpuSpec", "TrainingSpec", "SearchSpec",
           "RuntimeSpec", "load_spec", "spec_from_dict", "json_schema"]
