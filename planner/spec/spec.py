"""The spec language: YAML validated once, at the boundary, into frozen pydantic models.

Downstream code never re-validates or re-defaults: presets and per-architecture defaults are
resolved here, and derived values (``head_dim``, ``world_size``) are properties.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import (Field, NonNegativeFloat, PositiveFloat, PositiveInt, PrivateAttr,
                      ValidationError, field_validator, model_validator)

from planner.errors import SpecError
from planner.spec.base import Frozen as _Frozen
from planner.spec.catalog import (PRESET_META_KEYS, find_preset, find_scaling_law, model_presets,
                                  over_entry, scaling_laws)
from planner.spec.cluster import (ClusterSpec, EfficiencySpec, GpuSpec,  # noqa: F401 (API)
                                  InterNodeSpec, IntraNodeSpec)
from planner.spec.units import (Activation, Arch, AttentionKernel, Norm, Offload, Optimizer,
                                Position, Precision, Recompute, ZeroStage)

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
            data = over_entry(data, "preset", found, drop=PRESET_META_KEYS)
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


# ------------------------------------------------------------------------------------ training

#: the constants of each functional form of a loss law
LAW_CONSTANTS = {"chinchilla": ("E", "A", "B", "alpha", "beta"),
                 "kaplan": ("N_c", "D_c", "alpha_N", "alpha_D")}


class ScalingLawSpec(_Frozen):
    """A loss law in nats per token (planner/capacity/scaling.py): a preset name
    (planner/spec/data/scaling_laws.yaml) or the constants of one functional form, e.g. from
    planner.capacity.lawfit.fit_law.  ``chinchilla``: L = E + A/N^alpha + B/D^beta with N all
    parameters (Hoffmann et al. 2022, eq. 2); ``kaplan``: L = [(N_c/N)^(alpha_N/alpha_D) +
    D_c/D]^alpha_D with N the non-embedding parameters (Kaplan et al. 2020, eq. 1.5)."""

    preset: Optional[str] = Field(None, description="name of a shipped scaling law")
    name: str = Field("custom", description="label used in reports")
    form: Literal["chinchilla", "kaplan"] = Field("chinchilla", description="functional form")
    E: Optional[PositiveFloat] = Field(None, description="irreducible loss, nats/token")
    A: Optional[PositiveFloat] = Field(None, description="parameter term coefficient")
    B: Optional[PositiveFloat] = Field(None, description="data term coefficient")
    alpha: Optional[PositiveFloat] = Field(None, description="parameter exponent")
    beta: Optional[PositiveFloat] = Field(None, description="data exponent")
    N_c: Optional[PositiveFloat] = Field(None, description="kaplan: parameter scale")
    D_c: Optional[PositiveFloat] = Field(None, description="kaplan: data scale, tokens")
    alpha_N: Optional[PositiveFloat] = Field(None, description="kaplan: parameter exponent")
    alpha_D: Optional[PositiveFloat] = Field(None, description="kaplan: data exponent")
    source: str = "user supplied"

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"preset": data}
        if isinstance(data, dict) and data.get("preset") is not None:
            found = find_scaling_law(str(data["preset"]))
            if found is None:
                known = ", ".join(scaling_laws())
                raise ValueError(f"preset: unknown scaling law {data['preset']!r}; known: {known}")
            data = over_entry(data, "preset", found)
        return data

    @model_validator(mode="after")
    def _constants_of_the_form(self) -> "ScalingLawSpec":
        for key in LAW_CONSTANTS[self.form]:
            if getattr(self, key) is None:
                raise ValueError(f"{key}: a {self.form}-form law needs {key} (or a preset)")
        for form, keys in LAW_CONSTANTS.items():
            stray = [k for k in keys if form != self.form and getattr(self, k) is not None]
            if stray:
                raise ValueError(f"{stray[0]}: a {self.form}-form law takes no {stray[0]} (it "
                                 f"is a {form}-form constant; set form: {form})")
        return self


DEFAULT_SCALING_LAW = "epoch2024"

#: the ways to state a budget; exactly one is given (dollars with its price)
BUDGET_KINDS = ("gpu_hours", "days", "flops", "dollars")


class BudgetSpec(_Frozen):
    """What the run may spend; the planner picks the model size (budget mode,
    docs/capacity-planning.md)."""

    gpu_hours: Optional[PositiveFloat] = Field(None, description="GPU-hours on this cluster")
    days: Optional[PositiveFloat] = Field(None, description="wall-clock days on this cluster")
    flops: Optional[PositiveFloat] = Field(None, description="model FLOPs (forward + backward, "
                                           "counted from the shape)")
    dollars: Optional[PositiveFloat] = Field(None, description="money, at price_per_gpu_hour")
    price_per_gpu_hour: Optional[PositiveFloat] = Field(None, description="dollars per GPU-hour")

    @model_validator(mode="after")
    def _exactly_one(self) -> "BudgetSpec":
        given = [k for k in BUDGET_KINDS if getattr(self, k) is not None]
        if not given:
            raise ValueError(f"give one of {', '.join(BUDGET_KINDS)}")
        if len(given) > 1:
            raise ValueError(f"{given[1]}: give exactly one of {', '.join(BUDGET_KINDS)} "
                             f"(got {' and '.join(given)})")
        if self.dollars is not None and self.price_per_gpu_hour is None:
            raise ValueError("price_per_gpu_hour: a dollars budget needs price_per_gpu_hour")
        if self.dollars is None and self.price_per_gpu_hour is not None:
            raise ValueError("price_per_gpu_hour: only used with a dollars budget")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in BUDGET_KINDS if getattr(self, k) is not None)


class LabSpec(_Frozen):
    """The scaling-law lab (docs/capacity-planning.md): an IsoFLOP grid as in Hoffmann et al.
    2022, section 3.2 - ``levels`` compute levels, each ``level_ratio`` times the last, and at
    each ``sizes`` model sizes of the budget-mode family spread log-evenly from 1/spread to
    spread times the law's optimum, each trained on C / (6N) tokens.  Give the budget of the
    whole sweep in model FLOPs or in hours on the spec's cluster (the planner's time model)."""

    flops: Optional[PositiveFloat] = Field(None, description="6ND summed over every point")
    hours: Optional[PositiveFloat] = Field(None, description="wall-clock hours on this cluster")
    levels: int = Field(3, ge=2, le=12, description="compute levels")
    level_ratio: float = Field(4.0, gt=1, le=100, description="compute of a level / the last")
    sizes: int = Field(5, ge=3, le=15, description="model sizes per level")
    spread: float = Field(4.0, gt=1, le=64, description="sizes from optimum/spread to "
                          "optimum*spread")

    @model_validator(mode="after")
    def _one_budget(self) -> "LabSpec":
        if (self.flops is None) == (self.hours is None):
            raise ValueError("flops: give the sweep's budget as flops or as hours (one of them)")
        return self


class TrainingSpec(_Frozen):
    tokens: Optional[Union[PositiveFloat, Literal["chinchilla"]]] = Field(
        None, description="tokens to train on, or 'chinchilla' (compute-optimal for the model "
                          "under scaling_law); give tokens or budget")
    budget: Optional[BudgetSpec] = Field(
        None, description="budget mode: the planner chooses the model size and tokens")
    lab: Optional[LabSpec] = Field(
        None, description="the scaling-law lab: a sweep of small models to fit a law on")
    scaling_law: ScalingLawSpec = Field(
        default_factory=lambda: ScalingLawSpec.model_validate(DEFAULT_SCALING_LAW),
        description="loss law for 'chinchilla' tokens, predicted loss and budget mode")
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
        given = [k for k in ("tokens", "budget", "lab") if getattr(self, k) is not None]
        if not given:
            raise ValueError("tokens: give tokens (a number or 'chinchilla'), a budget or a lab")
        if len(given) > 1:
            raise ValueError(f"{given[1]}: give one of tokens, budget or lab (got "
                             f"{' and '.join(given)}): budget mode and the lab choose the tokens")
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


# -------------------------------------------------------------------------------------- launch

class SlurmSpec(_Frozen):
    """What a SLURM job script needs beyond the cluster section (docs/executor.md)."""

    partition: Optional[str] = Field(None, description="#SBATCH --partition")
    account: Optional[str] = Field(None, description="#SBATCH --account")
    time: Optional[str] = Field(None, description="#SBATCH --time, e.g. 2-00:00:00")
    container_image: Optional[str] = Field(None, description="srun --container-image (pyxis)")
    extra: tuple[str, ...] = Field((), description="more #SBATCH options, e.g. --qos=high")

    @field_validator("time")
    @classmethod
    def _slurm_time(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}", value):
            raise ValueError(f"{value!r} is not a SLURM time: [D-]HH[:MM[:SS]], e.g. 2-00:00:00")
        return value


class NcclSpec(_Frozen):
    """NCCL settings the job exports (NCCL's environment variables)."""

    debug: Optional[Literal["VERSION", "WARN", "INFO", "TRACE"]] = Field(
        None, description="NCCL_DEBUG")
    socket_ifname: Optional[str] = Field(None, description="NCCL_SOCKET_IFNAME, e.g. ib0")
    ib_hca: Optional[str] = Field(None, description="NCCL_IB_HCA, e.g. mlx5")

    def env(self) -> dict[str, str]:
        names = {"debug": "NCCL_DEBUG", "socket_ifname": "NCCL_SOCKET_IFNAME",
                 "ib_hca": "NCCL_IB_HCA"}
        return {names[k]: str(v) for k, v in self.model_dump().items() if v is not None}


class LaunchSpec(_Frozen):
    """How ``plan SPEC --execute`` starts the job on the spec's cluster; the command and the
    script describe that cluster, never the machine that runs ``plan``."""

    launcher: Literal["auto", "torchrun", "deepspeed", "slurm"] = Field(
        "auto", description="auto: torchrun on one node, deepspeed with hosts, else slurm")
    hosts: Optional[tuple[str, ...]] = Field(None, description="one host per node (deepspeed)")
    hostfile: Optional[str] = Field(None, description="an existing DeepSpeed hostfile, relative "
                                    "to workdir (instead of hosts)")
    master_addr: Optional[str] = Field(None, description="rendezvous host (default: the first)")
    master_port: PositiveInt = Field(29500, le=65535)
    python: str = Field("python3", description="the interpreter of the environment the job "
                        "runs in, on the cluster's nodes")
    workdir: Optional[str] = Field(None, description="the project's directory on the cluster "
                                   "(default: where the job is submitted from)")
    env: dict[str, str] = Field(default_factory=dict, description="environment to pass")
    nccl: NcclSpec = NcclSpec()
    slurm: SlurmSpec = SlurmSpec()
    script: Optional[str] = Field(None, description="your own training script instead of the "
                                  "built-in GPT; it gets the plan's DeepSpeed config and layout")
    script_args: tuple[str, ...] = Field((), description="arguments for script")

    @model_validator(mode="after")
    def _one_host_list(self) -> "LaunchSpec":
        if self.hosts is not None and self.hostfile is not None:
            raise ValueError("hostfile: give hosts or hostfile, not both")
        return self

    def job_env(self) -> dict[str, str]:
        """What every rank gets: NCCL settings, then the spec's own variables."""
        return {**self.nccl.env(), **self.env}


# ---------------------------------------------------------------------------------------- spec

class Spec(_Frozen):
    model: ModelSpec
    cluster: ClusterSpec
    training: TrainingSpec
    search: SearchSpec = SearchSpec()
    runtime: RuntimeSpec = RuntimeSpec()
    launch: LaunchSpec = LaunchSpec()
    name: Optional[str] = None
    description: Optional[str] = None
    #: the mapping as written (before presets and defaults), kept by spec_from_dict so that
    #: what-if edits change what the user wrote (planner/whatif.py); not a field
    _written: Optional[dict] = PrivateAttr(None)

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
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        problems = _best_errors(exc.errors())
        path, problem = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SpecError(path, problem + more) from None
    spec._written = copy.deepcopy(data)
    return spec


def spec_to_dict(spec: Spec) -> dict:
    """A mapping that validates to ``spec``: what the user wrote when it still describes this
    spec (presets, short forms and defaults left to the validator, so an edit of ``seq_len`` or
    ``gpu`` re-derives what depends on it), else the resolved fields (a spec built by model_copy)."""
    written = spec._written
    if written is not None:
        try:
            if Spec.model_validate(written).model_dump() == spec.model_dump():
                return copy.deepcopy(written)
        except ValidationError:
            pass
    return spec.model_dump(mode="json")


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
    for ``model`` and ``training.scaling_law``, a catalog name for ``cluster.gpu``, one value for
    a search axis, and fields that presets and architecture defaults fill in."""
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
    training = defs["TrainingSpec"]["properties"]
    training["scaling_law"] = {"anyOf": [{"type": "string", "description": "a scaling-law "
                                          "preset"}, training["scaling_law"]]}
    defs["ScalingLawSpec"]["anyOf"] = [{"required": ["preset"]},
                                       {"required": list(LAW_CONSTANTS["chinchilla"])},
                                       {"required": ["form", *LAW_CONSTANTS["kaplan"]]}]
    defs["ScalingLawSpec"].pop("required", None)
    defs["ClusterSpec"]["required"] = ["gpu"]
    for prop in defs["SearchSpec"]["properties"].values():
        arrays = [b for b in prop.get("anyOf", []) if b.get("type") == "array"]
        if arrays:
            prop["anyOf"].append(arrays[0]["items"])
    return schema


__all__ = ["Spec", "ModelSpec", "ClusterSpec", "GpuSpec", "TrainingSpec", "BudgetSpec", "LabSpec",
           "LaunchSpec", "SlurmSpec", "NcclSpec",
           "ScalingLawSpec", "SearchSpec", "RuntimeSpec", "load_spec", "spec_from_dict",
           "spec_to_dict", "json_schema"]
