"""Reading a spec: YAML (1.2 numbers, no duplicate keys, bounded size) or a dict into a
validated ``Spec``, with one line per problem naming its field and, for a typo, the nearest
allowed key; and the way back (``spec_to_dict``) and the JSON schema.  The sections themselves
are ``planner.spec.spec``'s."""
from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import ValidationError

from planner.errors import SpecError
from planner.spec.base import closest, section_at, section_of, unknown_keys
from planner.spec.spec import MAX_AXIS_VALUES, MAX_SPEC_FLOAT, MAX_SPEC_INT, MIN_SPEC_FLOAT, Spec
from planner.spec.training import LAW_CONSTANTS


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


__all__ = ["load_spec", "spec_from_dict", "spec_to_dict", "json_schema"]
