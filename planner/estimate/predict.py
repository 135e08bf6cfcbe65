"""Estimate = everything the planner predicts for one (spec, plan): memory at the peak moment, what
the caching allocator reserves, capacity, host RAM for offload, FLOPs per step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from planner.backends.base import Backend
from planner.backends.registry import backend_for
from planner.estimate.memory import host_offload_bytes, peak_memory
from planner.estimate.timing import Throughput, throughput
from planner.model.flops import StepFlops, step_flops
from planner.model.memory_terms import MemoryBreakdown
from planner.plan.strategy import Plan
from planner.spec.spec import Spec
from planner.spec.units import GiB

SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class Estimate:
    plan: Plan
    memory: MemoryBreakdown  #: predicted peak allocated bytes, by term, on the most-loaded GPU
    reserved_bytes: float  #: what PyTorch's caching allocator holds at that peak
    cuda_context_bytes: float  #: outside the allocator, but on the GPU
    usable_bytes: float  #: GPU capacity less the headroom the spec keeps free
    host_bytes_per_node: float  #: pinned + pageable host RAM offload needs on one node
    host_capacity_bytes: float
    flops: StepFlops
    time: Optional[Throughput]  #: None when estimated with_time=False (memory questions)
    #: why the backend's executor cannot run this plan ("" when it can); set by the search
    not_executable: str = ""

    @property
    def step_time_s(self) -> float:
        return self.time.step.total

    @property
    def tokens_per_s(self) -> float:
        return self.time.tokens_per_s

    @property
    def mfu(self) -> float:
        return self.time.mfu

    def days_to_train(self, tokens: float) -> float:
        return tokens / self.tokens_per_s / SECONDS_PER_DAY

    def gpu_hours(self, tokens: float) -> float:
        """GPU-hours to train ``tokens``: every GPU of the plan is held for the whole run."""
        return tokens / self.tokens_per_s / 3600.0 * self.plan.world_size

    @property
    def peak_bytes(self) -> float:
        return self.memory.total

    @property
    def required_bytes(self) -> float:
        return self.reserved_bytes + self.cuda_context_bytes

    @property
    def free_bytes(self) -> float:
        return self.usable_bytes - self.required_bytes

    @property
    def floor_bytes(self) -> float:
        """What the plan needs if the allocator reserved no more than is allocated."""
        return floor_bytes_needed(self.peak_bytes, self.cuda_context_bytes)

    @property
    def verdict(self) -> str:
        """'fits' (with the spec's allocator fragmentation), 'tight' (only if the allocator
        fragments less: within its uncertainty) or 'does not fit' (not even with none)."""
        return fit_verdict(self.required_bytes, self.floor_bytes, self.usable_bytes)

    @property
    def margin_bytes(self) -> float:
        """Usable minus required: negative for a tight plan."""
        return self.usable_bytes - self.required_bytes

    @property
    def tight_fragmentation(self) -> float:
        """The largest reserved/allocated - 1 at which a tight plan still fits."""
        return (self.usable_bytes - self.cuda_context_bytes) / self.peak_bytes - 1

    @property
    def fits_gpu(self) -> bool:
        """Fits or tight: a tight plan can run (docs/memory-model.md, the fit verdict)."""
        return self.floor_bytes <= self.usable_bytes

    @property
    def fits_comfortably(self) -> bool:
        return self.required_bytes <= self.usable_bytes and self.fits_host

    @property
    def fits_host(self) -> bool:
        return self.host_bytes_per_node <= self.host_capacity_bytes

    @property
    def fits(self) -> bool:
        return self.fits_gpu and self.fits_host

    def oom_reason(self) -> str:
        if not self.fits_gpu:
            return (f"needs {self.required_bytes / GiB:.1f} GiB per GPU (peak "
                    f"{self.peak_bytes / GiB:.1f} allocated at {self.memory.moment}; "
                    f"{self.floor_bytes / GiB:.1f} even if the allocator reserved only that) but "
                    f"{self.usable_bytes / GiB:.1f} GiB is usable")
        return (f"offload needs {self.host_bytes_per_node / GiB:.0f} GiB of host RAM per node, "
                f"the node has {self.host_capacity_bytes / GiB:.0f} GiB")


def reserved_bytes(spec: Spec, peak):
    """What the caching allocator holds at a peak of ``peak`` allocated bytes."""
    return peak * (1 + spec.runtime.allocator_fragmentation)


def required_bytes(spec: Spec, peak):
    """What a plan with this allocated peak needs of the GPU: the allocator's reservation plus
    the CUDA context outside it (compared with ``usable_bytes``)."""
    return reserved_bytes(spec, peak) + spec.runtime.cuda_context_gib * GiB


def floor_bytes_needed(peak, cuda_context_bytes):
    """The least a plan with this allocated peak needs: the allocator holding exactly the peak
    (reserved / allocated = 1, the lowest the calibration rows show), plus the context."""
    return peak + cuda_context_bytes


def fit_verdict(required: float, floor: float, usable: float) -> str:
    if required <= usable:
        return FITS
    return TIGHT if floor <= usable else DOES_NOT_FIT


FITS, TIGHT, DOES_NOT_FIT = "fits", "tight", "does not fit"


def usable_bytes(spec: Spec) -> float:
    """GPU capacity less the headroom the spec keeps free: the one formula every fit check uses."""
    return spec.cluster.gpu.memory_bytes * (1 - spec.search.memory_headroom)


def estimate(spec: Spec, plan: Plan, *, with_time: bool = True,
             backend: Optional[Backend] = None) -> Estimate:
    """Memory, FLOPs and (unless with_time is False) step time of one plan under a backend."""
    backend = backend or backend_for(spec)
    mem = peak_memory(spec, plan, backend)
    rt, cluster = spec.runtime, spec.cluster
    return Estimate(
        plan=plan,
        memory=mem,
        reserved_bytes=reserved_bytes(spec, mem.total),
        cuda_context_bytes=rt.cuda_context_gib * GiB,
        usable_bytes=usable_bytes(spec),
        host_bytes_per_node=host_offload_bytes(spec, plan, backend) * cluster.gpus_per_node,
        host_capacity_bytes=cluster.host_memory_gib * GiB,
        flops=step_flops(spec.model, plan, spec.global_batch_sequences),
        time=throughput(spec, plan, backend) if with_time else None,
    )
