"""A Plan is one training strategy: an immutable value the estimators and the executor receive.

``PlanBatch`` holds many plans as columns (numpy arrays) so the search can evaluate thousands of
candidates in one pass.  Both expose the same derived quantities (bytes per element, offload
flags, predicates), so every estimator term is written once and takes either; branches on a plan
go through ``where`` instead of ``if``.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from enum import Enum
from typing import Sequence

import numpy as np

from planner.plan.degrees import Degrees
from planner.spec.units import (RECIPES, ContextParallel, Offload, Precision, Recompute,
                                ZeroStage)

PRECISIONS = tuple(Precision)
RECOMPUTES = tuple(Recompute)
OFFLOADS = tuple(Offload)
CP_KINDS = tuple(ContextParallel)
_RECIPE = {name: np.array([getattr(RECIPES[p], name) for p in PRECISIONS], dtype=float)
           for name in ("param_bytes", "grad_bytes", "master_bytes", "activation_bytes")}
_OPT_OFF = np.array([o.optimizer_off_gpu for o in OFFLOADS])
_PARAMS_OFF = np.array([o.params_off_gpu for o in OFFLOADS])
_NVME = np.array([o.uses_nvme for o in OFFLOADS])


#: how a Plan field is rebuilt from its plain value, and (enum columns) the members a PlanBatch
#: stores by index
_FIELD_TYPES = {"zero": ZeroStage, "precision": Precision, "recompute": Recompute,
                "offload": Offload, "sequence_parallel": bool, "cp_kind": ContextParallel}
_ENUM_COLUMNS = {"precision": PRECISIONS, "recompute": RECOMPUTES, "offload": OFFLOADS,
                 "cp_kind": CP_KINDS}


def _identity(x):
    return x


def _plain(value):
    if isinstance(value, ZeroStage):
        return int(value)
    return value.value if isinstance(value, Enum) else value


def where(cond, a, b):
    """``a if cond else b`` for a plan or, elementwise, for a batch."""
    if isinstance(cond, np.ndarray):
        return np.where(cond, a, b)
    return a if cond else b


@dataclass(frozen=True, order=True)
class Plan:
    dp: int
    tp: int
    pp: int
    zero: ZeroStage
    precision: Precision
    micro_batch: int  #: sequences per GPU per forward/backward
    grad_accum: int  #: micro-batches per optimizer step (the pipeline's micro-batches when pp > 1)
    recompute: Recompute
    offload: Offload = Offload.NONE
    sequence_parallel: bool = False
    #: expert parallelism: each MoE layer's experts split over ep of the dp ranks (DeepSpeed-MoE;
    #: not a factor of the world size: the other dp / ep ranks hold the same experts)
    ep: int = 1
    #: context parallelism: each sequence split over cp ranks (a factor of the world size);
    #: ZeRO partitions and gradients reduce over dp x cp
    cp: int = 1
    cp_kind: ContextParallel = ContextParallel.ULYSSES  #: how the cp ranks attend (cp > 1)

    @property
    def world_size(self) -> int:
        return self.degrees.world_size

    @property
    def zero_ranks(self) -> int:
        """Ranks that hold the same model shard: ZeRO partitions over them and gradients are
        averaged across them (DeepSpeed's sequence-data-parallel group, Megatron's dp x cp)."""
        return self.dp * self.cp

    @property
    def label(self) -> str:
        sp = "+sp" if self.sequence_parallel else ""
        off = "" if self.offload is Offload.NONE else f" off={self.offload.value}"
        ep = f"·ep{self.ep}" if self.ep > 1 else ""
        cp = f"·cp{self.cp}{'u' if self.cp_kind is ContextParallel.ULYSSES else 'r'}" \
            if self.cp > 1 else ""
        return (f"dp{self.dp}{ep}·tp{self.tp}{sp}·pp{self.pp}{cp} z{int(self.zero)} "
                f"{self.precision.value} mb{self.micro_batch}×ga{self.grad_accum} "
                f"rc={self.recompute.value}{off}")

    def to_dict(self) -> dict:
        """JSON-able: enum members as their values (ZeroStage as its int)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        """The inverse of ``to_dict``; an unknown or missing field is a KeyError/TypeError."""
        return cls(**{f.name: _FIELD_TYPES.get(f.name, _identity)(data[f.name])
                      for f in fields(cls) if f.name in data or f.default is MISSING})

    @property
    def degrees(self) -> Degrees:
        return Degrees(self.dp, self.tp, self.pp, self.cp)

    # the derived quantities the estimators use (PlanBatch has the same, as arrays)
    @property
    def param_bytes(self) -> int:
        return RECIPES[self.precision].param_bytes

    @property
    def grad_bytes(self) -> int:
        return RECIPES[self.precision].grad_bytes

    @property
    def activation_bytes(self) -> int:
        return RECIPES[self.precision].activation_bytes

    @property
    def optimizer_off_gpu(self) -> bool:
        return self.offload.optimizer_off_gpu

    @property
    def params_off_gpu(self) -> bool:
        return self.offload.params_off_gpu

    @property
    def uses_nvme(self) -> bool:
        return self.offload.uses_nvme

    def is_precision(self, p: Precision) -> bool:
        return self.precision is p

    def is_recompute(self, r: Recompute) -> bool:
        return self.recompute is r

    def is_cp_kind(self, k: ContextParallel) -> bool:
        return self.cp_kind is k


