"""Kubernetes resource quantities ("512Mi", "1Gi", "500m", "1e9", "1.5Pi") as plain numbers.

The grammar is apimachinery's (k8s.io/apimachinery/pkg/api/resource/quantity.go): a decimal
number, then a binary-SI suffix (Ki … Ei), a decimal-SI suffix (n, u, m, k, M, G, T, P, E) or a
decimal exponent (e3, E-2). Written here because the only maintained Python parser is part of
the kubernetes client, which nothing else in kubeshot needs. Signs are refused: every quantity a
policy carries (memory, cpu) is a size.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BINARY = {f"{p}i": Decimal(2) ** (10 * n) for n, p in enumerate("KMGTPE", start=1)}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
QUANTITY_PATTERN = rf"^{_NUMBER}(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?{_NUMBER})?$"
"""apimachinery's quantity pattern without the sign (the CRDs carry it as the schema pattern)."""
_QUANTITY = re.compile(
    rf"^(?P<number>{_NUMBER})(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?{_NUMBER})?$"
)
# Quantities past this are not sizes anyone means (2**63 bytes is apimachinery's own ceiling).
_MAX = Decimal(2) ** 63


def parse_quantity(text: str) -> Decimal:
    """The value of a quantity; ValueError when it is not one."""
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    number, suffix = Decimal(match["number"]), match["suffix"] or ""
    if suffix in _BINARY:
        value = number * _BINARY[suffix]
    elif suffix in _DECIMAL:
        value = number * _DECIMAL[suffix]
    else:
        try:
            exponent = Decimal(suffix[1:])
        except InvalidOperation as exc:  # unreachable: the pattern allows only numbers here
            raise ValueError(f"not a Kubernetes quantity: {text!r}") from exc
        if exponent != exponent.to_integral_value() or abs(exponent) > 18:
            raise ValueError(f"quantity exponent out of range: {text!r}")
        value = number.scaleb(int(exponent))
    if value > _MAX:
        raise ValueError(f"quantity too large: {text!r}")
    return value


def quantity_bytes(text: str) -> int:
    """A memory quantity in whole bytes (rounded up, as the kubelet counts a fractional byte)."""
    value = parse_quantity(text)
    whole = int(value)
    return whole if whole == value else whole + 1
