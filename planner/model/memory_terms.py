"""Memory terms that do not depend on the framework: the named breakdown every backend fills in
(one field per term, ``.total``), the weights each rank keeps under ZeRO's partitioning (Rajbhandari
et al. 2020, section 5), and PyTorch's cuBLAS workspaces.  A backend's own buffers and the moments
of its step live beside the backend (planner/backends/)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Union

from planner.model import activations as act
from planner.model import fp8
from planner.plan.strategy import Plan, PlanBatch, where
from planner.spec.spec import Spec
from planner.spec.units import GiB, MiB, Recompute, ZeroStage

AnyPlan = Union[Plan, PlanBatch]


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes on one GPU at one moment of the step (arrays, one per candidate, for a batch)."""

    parameters: Any = 0.0  #: weights in the compute dtype (ZeRO-3: partition + gathered)
    fp8_weights: Any = 0.0  #: fp8 weight copies cached over a step and the scaling state
    gradients: Any = 0.0  #: parameter gradients alive at this moment
    master_weights: Any = 0.0  #: fp32 master copy
    optimizer_states: Any = 0.0  #: Adam moments (SGD momentum)
    activations: Any = 0.0  #: saved activations of every micro-batch in flight + block transients
    logits_loss: Any = 0.0  #: logits, their fp32 copy, log-softmax and its gradients
    deepspeed_buffers: Any = 0.0  #: ipg bucket, flatten copies, pipeline send/recv buffers
    optimizer_step: Any = 0.0  #: fp32 gradients and temporaries of the optimizer step
    cublas_workspace: Any = 0.0  #: PyTorch's cuBLAS workspaces (forward and autograd threads)
    moment: str = ""
    stage: Any = 0

    @property
    def total(self):
        return sum(getattr(self, t) for t in TERMS)

    def as_gib(self) -> dict[str, float]:
        terms = {t: float(getattr(self, t)) / GiB for t in TERMS}
        terms["total"] = float(self.total) / GiB
        return terms


#: the memory terms, in report order
TERMS = tuple(f.name for f in fields(MemoryBreakdown) if f.name not in ("moment", "stage"))


# ------------------------------------------------------------------------------ terms

def parameter_bytes(plan: AnyPlan, n):
    """Weights in the compute dtype.  ZeRO-0/1/2 keep all of them (a flat buffer the params view,
    stage_1_and_2.py:503-534); ZeRO-3 keeps its 1/dp partition (stage3.py:972), none on the GPU
    when parameters are offloaded."""
    b = plan.param_bytes
    z3 = where(plan.params_off_gpu, 0.0, n * b / plan.zero_ranks)
    return where(plan.zero < ZeroStage.PARAMETERS, n * b, z3)


def cublas_workspace_bytes(spec: Spec) -> float:
    """One cuBLAS workspace per (handle, stream): forward runs on the main thread, backward on
    autograd's device thread, whose handle differs (CublasHandlePool.cpp), so two."""
    return 2 * spec.cluster.gpu.cublas_workspace_mib * MiB


def stored_per_block_bytes(spec: Spec, plan: AnyPlan):
    """What one block keeps between its forward and backward (planner/model/activations.py),
    with an fp8 recipe's saved inputs in fp8 when the block is not recomputed."""
    kept = act.stored_per_block_bytes(spec.model, plan, spec.runtime.cpu_checkpointing)
    saved_inputs = plan.is_recompute(Recompute.NONE) | plan.is_recompute(Recompute.SELECTIVE)
    return kept + where(saved_inputs, fp8.block_saved_delta_bytes(spec, plan), 0.0)
