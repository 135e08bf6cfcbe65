"""The spec language: YAML validated once, at the boundary, into frozen pydantic models.

Downstream code never re-validates or re-defaults: presets and per-architecture defaults are
resolved here, and derived values (``head_dim``, ``world_size``) are properties.
"""
from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from annotated_types import Gt, Le
from pydantic import (Field, NonNegativeFloat, PositiveFloat, PrivateAttr, Strict,
                      ValidationError, field_validator, model_validator)

from planner.errors import SpecError
from planner.spec.base import Frozen as _Frozen
from planner.spec.base import PositiveInt, closest, section_at, section_of, unknown_keys
from planner.spec.cluster import (MAX_WORLD_SIZE, ClusterSpec,  # noqa: F401 (API)
                                  EfficiencySpec, GpuSpec, InterNodeSpec, IntraNodeSpec)
from planner.spec.launch import LaunchSpec, NcclSpec, SlurmSpec  # noqa: F401 (API)
from planner.spec.training import (LAW_CONSTANTS, BudgetSpec, LabSpec,  # noqa: F401 (API)
                                   ScalingLawSpec, TrainingSpec)
from planner.spec.units import (ContextParallel, Fp8Recipe, Offload, Precision, Recompute,
                                ZeroStage)

from planner.spec.model import (MAX_D_FF, MAX_D_MODEL, MAX_LAYERS,  # noqa: F401 (API)
                                MAX_SEQ_LEN, MAX_VOCAB, ModelSpec, MoESpec)

# -------------------------------------------------------------------------------------- search

#: values one search axis may list (a longer list is a mistake, and its candidates unbounded)
MAX_AXIS_VALUES = 1024
#: the largest micro-batch a search axis may list: sequences x seq_len x d_model stays in int64
MAX_MICRO_BATCH = 2**16
#: a parallel degree: at most the largest cluster (so dp*tp*pp stays in int64)
Degree = Annotated[int, Strict(), Gt(0), Le(MAX_WORLD_SIZE)]
MicroBatch = Annotated[int, Strict(), Gt(0), Le(MAX_MICRO_BATCH)]
#: 'auto' context parallelism keeps at least this many tokens of a sequence on each rank: below
#: it attention is a small share of a block's work and the split only adds exchanges (list cp
#: values to search others)
MIN_CP_TOKENS = 4096


def _as_axis(value: Any) -> Any:
    if value == "auto":
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("an empty list allows nothing; use 'auto' or list values")
        if len(value) > MAX_AXIS_VALUES:
            raise ValueError(f"{len(value):,} values; an axis lists at most {MAX_AXIS_VALUES:,} "
                             f"(or 'auto')")
        return tuple(value)
    return (value,)


