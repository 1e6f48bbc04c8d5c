"""Halving Kubernetes quantities (resources/quantity.py), for the int8 build pod's two containers."""

from __future__ import annotations

from decimal import Decimal

import pytest

from modeldeploy.resources import quantity


@pytest.mark.parametrize(("given", "half"), [
    ("2", "1"), ("1", "500m"), ("7", "3500m"), ("500m", "250m"), ("1.5", "750m"), ("0.1", "50m"),
    ("4Gi", "2Gi"), ("6Gi", "3Gi"), ("3Gi", "1610612736"), ("100M", "50M"), ("1e3", "500"), ("1m", "1m"),
])
def test_half(given: str, half: str) -> None:
    assert quantity.half(given) == half
    assert quantity.parse(half) * 2 >= quantity.parse(given)  # never less than half: rounded up


def test_parse_units() -> None:
    assert quantity.parse("1Ki") == 1024 and quantity.parse("1k") == 1000 and quantity.parse("250m") == Decimal("0.25")


@pytest.mark.parametrize("bad", ["", "Gi", "1Gb", "one", "1..2"])
def test_not_a_quantity(bad: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        quantity.parse(bad)
