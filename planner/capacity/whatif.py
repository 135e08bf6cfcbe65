"""What-if questions: edit a spec by dotted paths (``cluster.nodes=16``, ``model.seq_len=8192``,
``cluster.gpu=H200``), validate the edit exactly as a spec file is validated, and plan it with the
same search as ``plan SPEC``.

Edits apply to what the user wrote (``spec_to_dict``), so whatever depends on the edited field is
derived again: a new ``cluster.gpu`` brings its own default link, a new ``model.seq_len`` resizes
a learned position table that was left to its default, a new ``model.preset`` replaces the shape.
``what_if(spec, ...)`` is therefore the same as editing the YAML and running ``plan`` on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional

import yaml

from planner.capacity.budget import plan_budget
from planner.capacity.scaling import law_of, training_tokens
from planner.errors import SpecError
from planner.estimate.predict import Estimate
from planner.model.shape import param_counts
from planner.search.engine import SearchResult, search, why_infeasible
from planner.spec.loading import _SpecLoader, spec_from_dict, spec_to_dict
from planner.spec.spec import Spec
from planner.spec.units import GiB

#: sections a spec may write as one string: the string is the value of this key
SHORT_FORMS = {"model": "preset", "cluster.gpu": "name", "training.scaling_law": "preset"}


def parse_value(text: str) -> Any:
    """A YAML scalar, as in a spec file: ``16`` -> 16, ``2e12`` -> 2e12, ``null`` -> None."""
    try:
        return yaml.load(text, Loader=_SpecLoader)
    except yaml.YAMLError:
        return text


def parse_assignment(text: str) -> tuple[str, Any]:
    """``'cluster.nodes=16'`` -> ``('cluster.nodes', 16)``."""
    path, sep, value = text.partition("=")
    if not sep or not path.strip():
        raise SpecError(path.strip(), f"expected PATH=VALUE, got {text!r}")
    return path.strip(), parse_value(value.strip())


def set_path(data: dict, path: str, value: Any) -> None:
    """Set (or, for None, remove) a dotted path in a spec mapping, in place."""
    keys = path.split(".")
    if not all(keys):
        raise SpecError(path, "not a field path")
    node = data
    for depth, key in enumerate(keys[:-1]):
        here = ".".join(keys[:depth + 1])
        child = node.get(key)
        if child is None:
            child = {}
        elif isinstance(child, str) and here in SHORT_FORMS:
            child = {SHORT_FORMS[here]: child}
        elif not isinstance(child, dict):
            raise SpecError(here, f"is {child!r}, not a section, so {path} cannot be set")
        node[key] = child
        node = child
    if value is None:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value


def _overrides(overrides: Optional[Mapping[str, Any]], kwargs: Mapping[str, Any]) -> dict:
    """Dotted paths from a mapping and from keywords (``cluster__nodes=16`` or
    ``**{"cluster.nodes": 16}``)."""
    merged = dict(overrides or {})
    merged.update({k.replace("__", "."): v for k, v in kwargs.items()})
    return merged


def edit(spec: Spec, overrides: Optional[Mapping[str, Any]] = None, /, **kwargs: Any) -> Spec:
    """The spec with the overrides applied and validated again (SpecError names the path)."""
    data = spec_to_dict(spec)
    for path, value in _overrides(overrides, kwargs).items():
        set_path(data, path, value)
    return spec_from_dict(data)


def what_if(spec: Spec, overrides: Optional[Mapping[str, Any]] = None, /,
            **kwargs: Any) -> SearchResult:
    """Plan the edited spec: ``what_if(spec, {"cluster.nodes": 16})``, ``what_if(spec,
    cluster__gpu="H200")``."""
    return search(edit(spec, overrides, **kwargs))


@dataclass(frozen=True)
class SweepRow:
    """One value of a sweep: the best plan (budget mode: the pick's), or why nothing fits."""

    value: Any
    spec: Spec  #: the edited spec (budget mode: the pick's spec, in plan mode)
    best: Optional[Estimate]
    tokens: Optional[float]
    reason: str = ""  #: why nothing is feasible ("" otherwise)
    params: Optional[int] = None
    loss: Optional[float] = None  #: predicted by the spec's scaling law
    picked: bool = False  #: budget mode: the model is the planner's pick

    @property
    def days(self) -> Optional[float]:
        if self.best is None or not self.tokens:
            return None
        return self.best.days_to_train(self.tokens)

    @property
    def peak_gib(self) -> Optional[float]:
        return None if self.best is None else self.best.peak_bytes / GiB

    @property
    def gpus(self) -> int:
        return self.spec.cluster.world_size

    @property
    def gpu_hours(self) -> Optional[float]:
        if self.best is None or not self.tokens:
            return None
        return self.best.gpu_hours(self.tokens)

    @property
    def cost_usd(self) -> Optional[float]:
        price, _ = self.spec.cluster.price
        hours = self.gpu_hours
        return None if hours is None or price is None else hours * price

    def as_dict(self) -> dict:
        b = self.best
        price, source = self.spec.cluster.price
        return {"value": self.value, "gpus": self.gpus, "plan": b.plan.label if b else None,
                "step_time_s": b.step_time_s if b else None,
                "tokens_per_s": b.tokens_per_s if b else None, "mfu": b.mfu if b else None,
                "days": self.days, "gpu_hours": self.gpu_hours, "cost_usd": self.cost_usd,
                "price_per_gpu_hour": price, "price_source": source or None,
                "peak_gib": self.peak_gib, "params": self.params,
                "model": self.spec.model.name if self.picked and b else None,
                "tokens": self.tokens, "predicted_loss": self.loss, "rejected": self.reason or None}


def _row(value: Any, spec: Spec) -> SweepRow:
    if spec.training.budget is not None:
        pick = plan_budget(spec).pick
        if pick is None:
            return SweepRow(value, spec, None, None, "no candidate model can train in the budget",
                            picked=True)
        return SweepRow(value, pick.result.spec, pick.best, pick.tokens, params=pick.params,
                        loss=pick.loss, picked=True)
    result = search(spec)
    tokens = training_tokens(spec)
    counts = param_counts(spec.model)
    reason = "" if result.best else why_infeasible(result)
    law = law_of(spec)
    return SweepRow(value, spec, result.best, tokens, reason, counts.total,
                    law.loss(law.params(counts), tokens))


def sweep(spec: Spec, path: str, values: Iterable[Any],
          progress: Optional[Callable[[int, int], None]] = None) -> list[SweepRow]:
    """Plan the spec once per value of one dotted path (an invalid value raises SpecError);
    ``progress(done, total)`` is called after each value."""
    values = list(values)
    rows = []
    for value in values:
        try:
            edited = edit(spec, {path: value})
        except SpecError as exc:
            raise SpecError(exc.path, f"{exc.problem} (with {path}={value})") from None
        rows.append(_row(value, edited))
        if progress is not None:
            progress(len(rows), len(values))
    return rows