class SearchSpec(_Frozen):
    """Each dimension: one value, a list, or 'auto' (every value that can make sense)."""

    dp: Union[Literal["auto"], tuple[Degree, ...]] = "auto"
    tp: Union[Literal["auto"], tuple[Degree, ...]] = "auto"
    pp: Union[Literal["auto"], tuple[Degree, ...]] = "auto"
    ep: Union[Literal["auto"], tuple[Degree, ...]] = Field(
        "auto", description="expert-parallel degrees for a mixture-of-experts model; auto: the "
                            "divisors of experts that divide dp")
    cp: Union[Literal["auto"], tuple[Degree, ...]] = Field(
        "auto", description="context-parallel degrees (the sequence split over cp ranks); auto: "
                            "1, and every divisor of the world size that leaves each rank at "
                            f"least {MIN_CP_TOKENS:,} tokens of a sequence")
    cp_kind: Union[Literal["auto"], tuple[ContextParallel, ...]] = Field(
        "auto", description="how cp ranks attend: ulysses (all-to-all, DeepSpeed-Ulysses) or "
                            "ring (K/V passed round the ring, Megatron-Core / torchtitan CP); "
                            "auto: both")
    zero: Union[Literal["auto"], tuple[ZeroStage, ...]] = "auto"
    precision: Union[Literal["auto"], tuple[Precision, ...]] = "auto"
    micro_batch: Union[Literal["auto"], tuple[MicroBatch, ...]] = "auto"
    recompute: Union[Literal["auto"], tuple[Recompute, ...]] = "auto"
    offload: Union[Literal["auto"], tuple[Offload, ...]] = (Offload.NONE,)
    sequence_parallel: Union[Literal["auto"], tuple[bool, ...]] = (False,)
    memory_headroom: float = Field(0.0, ge=0, lt=0.9,
                                   description="fraction of GPU memory kept free")
    top: PositiveInt = Field(5, description="plans in the report's table, the best included")

    @field_validator("dp", "tp", "pp", "ep", "cp", "cp_kind", "zero", "precision", "micro_batch",
                     "recompute", "offload", "sequence_parallel", mode="before")
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
    fp8_recipe: Union[Literal["auto"], Fp8Recipe] = Field(
        "auto", description="how precision fp8 scales its GEMMs and what it keeps "
                            "(planner/model/fp8.py): te_delayed, te_current, te_mxfp8, "
                            "torchao_tensorwise, torchao_rowwise; auto: te_mxfp8 on a GPU with "
                            "MX formats (fp4 in its peaks), else te_delayed")
    fp8_all_gather: bool = Field(
        False, description="ZeRO-3/FSDP all-gathers the fp8 GEMM weights in fp8 (torchao "
                           "enable_fsdp_float8_all_gather, Megatron --fp8-param-gather); "
                           "torchao_rowwise gathers bf16 whatever this says")
    cpu_checkpointing: bool = Field(
        False, description="DeepSpeed activation_checkpointing.cpu_checkpointing (with "
                           "partition_activations): under full recompute each block's "
                           "checkpointed input lives in host memory and crosses PCIe twice a "
                           "step; the GPU holds only the block being recomputed")


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

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        """cluster.profile: a file of calibrated constants, merged under what the spec writes."""
        cluster = data.get("cluster") if isinstance(data, dict) else None
        path = cluster.get("profile") if isinstance(cluster, dict) else None
        if not isinstance(path, str):
            return data
        from planner.spec.profile import load_profile, merge_profile
        try:
            profile = load_profile(path)
        except ValueError as exc:
            raise ValueError(f"cluster.{exc}") from None
        data, kept = merge_profile(data, profile)
        data["cluster"]["profile"] = {
            "file": path, "constants": {k: v for k, v in profile.constants.items()
                                        if k not in kept},
            "kept": tuple(kept), "gpu": profile.gpu, "gpu_figures": profile.gpu_figures,
            "runs": profile.runs,
            "residual_before": _finite(profile.residual_before),
            "residual_after": _finite(profile.residual_after)}
        return data

    @model_validator(mode="after")
    def _batch_fits_sequence(self) -> "Spec":
        tokens = self.training.global_batch_tokens
        if tokens is not None and tokens % self.model.seq_len:
            raise ValueError(f"training.global_batch_tokens: {tokens} is not a multiple of "
                             f"model.seq_len ({self.model.seq_len})")
        sequences = self.training.global_batch_sequences
        if sequences is not None and sequences * self.model.seq_len > MAX_SPEC_INT:
            raise ValueError(f"training.global_batch_sequences: {sequences:,} sequences of "
                             f"{self.model.seq_len:,} tokens is over the {MAX_SPEC_INT:.0e} tokens "
                             f"a step may hold")
        return self

    @property
    def global_batch_sequences(self) -> int:
        if self.training.global_batch_sequences is not None:
            return self.training.global_batch_sequences
        return self.training.global_batch_tokens // self.model.seq_len


def _finite(x: float) -> Optional[float]:
    return x if x == x and abs(x) != float("inf") else None


# --------------------------------------------------------------------------------- loading

