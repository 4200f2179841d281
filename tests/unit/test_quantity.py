"""Quantities are parsed as apimachinery parses them: every suffix, exponents, no signs."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from pydantic import ValidationError

from kubeshot.api import ScreenshotPolicySpec
from kubeshot.api.quantity import QUANTITY_PATTERN, parse_quantity, quantity_bytes

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1Gi", 1024**3),
        ("512Mi", 512 * 1024**2),
        ("1.5G", 1_500_000_000),
        ("1e9", 10**9),
        ("1E9", 10**9),
        ("2e+3", 2000),
        ("1Pi", 2**50),
        ("1Ei", 2**60),
        ("3P", 3 * 10**15),
        (".5Gi", 2**29),
        ("1.", 1),
        ("128974848", 128974848),
        ("129e6", 129 * 10**6),
        ("123Mi", 123 * 2**20),
    ],
)
def test_memory_quantities_as_the_kubelet_reads_them(text: str, value: int) -> None:
    assert quantity_bytes(text) == value
    assert re.fullmatch(QUANTITY_PATTERN, text)


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", Decimal("0.5")), ("100n", Decimal("1e-7")), ("250u", Decimal("0.00025"))],
)
def test_fractional_quantities(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


def test_a_fractional_byte_rounds_up() -> None:
    assert quantity_bytes("500m") == 1


@pytest.mark.parametrize(
    "text", ["-1Gi", "+1Gi", "1Qi", "1e", "e3", "", "1 Gi", "Gi", "1gi", "1KB", "1e1.5", "10Ei"]
)
def test_what_is_not_a_quantity_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(text)


def test_a_policy_takes_every_spelling_of_its_memory_limit() -> None:
    assert (
        ScreenshotPolicySpec.model_validate({"limits": {"memory": "1e9"}}).limits.memory_bytes
        == 10**9
    )
    assert ScreenshotPolicySpec.model_validate({"limits": {"cpu": "1500m"}}).limits.cpu == "1500m"
    with pytest.raises(ValidationError, match="memory"):
        ScreenshotPolicySpec.model_validate({"limits": {"memory": "-1Gi"}})
