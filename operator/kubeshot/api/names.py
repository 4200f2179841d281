"""Names of Kubernetes objects as the models accept them: checked before any of them reaches a URL.

An object name that is not a DNS-1123 subdomain ("." and ".." above all) would address something
else than the object it names once it is put into an API path: the list of the whole collection,
or another resource. Every model field naming an object uses `ObjectName`, so the CRDs, the HTTP
API and the operator refuse such names alike.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

# DNS-1123 subdomain: lower-case alphanumeric labels joined by dots, dashes inside labels.
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Keys of a Secret's or ConfigMap's data.
DATA_KEY = r"^[-._a-zA-Z0-9]+$"
MAX_NAME_LENGTH = 253

ObjectName = Annotated[
    str, Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=DNS1123_SUBDOMAIN)
]
"""The name of a Kubernetes object (Secret, ScreenshotPolicy, RuntimeClass, Pod, ...)."""

DataKey = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=DATA_KEY)]
"""A key of a Secret's data."""

_OBJECT_NAME = re.compile(DNS1123_SUBDOMAIN)


def is_object_name(text: str) -> bool:
    """Whether text is a valid object name (the check of `ObjectName`, for plain strings)."""
    return len(text) <= MAX_NAME_LENGTH and _OBJECT_NAME.fullmatch(text) is not None
