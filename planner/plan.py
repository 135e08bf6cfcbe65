"""A Plan is one training strategy: an immutable value the estimators and the executor receive."""
from __future__ import annotations

from dataclasses import dataclass

from .units import Offload, Precision, Recompute, ZeroStage


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
