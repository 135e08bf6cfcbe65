"""Shipped data: the GPU catalog, the model presets and the scaling-law presets
(planner/spec/data/*.yaml)."""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from planner.spec.base import closest

#: keys of a preset that describe where its numbers come from rather than the model itself
PRESET_META_KEYS = ("published_params", "source")


def _load(name: str) -> dict[str, dict[str, Any]]:
    text = resources.files("planner.spec").joinpath("data").joinpath(name).read_text()
    return yaml.safe_load(text)


@lru_cache(maxsize=None)
def gpu_catalog() -> dict[str, dict[str, Any]]:
    return _load("gpus.yaml")


@lru_cache(maxsize=None)
def model_presets() -> dict[str, dict[str, Any]]:
    return _load("models.yaml")


@lru_cache(maxsize=None)
def scaling_laws() -> dict[str, dict[str, Any]]:
    return _load("scaling_laws.yaml")


#: catalog keys that name an entry rather than describe the hardware
GPU_NAME_KEYS = ("aliases", "device_names")


def normal_name(name: str) -> str:
    """A catalog name as compared: ``meta-llama/Llama-2-70b-hf`` and ``llama-2-70b`` are both
    ``llama270b`` (case, an org/ prefix, an -hf suffix, dashes, dots, underscores and spaces
    dropped), so the Hugging Face repository of a preset names it."""
    name = name.strip().lower().rsplit("/", 1)[-1]
    return re.sub(r"[-_. ]", "", re.sub(r"[-_]hf$", "", name))


def _names(canonical: str, entry: dict[str, Any]) -> list[str]:
    return [canonical, *entry.get("aliases", ()), *entry.get("device_names", ())]


def _lookup(table: dict[str, dict[str, Any]], name: str) -> tuple[str, dict[str, Any]] | None:
    """By canonical name, alias or (GPUs) the name torch.cuda.get_device_name() reports, case
    aside; else by normal_name when that names one entry only."""
    key = name.strip().lower()
    for canonical, entry in table.items():
        if key in (n.lower() for n in _names(canonical, entry)):
            return canonical, entry
    form = normal_name(name)
    found = [(c, e) for c, e in table.items() if form in map(normal_name, _names(c, e))]
    return found[0] if len(found) == 1 else None


#: catalog names are short and share digits (gpt2-1.5b, gpt5-1t): a nearer match than for keys
NAME_CUTOFF = 0.7


def unknown_name(kind: str, plural: str, name: str, table: dict[str, dict[str, Any]]) -> str:
    """The message for a name no entry has: the nearest entry (by difflib over normal_name
    forms of every name and alias), if one is near, then every entry."""
    names = {n: c for c, e in table.items() for n in _names(c, e)}
    near = closest(name, names, normal_name, NAME_CUTOFF)
    guess = f"; did you mean {names[near]}? Known" if near is not None else "; known"
    return f"unknown {kind} {name!r}{guess} {plural}: {', '.join(table)}"


def over_entry(data: dict, key: str, found: tuple[str, dict[str, Any]],
               drop: tuple[str, ...] = (), nested: tuple[str, ...] = ()) -> dict[str, Any]:
    """What the user wrote over the catalog entry ``data[key]`` names: the entry's fields (less
    its name keys and ``drop``) are defaults, the user's keys win (``nested`` mappings are merged
    key by key), ``key`` becomes the canonical name, and so does ``name`` unless the user set it.
    The one place a preset, a GPU or a scaling law is resolved."""
    canonical, entry = found
    base = {k: v for k, v in entry.items() if k not in (*GPU_NAME_KEYS, *drop)}
    merged = {**base, "name": canonical, **data, key: canonical}
    for field in nested:
        if isinstance(data.get(field), dict) and isinstance(base.get(field), dict):
            merged[field] = {**base[field], **data[field]}
    return merged


def find_gpu(name: str) -> tuple[str, dict[str, Any]] | None:
    """Catalog entry by name or alias (case-insensitive), or None."""
    return _lookup(gpu_catalog(), name)


def find_preset(name: str) -> tuple[str, dict[str, Any]] | None:
    return _lookup(model_presets(), name)


def find_scaling_law(name: str) -> tuple[str, dict[str, Any]] | None:
    return _lookup(scaling_laws(), name)