def column(name: str, values: Sequence) -> np.ndarray:
    """A PlanBatch column from Plan field values: enum members by their index in the enum."""
    if name in _ENUM_COLUMNS:
        values = [_ENUM_COLUMNS[name].index(v) for v in values]
    return np.asarray(values, dtype=bool if name == "sequence_parallel" else np.int64)


@dataclass(frozen=True)
class PlanBatch:
    """Plans as columns: ints for degrees and sizes, enum members as their index in the enum."""

    dp: np.ndarray
    tp: np.ndarray
    pp: np.ndarray
    zero: np.ndarray
    precision: np.ndarray
    micro_batch: np.ndarray
    grad_accum: np.ndarray
    recompute: np.ndarray
    offload: np.ndarray
    sequence_parallel: np.ndarray
    ep: np.ndarray = None  #: 1 for every plan when not given (dense models)
    cp: np.ndarray = None  #: 1 for every plan when not given
    cp_kind: np.ndarray = None  #: ulysses (index 0) when not given

    def __post_init__(self):
        for name, default in (("ep", 1), ("cp", 1), ("cp_kind", 0)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.full_like(self.dp, default))

    @classmethod
    def of(cls, plans: Sequence[Plan]) -> "PlanBatch":
        return cls(**{f.name: column(f.name, [getattr(p, f.name) for p in plans])
                      for f in fields(Plan)})

    def __len__(self) -> int:
        return len(self.dp)

    def plan(self, i: int) -> Plan:
        def value(name: str):
            v = getattr(self, name)[i]
            if name in _ENUM_COLUMNS:
                return _ENUM_COLUMNS[name][v]
            return _FIELD_TYPES.get(name, int)(v)
        return Plan(**{f.name: value(f.name) for f in fields(Plan)})

    def take(self, index) -> "PlanBatch":
        return PlanBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @property
    def world_size(self) -> np.ndarray:
        return self.dp * self.tp * self.pp * self.cp

    @property
    def zero_ranks(self) -> np.ndarray:
        return self.dp * self.cp

    @property
    def degrees(self) -> Degrees:
        return Degrees(self.dp, self.tp, self.pp, self.cp)

    @property
    def param_bytes(self) -> np.ndarray:
        return _RECIPE["param_bytes"][self.precision]

    @property
    def grad_bytes(self) -> np.ndarray:
        return _RECIPE["grad_bytes"][self.precision]

    @property
    def activation_bytes(self) -> np.ndarray:
        return _RECIPE["activation_bytes"][self.precision]

    @property
    def optimizer_off_gpu(self) -> np.ndarray:
        return _OPT_OFF[self.offload]

    @property
    def params_off_gpu(self) -> np.ndarray:
        return _PARAMS_OFF[self.offload]

    @property
    def uses_nvme(self) -> np.ndarray:
        return _NVME[self.offload]

    def is_precision(self, p: Precision) -> np.ndarray:
        return self.precision == PRECISIONS.index(p)

    def is_recompute(self, r: Recompute) -> np.ndarray:
        return self.recompute == RECOMPUTES.index(r)

    def is_cp_kind(self, k: ContextParallel) -> np.ndarray:
        return self.cp_kind == CP_KINDS.index(k)
