"""pretrain-planner: memory and compute planning for LLM pre-training with DeepSpeed."""
from planner.errors import InfeasibleError, PlannerError, SpecError
from planner.spec.loading import load_spec
from planner.spec.spec import Spec

__all__ = ["Spec", "load_spec", "PlannerError", "SpecError", "InfeasibleError"]
