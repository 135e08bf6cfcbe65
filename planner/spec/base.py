"""The base of every spec section: frozen, and unknown keys are errors naming their path; and
the integer type every count in a spec uses."""
from typing import Annotated

from annotated_types import Gt
from pydantic import BaseModel, ConfigDict, Strict

#: a positive count: a YAML integer, not ``true``, ``8.0`` or ``"8"`` (which pydantic's lax
#: mode would take as 1 and 8)
PositiveInt = Annotated[int, Strict(), Gt(0)]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)
