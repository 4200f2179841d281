"""Kubernetes resource quantities ("512Mi", "1Gi", "500m") as plain numbers."""

from __future__ import annotations

import re
from decimal import Decimal

_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
}
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"
_QUANTITY = re.compile(QUANTITY_PATTERN)


def parse_quantity(text: str) -> Decimal:
    """The value of a quantity; ValueError when it is not one."""
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    suffix = match.group(2) or ""
    return Decimal(text[: len(text) - len(suffix)]) * _SUFFIXES[suffix]


def quantity_bytes(text: str) -> int:
    """A memory quantity in whole bytes."""
    return int(parse_quantity(text))
