"""Turning requests into CaptureOptions: JSON bodies and (signed) query strings.

Both use the model's camelCase names. In a query string, nested objects use dotted names
(`viewport.width=800`, `pdf.landscape=true`) and lists and maps (`headers`, `cookies`,
`failOnHttpStatus`, ...) carry JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, TypeVar, get_origin

from pydantic import BaseModel, ValidationError

from kubeshot.api import CaptureOptions, validation_problems
from kubeshot.api.names import is_object_name
from kubeshot.gateway.errors import ApiError, invalid
from kubeshot.gateway.signing import RESERVED

POLICY_PARAM = "policy"
Options = TypeVar("Options", bound=CaptureOptions)
# Lists and maps (`headers`, `cookies`, `failOnHttpStatus`, ...) come as JSON in a query string.
_JSON_FIELDS = frozenset(
    info.alias or name
    for name, info in CaptureOptions.model_fields.items()
    if get_origin(info.annotation) in {list, dict}
)


def _nested_fields() -> dict[str, type[BaseModel]]:
    nested: dict[str, type[BaseModel]] = {}
    for name, info in CaptureOptions.model_fields.items():
        alias = info.alias or name
        for candidate in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                nested[alias] = candidate
    return nested


_NESTED = _nested_fields()


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """The offending fields of a ValidationError, without echoing the input back."""
    return [
        {"field": field or "(request)", "message": message}
        for field, message in validation_problems(exc)
    ]


def invalid_options(exc: ValidationError) -> ApiError:
    errors = field_errors(exc)
    summary = "; ".join(
        f"{e['field']}: {e['message']}" if e["field"] != "(request)" else e["message"]
        for e in errors[:5]
    )
    return invalid(f"invalid capture options: {summary}", errors)


def options_from_json(body: bytes, model: type[Options]) -> Options:
    """A JSON body as `model`: CaptureOptions, or a request that extends them."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise invalid("the request body is not valid JSON") from None
    if not isinstance(document, dict):
        raise invalid("the request body must be a JSON object of capture options")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise invalid_options(exc) from None
    except RecursionError:
        raise invalid("the request body is nested too deeply") from None


def options_from_query(params: Iterable[tuple[str, str]]) -> CaptureOptions:
    """Capture options from query parameters (signature parameters and `policy` left out)."""
    document: dict[str, Any] = {}
    seen: set[str] = set()
    for key, value in params:
        if key in RESERVED or key == POLICY_PARAM:
            continue
        if key in seen:
            raise invalid(f"parameter {key!r} is given more than once", [{"field": key}])
        seen.add(key)
        head, dot, rest = key.partition(".")
        if dot:
            if head not in _NESTED or not rest or "." in rest:
                raise invalid(f"unknown parameter {key!r}", [{"field": key}])
            target = document.setdefault(head, {})
            if not isinstance(target, dict):
                raise invalid(f"parameter {head!r} is given both whole and by field")
            target[rest] = value
        elif key in _JSON_FIELDS or (key in _NESTED and value.startswith("{")):
            if key in document:
                raise invalid(f"parameter {key!r} is given both whole and by field")
            try:
                document[key] = json.loads(value)
            except (ValueError, RecursionError):
                raise invalid(f"parameter {key!r} must be JSON", [{"field": key}]) from None
        else:
            document[key] = value
    try:
        return CaptureOptions.model_validate(document)
    except ValidationError as exc:
        raise invalid_options(exc) from None
    except RecursionError:
        raise invalid("a parameter is nested too deeply") from None


def policy_name(value: str | None) -> str | None:
    if value is None:
        return None
    if not is_object_name(value):
        raise invalid("parameter 'policy' is not a valid policy name", [{"field": "policy"}])
    return value
