"""Value types for params.yaml keys and factory keyword arguments, shared by the schema and the registries.

A factory states the type and range of each keyword argument once, in its signature (`lr: PosFloat = 0.1`), and the
params schema (`ltpipe.schema`) is generated from those signatures, so a range lives in exactly one place.

Integers are strict (3.7, 3.0, "3" and true are errors, never silently 3); floats take ints and numeric strings, so
`5e-4` means the same whether PyYAML (a string) or DVC's `-S` (a float) read it; booleans are strict.
"""
from __future__ import annotations

from typing import Annotated, Any, Dict

from pydantic import AfterValidator, BeforeValidator, Field, Strict


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a number is required, not a boolean")
    return value


Int = Annotated[int, Strict()]
PosInt = Annotated[int, Strict(), Field(ge=1)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
Float = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]
PosFloat = Annotated[Float, Field(gt=0)]
NonNegFloat = Annotated[Float, Field(ge=0)]
UnitFloat = Annotated[Float, Field(ge=0, le=1)]  # [0, 1]
OpenUnitFloat = Annotated[Float, Field(ge=0, lt=1)]  # [0, 1): momentum, beta of effective numbers
Bool = Annotated[bool, Strict()]


def _sorted_unique(values: list) -> list:
    if list(values) != sorted(set(values)):
        raise ValueError("must be strictly increasing")
    return values


Milestones = Annotated[list[PosInt], AfterValidator(_sorted_unique)]
# The keyword-argument block of a method named beside it (`loss_params` next to `loss`); null means {}.
KwargsBlock = Annotated[Dict[str, Any], BeforeValidator(lambda value: {} if value is None else value)]
