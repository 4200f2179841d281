"""The base model every kubeshot resource model derives from: camelCase on the wire, strict."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel


class Model(BaseModel):
    """camelCase aliases (the CRD's and the HTTP API's spelling), snake_case in Python.

    Unknown fields are rejected: an option that is not understood must never be silently ignored.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    def to_wire(self) -> dict[str, object]:
        """The document as the CRD and the HTTP API spell it (camelCase, unset fields omitted)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def patch(self) -> dict[str, Any]:
        """The fields set here as a JSON merge patch (a status write): one set to None is
        removed, one not set is left as it is."""
        wire = self.to_wire()
        return {key: wire.get(key) for key in self.model_dump(by_alias=True, exclude_unset=True)}

    def merged(self, patch: Self) -> Self:
        """This document with a patch (its fields set) applied."""
        return self.model_copy(
            update={name: getattr(patch, name) for name in patch.model_fields_set}
        )


def validation_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """(field, message) per problem of a ValidationError: the field by its wire path (empty for
    the whole document), pydantic's "Value error, " prefix dropped, the input never echoed."""
    return [
        (".".join(str(p) for p in error["loc"]), str(error["msg"]).removeprefix("Value error, "))
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def describe_validation_error(exc: ValidationError, whole: str = "input") -> str:
    """A ValidationError in one line; `whole` names the document when a problem is not a field's."""
    return "; ".join(f"{field or whole}: {message}" for field, message in validation_problems(exc))
