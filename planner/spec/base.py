"""The base of every spec section: frozen, and unknown keys are errors naming their path."""
from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)
