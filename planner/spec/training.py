"""The training section of a spec: tokens, or a budget (budget mode), or the scaling-law lab; the
loss law; the global batch and the optimizer."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from pydantic import Field, NonNegativeFloat, PositiveFloat, model_validator

from planner.spec.base import Frozen as _Frozen
from planner.spec.base import PositiveInt
from planner.spec.catalog import (find_scaling_law, over_entry, scaling_laws,
                                  unknown_name)
from planner.spec.units import Optimizer


#: the constants of each functional form of a loss law
LAW_CONSTANTS = {"chinchilla": ("E", "A", "B", "alpha", "beta"),
                 "kaplan": ("N_c", "D_c", "alpha_N", "alpha_D")}


def _law_file(path: str) -> dict:
    """The fields a law file holds (what the spec writes beside ``file`` wins)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError:
        raise ValueError(f"file: no law file {path}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"file: {path}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"file: {path} does not hold a mapping of a law's fields")
    return data


class ScalingLawSpec(_Frozen):
    """A loss law in nats per token (planner/capacity/scaling.py): a preset name
    (planner/spec/data/scaling_laws.yaml) or the constants of one functional form, e.g. from
    planner.capacity.lawfit.fit_law.  ``chinchilla``: L = E + A/N^alpha + B/D^beta with N all
    parameters (Hoffmann et al. 2022, eq. 2); ``kaplan``: L = [(N_c/N)^(alpha_N/alpha_D) +
    D_c/D]^alpha_D with N the non-embedding parameters (Kaplan et al. 2020, eq. 1.5)."""

    preset: Optional[str] = Field(None, description="name of a shipped scaling law")
    file: Optional[str] = Field(None, description="a YAML file of a law's fields, e.g. a lab's "
                                "fit (planner.capacity.scaling.save_law); relative to the spec")
    name: str = Field("custom", description="label used in reports")
    form: Literal["chinchilla", "kaplan"] = Field("chinchilla", description="functional form")
    E: Optional[NonNegativeFloat] = Field(None, description="irreducible loss, nats/token (0: "
                                          "none, as a lab's fit may find)")
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
        if isinstance(data, dict) and data.get("file") is not None:
            data = {**_law_file(str(data["file"])), **data}
        if isinstance(data, dict) and data.get("preset") is not None:
            found = find_scaling_law(str(data["preset"]))
            if found is None:
                raise ValueError("preset: " + unknown_name("scaling law", "scaling laws",
                                                           str(data["preset"]), scaling_laws()))
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
    learning_rate: Union[Literal["width"], PositiveFloat] = Field(
        "width", description="peak learning rate of every point: 'width' scales it as "
        "1/d_model from GPT-3 Small's 6e-4 at d_model 768 (muP's rule for Adam), or one number "
        "for all")
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="warmup steps / each point's "
                                   "steps")

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
