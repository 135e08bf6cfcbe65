"""Per-GPU memory of one strategy: the backend's moments of a step (planner/backends/) on the
pipeline stages that can be the most loaded; the largest is the predicted
``torch.cuda.max_memory_allocated``.  Each term is a pure function of (model, plan): the
framework-free ones in planner/model/memory_terms.py, the backend's beside it."""
from __future__ import annotations

from typing import Optional

import numpy as np

from planner.backends.base import Backend
from planner.backends.registry import backend_for
from planner.model.memory_terms import AnyPlan, MemoryBreakdown
from planner.model.shape import stages_to_check
from planner.plan.strategy import Plan, PlanBatch
from planner.spec.spec import Spec


def peak_memory(spec: Spec, plan: Plan, backend: Optional[Backend] = None) -> MemoryBreakdown:
    """The largest moment over the stages that can be the most loaded (first and last), under
    ``backend`` (default: the spec's runtime.backend, like every estimator here)."""
    backend = backend or backend_for(spec)
    best = None
    for stage in stages_to_check(spec.model, plan.pp, plan.grad_accum):
        for moment, happens in backend.stage_moments(spec, plan, stage):
            if happens and (best is None or moment.total > best.total):
                best = moment
    return best


def peak_bytes(spec: Spec, plans: PlanBatch, backend: Optional[Backend] = None) -> np.ndarray:
    """The same peak for every plan of a batch, as one array (the search's hot path)."""
    backend = backend or backend_for(spec)
    peak = np.zeros(len(plans))
    for stage in stages_to_check(spec.model, plans.pp, plans.grad_accum):
        for moment, happens in backend.stage_moments(spec, plans, stage):
            peak = np.maximum(peak, np.where(happens, moment.total, 0.0))
    return peak


def host_offload_bytes(spec: Spec, plan: AnyPlan, backend: Optional[Backend] = None):
    """Host RAM one GPU's rank needs for offload."""
    return (backend or backend_for(spec)).host_offload_bytes(spec, plan)
