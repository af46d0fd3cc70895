"""The value types every stack-file section shares: strict numbers and the frozen base model."""

from __future__ import annotations

from typing import Annotated

from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict

# Numbers as users write them: a YAML `true` is not 1 and `.inf` is not a size. Strict keeps
# booleans and strings out (an int is still a valid float); finite keeps inf and nan out.
Whole = Annotated[int, Strict()]
Number = Annotated[float, Strict(), AllowInfNan(False)]
Ratio = Annotated[float, Strict(), AllowInfNan(False), Field(ge=0)]


class SpecModel(BaseModel):
    """Frozen, and an unknown key is an error (named with its path by spec_problems)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)
