"""The base of every spec section: frozen, and unknown keys are errors naming their path (with
the nearest field, when one is near); and the integer type every count in a spec uses."""
from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any, Callable, Iterable, Iterator, Optional

from annotated_types import Gt
from pydantic import BaseModel, ConfigDict, Strict

#: a positive count: a YAML integer, not ``true``, ``8.0`` or ``"8"`` (which pydantic's lax
#: mode would take as 1 and 8)
PositiveInt = Annotated[int, Strict(), Gt(0)]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)


#: how alike a word and a name must be (difflib's ratio) to be offered as "did you mean"
CLOSE_ENOUGH = 0.6


def closest(word: str, names: Iterable[str], normal: Callable[[str], str] = str.lower,
            cutoff: float = CLOSE_ENOUGH) -> Optional[str]:
    """The name nearest ``word`` when comparing ``normal`` forms (difflib's ratio at least
    ``cutoff``), or None: the "did you mean" of a misspelt key or catalog name.  Only names that
    begin as the word does are offered: a typo seldom hits the first letter, and a B300 is no
    MI300X."""
    form = normal(word)
    by_form: dict[str, str] = {}
    for name in names:
        if normal(name)[:1] == form[:1]:
            by_form.setdefault(normal(name), name)
    found = difflib.get_close_matches(form, list(by_form), n=1, cutoff=cutoff)
    return by_form[found[0]] if found else None


def section_of(annotation: Any) -> Optional[type[BaseModel]]:
    """The spec section a field holds (through Optional, unions and Annotated), or None: a
    mapping field (``dict[str, ...]``) has free keys and is not a section."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType or origin is Annotated:
        for arg in typing.get_args(annotation):
            found = section_of(arg)
            if found is not None:
                return found
    return None


def section_at(model: type[BaseModel], parts: Iterable[str]) -> Optional[type[BaseModel]]:
    """The section class at a dotted path below ``model`` (``("cluster", "inter_node")`` ->
    InterNodeSpec), or None when the path leaves the sections."""
    for part in parts:
        field = model.model_fields.get(part)
        model = section_of(field.annotation) if field is not None else None
        if model is None:
            return None
    return model


def unknown_keys(model: type[BaseModel], data: Any,
                 path: tuple[str, ...] = ()) -> Iterator[tuple[str, Optional[str]]]:
    """(dotted path, nearest field or None) of every key in ``data`` that no field of its section
    takes.  Read from what the user wrote, so a typo is found even where a validator stopped
    first (a SwiGLU model that spells ``d_ff`` as ``dff`` is told it lacks d_ff)."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        name = str(key)
        where = ".".join((*path, name))
        if name not in fields:
            yield where, closest(name, fields)
            continue
        section = section_of(fields[name].annotation)
        if section is not None:
            yield from unknown_keys(section, value, (*path, name))