def _field_path(err: dict, data: Any) -> str:
    """Dotted path of a pydantic error: the fields and keys of its location, read against the
    sections and what the user wrote, so union-branch tags (``constrained-float``,
    ``literal['auto']``) and list indices drop out; an unknown key's location ends with the key
    itself, whatever its type (``1:`` is a key too)."""
    section: Any = Spec
    node, parts = data, []
    loc = err["loc"]
    for i, p in enumerate(loc):
        fields = section.model_fields if section is not None else {}
        if i == len(loc) - 1 and err["type"] in ("extra_forbidden", "invalid_key"):
            parts.append(str(p))
        elif isinstance(p, int) and isinstance(node, (list, tuple)):
            node = node[p] if p < len(node) else None
        elif p in fields or (isinstance(node, dict) and p in node):
            parts.append(str(p))
            section = section_of(fields[p].annotation) if p in fields else None
            node = node.get(p) if isinstance(node, dict) else None
    return ".".join(parts)


def _sibling(path: str, name: str) -> str:
    """``cluster.gpus``, ``gpu`` -> ``cluster.gpu``."""
    parent = path.rpartition(".")[0]
    return f"{parent}.{name}" if parent else name


def _unknown_key(nearest: Optional[str]) -> str:
    return f"unknown key; did you mean {nearest}?" if nearest else "unknown key"


def _nearest_allowed(err: dict) -> tuple[Optional[str], int]:
    """For a string outside a closed set: (the nearest allowed value or None, how many)."""
    allowed = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
    nearest = closest(err["input"], allowed) if isinstance(err.get("input"), str) else None
    return nearest, len(allowed)


def _did_you_mean(err: dict) -> str:
    nearest, choices = _nearest_allowed(err)
    return f"; did you mean {nearest!r}?" if nearest and choices > 1 else ""


def _problem(err: dict, data: Any) -> tuple[str, str]:
    """(extra path, message): validators prefix their message with the field they blame."""
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if err["type"] == "extra_forbidden":  # a key of a law file, say: the nearest field
        *parents, key = _field_path(err, data).split(".")
        section = section_at(Spec, parents)
        return "", _unknown_key(closest(key, section.model_fields if section else ()))
    if err["type"] == "missing":
        return "", "required field is missing"
    if err["type"] in ("enum", "literal_error"):
        return "", msg + _did_you_mean(err)
    field, sep, rest = msg.partition(": ")
    if sep and field.replace(".", "").replace("_", "").isalnum() and " " not in field:
        return field, rest
    return "", msg


def _best_errors(errors: list[dict], data: Any) -> list[tuple[str, str]]:
    """One (path, problem) per field.  A union such as ``'auto' | list`` reports every branch;
    the literal 'auto' branch is the least informative, so it only counts when alone, or when
    the string written is near one of its values (``tokens: chinchila``)."""
    by_path: dict[str, list[dict]] = {}
    for err in errors:
        by_path.setdefault(_field_path(err, data), []).append(err)
    out = []
    for path, errs in by_path.items():
        informative = [e for e in errs if e["type"] != "literal_error"] or errs
        near = [e for e in errs if e["type"] == "literal_error" and _nearest_allowed(e)[0]]
        extra, problem = _problem((near or informative)[0], data)
        out.append((".".join(p for p in (path, extra) if p), problem))
    return out


