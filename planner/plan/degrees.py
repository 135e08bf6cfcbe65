"""The parallel degrees of a plan as one value: their product, the check against the world size,
the process-group layout and where each rank sits.

Degrees hold ints for one plan, or numpy arrays (one entry per candidate) for a PlanBatch; every
property works on both.  Ranks are laid out with the first axis of ``order`` innermost:
("tp", "dp", "pp") is Megatron-LM's and DeepSpeed's PipeModelDataParallelTopology default
(tensor-parallel ranks adjacent, so they share a node).  Context parallelism sits next to tensor
parallelism (Megatron-Core's tp-cp-ep-dp-pp order: its all-to-alls or ring exchange run every
layer, so its ranks share a node where they can).  Expert parallelism is not a factor of the
world size (ep ranks are data-parallel ranks), so it is a Plan field, not an axis here.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional, Sequence

#: every parallel axis, in the order a label prints them
AXES = ("dp", "tp", "pp", "cp")

#: rank orders, innermost first, the step-time model tries (tensor parallel always innermost: it
#: all-reduces every layer)
ORDERS: tuple[tuple[str, ...], ...] = (("tp", "cp", "dp", "pp"), ("tp", "cp", "pp", "dp"))


@dataclass(frozen=True)
class Degrees:
    dp: Any  #: data-parallel replicas (ZeRO shards over these)
    tp: Any  #: tensor-parallel ranks (Megatron column/row split of every block)
    pp: Any  #: pipeline stages
    cp: Any = 1  #: context-parallel ranks, each holding 1/cp of every sequence

    @property
    def world_size(self):
        return self.dp * self.tp * self.pp * self.cp

    @property
    def model_parallel(self):
        """Ranks that hold different parts of one model replica."""
        return self.tp * self.pp

    def mismatch(self, world_size: int) -> Optional[str]:
        """Why these degrees do not fill the world (torchtitan's ParallelDims check), or None."""
        if self.world_size == world_size:
            return None
        cp = f" * cp({self.cp})" if self.cp != 1 else ""
        return (f"dp({self.dp}) * tp({self.tp}) * pp({self.pp}){cp} != world size "
                f"({world_size})")

    def sizes(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def strides(self, order: Sequence[str]) -> dict[str, Any]:
        """Rank distance between consecutive members of each axis's groups."""
        out, stride = {}, 1
        sizes = self.sizes()
        for axis in order:
            out[axis] = stride
            stride = stride * sizes[axis]  # not *=: an array would be shared with out
        return out

    def coords(self, rank: int, order: Sequence[str] = ORDERS[0]) -> dict[str, int]:
        """Where a global rank sits: its index along every axis."""
        out, sizes = {}, self.sizes()
        for axis in order:
            rank, out[axis] = divmod(rank, int(sizes[axis]))
        return out

    def rank(self, coords: dict[str, int], order: Sequence[str] = ORDERS[0]) -> int:
        strides = self.strides(order)
        return sum(int(coords[a]) * int(strides[a]) for a in order)

    def groups(self, axis: str, order: Sequence[str] = ORDERS[0]) -> list[list[int]]:
        """The process groups of one axis: every set of ranks that differ only along it (the
        groups torch.distributed.new_group would be given), for one plan."""
        size, stride = int(self.sizes()[axis]), int(self.strides(order)[axis])
        seen, out = set(), []
        for r in range(int(self.world_size)):
            if r in seen:
                continue
            start = self.rank({**self.coords(r, order), axis: 0}, order)
            group = [start + i * stride for i in range(size)]
            seen.update(group)
            out.append(group)
        return sorted(out)
