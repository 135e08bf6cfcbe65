"""A Plan is one training strategy: an immutable value the estimators and the executor receive.

``PlanBatch`` holds many plans as columns (numpy arrays) so the search can evaluate thousands of
candidates in one pass.  Both expose the same derived quantities (bytes per element, offload
flags, predicates), so every estimator term is written once and takes either; branches on a plan
go through ``where`` instead of ``if``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np

from planner.spec.units import RECIPES, Offload, Precision, Recompute, ZeroStage

PRECISIONS = tuple(Precision)
RECOMPUTES = tuple(Recompute)
OFFLOADS = tuple(Offload)
_RECIPE = {name: np.array([getattr(RECIPES[p], name) for p in PRECISIONS], dtype=float)
           for name in ("param_bytes", "grad_bytes", "master_bytes", "activation_bytes")}
_OPT_OFF = np.array([o.optimizer_off_gpu for o in OFFLOADS])
_PARAMS_OFF = np.array([o.params_off_gpu for o in OFFLOADS])
_NVME = np.array([o.uses_nvme for o in OFFLOADS])


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

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def label(self) -> str:
        sp = "+sp" if self.sequence_parallel else ""
        off = "" if self.offload is Offload.NONE else f" off={self.offload.value}"
        return (f"dp{self.dp}·tp{self.tp}{sp}·pp{self.pp} z{int(self.zero)} "
                f"{self.precision.value} mb{self.micro_batch}×ga{self.grad_accum} "
                f"rc={self.recompute.value}{off}")

    def as_dict(self) -> dict:
        return {
            "dp": self.dp, "tp": self.tp, "pp": self.pp, "zero": int(self.zero),
            "precision": self.precision.value, "micro_batch": self.micro_batch,
            "grad_accum": self.grad_accum, "recompute": self.recompute.value,
            "offload": self.offload.value, "sequence_parallel": self.sequence_parallel,
        }

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

    @classmethod
    def of(cls, plans: Sequence[Plan]) -> "PlanBatch":
        cols = {f.name: [getattr(p, f.name) for p in plans] for f in fields(Plan)}
        for name, members in (("precision", PRECISIONS), ("recompute", RECOMPUTES),
                              ("offload", OFFLOADS)):
            cols[name] = [members.index(v) for v in cols[name]]
        return cls(**{k: np.asarray(v, dtype=bool if k == "sequence_parallel" else np.int64)
                      for k, v in cols.items()})

    def __len__(self) -> int:
        return len(self.dp)

    def plan(self, i: int) -> Plan:
        return Plan(dp=int(self.dp[i]), tp=int(self.tp[i]), pp=int(self.pp[i]),
                    zero=ZeroStage(int(self.zero[i])), precision=PRECISIONS[self.precision[i]],
                    micro_batch=int(self.micro_batch[i]), grad_accum=int(self.grad_accum[i]),
                    recompute=RECOMPUTES[self.recompute[i]], offload=OFFLOADS[self.offload[i]],
                    sequence_parallel=bool(self.sequence_parallel[i]))

    def take(self, index) -> "PlanBatch":
        return PlanBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @property
    def world_size(self) -> np.ndarray:
        return self.dp * self.tp * self.pp

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