def _written_at(data: Any, path: str) -> bool:
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _typos_first(data: dict, typos: list[tuple[str, Optional[str]]],
                 problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Unknown keys lead (a misspelt key is why its field reads as missing or defaulted), each
    with the nearest field; a problem of a field a typo's nearest names, which the spec does not
    write, is that typo's consequence and not counted again."""
    written = {path for path, _ in typos}
    meant = {_sibling(path, near) for path, near in typos if near}
    return [(path, _unknown_key(near)) for path, near in typos] + [
        (path, problem) for path, problem in problems
        if path not in written and not (path in meant and not _written_at(data, path))]


#: the largest integer a spec may hold (past it, arithmetic overflows float64 and numpy)
MAX_SPEC_INT = 10**15
#: the largest and the smallest non-zero magnitude of a float a spec may hold: a FLOP budget of
#: 1e27 fits, while a product of a few such numbers stays far from float64's 1.8e308
MAX_SPEC_FLOAT, MIN_SPEC_FLOAT = 1e30, 1e-30
#: the deepest nesting a spec may have (its deepest field, cluster.gpu.efficiency.hbm, is 4)
MAX_DEPTH = 32


def _check_numbers(data: Any, path: str = "", depth: int = 0) -> None:
    """Every number a spec holds is finite and of a size arithmetic can take: ``.inf``, ``nan``,
    ``1e400`` (YAML reads it as inf), ``1e300``, ``1e-300`` and 400-digit integers are errors
    naming their field; so is nesting deeper than any field (a dict built in Python has no YAML
    loader to stop it)."""
    if depth > MAX_DEPTH:
        raise SpecError(path, f"nested more than {MAX_DEPTH} deep; no spec field is")
    if isinstance(data, dict):
        for k, v in data.items():
            _check_numbers(v, f"{path}.{k}" if path else str(k), depth + 1)
    elif isinstance(data, (list, tuple)):
        for v in data:
            _check_numbers(v, path, depth + 1)
    elif isinstance(data, float) and not math.isfinite(data):
        raise SpecError(path, f"{data} is not a finite number")
    elif isinstance(data, float) and not (data == 0 or MIN_SPEC_FLOAT <= abs(data)
                                          <= MAX_SPEC_FLOAT):
        raise SpecError(path, f"{data:g} is out of range: a spec number is 0 or of magnitude "
                              f"{MIN_SPEC_FLOAT:g} to {MAX_SPEC_FLOAT:g}")
    elif isinstance(data, int) and not isinstance(data, bool) and abs(data) > MAX_SPEC_INT:
        raise SpecError(path, f"an integer of {len(str(abs(data)))} digits is larger than any "
                              f"spec needs (at most {MAX_SPEC_INT:.0e})")


def spec_from_dict(data: Any, source: str = "spec") -> Spec:
    """Validate a parsed spec; raise SpecError naming the first bad field (an unknown key first,
    with the field it is nearest to)."""
    if not isinstance(data, dict):
        raise SpecError("", f"{source}: the top level must be a mapping of sections")
    typos = list(unknown_keys(Spec, data))
    try:
        _check_numbers(data)
        spec = Spec.model_validate(data)
    except SpecError as exc:
        if not typos:
            raise
        problems = [(exc.path, exc.problem)]
    except ValidationError as exc:
        problems = _best_errors(exc.errors(), data)
    else:
        spec._written = copy.deepcopy(data)
        return spec
    problems = _typos_first(data, typos, problems) if typos else problems
    path, problem = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise SpecError(path, problem + more)


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


#: the largest spec file read (16 MiB): a spec is a few kB; a list of a million values (8 MB)
#: is still read, to be refused by its field after 1,025 values; the slowest file this size,
#: one long comment, takes PyYAML about 6 s to scan
MAX_SPEC_BYTES = 2**24
#: the most values (keys, scalars, lists and mappings; an alias counts as all it repeats) one
#: spec holds: a hosts list of 30,000 nodes fits, and reading this many takes about 0.6 s
MAX_YAML_VALUES = 2**15


class _SpecLoader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where ``4e6`` is a string; specs are written with YAML 1.2
    numbers in mind (``tokens: 2e12``, ``global_batch_tokens: 4.194304e6``).  A key written twice
    in one mapping, at any depth, is an error (PyYAML keeps the last silently).

    What reading costs is bounded while the document is composed, before anything is built, and
    the error names the key being read: nesting past MAX_DEPTH, a search axis past
    MAX_AXIS_VALUES (a list of millions stops at its 1,025th value), and more than
    MAX_YAML_VALUES values in all, aliases expanded (so an alias bomb stops too)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._keys: list[str] = []  #: the mapping keys above the node being read
        self._depth = 0
        self._values = 0
        self._sizes: dict[int, int] = {}  #: id(node) -> values it holds, for its aliases

    def _refuse(self, problem: str) -> None:
        raise SpecError(".".join(self._keys), problem)

    def _count(self, values: int) -> None:
        self._values += values
        if self._values > MAX_YAML_VALUES:
            self._refuse(f"over {MAX_YAML_VALUES:,} values in one spec (aliases counted as all "
                         f"they repeat); a spec holds a few hundred")

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self._count(self._sizes.get(id(node), 1))
            return node
        is_value = isinstance(index, yaml.Node)  # a mapping's value: index is its key
        if is_value:
            self._keys.append(str(index.value) if isinstance(index, yaml.ScalarNode) else "?")
        if isinstance(parent, yaml.SequenceNode) and index >= MAX_AXIS_VALUES \
                and self._keys[:1] == ["search"]:
            self._refuse(f"over {MAX_AXIS_VALUES:,} values; an axis lists at most "
                         f"{MAX_AXIS_VALUES:,} (or 'auto')")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            self._refuse(f"nested more than {MAX_DEPTH} deep; no spec field is")
        before = self._values
        self._count(1)
        node = super().compose_node(parent, index)
        self._sizes[id(node)] = self._values - before
        self._depth -= 1
        if is_value:
            self._keys.pop()
        return node

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key]})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    if not path.is_file():
        raise SpecError("", f"{path}: no such spec file")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError("", f"{path}: {path.stat().st_size:,} bytes; a spec is at most "
                        f"{MAX_SPEC_BYTES:,} (a few kB is usual)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError("", f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                        f"{exc.start}); save the spec as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_SpecLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        if isinstance(exc, yaml.reader.ReaderError):  # a control character: no mark, a position
            where = f" (line {text.count(chr(10), 0, exc.position) + 1})"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError("", f"{path}: invalid YAML{where}: {problem}") from None
    except RecursionError:  # the loader stops at MAX_DEPTH first; this is the last resort
        raise SpecError("", f"{path}: nested too deeply to be a spec") from None
    return spec_from_dict(_relative_to(data, path.parent), str(path))


def _relative_to(data: Any, directory: Path) -> Any:
    """A law file, a calibration profile or a Hugging Face config named in the spec is found
    beside the spec."""
    training = data.get("training") if isinstance(data, dict) else None
    law = training.get("scaling_law") if isinstance(training, dict) else None
    if isinstance(law, dict) and isinstance(law.get("file"), str) \
            and not Path(law["file"]).is_absolute():
        data = copy.deepcopy(data)
        data["training"]["scaling_law"]["file"] = str(directory / law["file"])
    cluster = data.get("cluster") if isinstance(data, dict) else None
    profile = cluster.get("profile") if isinstance(cluster, dict) else None
    if isinstance(profile, str) and not Path(profile).is_absolute():
        data = copy.deepcopy(data)
        data["cluster"]["profile"] = str(directory / profile)
    model = data.get("model") if isinstance(data, dict) else None
    hf = model.get("hf_config") if isinstance(model, dict) else None
    if isinstance(hf, str) and not Path(hf).is_absolute():
        data = copy.deepcopy(data)
        data["model"]["hf_config"] = str(directory / hf)
    return data


def json_schema() -> dict:
    """The validator's schema, widened to the short forms the validators accept: a preset name
    for ``model`` and ``training.scaling_law``, a catalog name for ``cluster.gpu``, one value for
    a search axis, and fields that presets and architecture defaults fill in."""
    schema = Spec.model_json_schema()
    defs, props = schema["$defs"], schema["properties"]
    props["model"] = {"anyOf": [{"type": "string", "description": "a preset name"},
                                props["model"]]}
    defs["ModelSpec"].pop("required", None)
    defs["ModelSpec"]["anyOf"] = [{"required": ["preset"]}, {"required": ["hf_config", "seq_len"]},
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
