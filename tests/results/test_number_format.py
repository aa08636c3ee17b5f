"""One rule for the numbers a reader sees: :func:`node.results.tables.format_value`."""

from __future__ import annotations

import math

import pytest

from node.results.tables import format_value


@pytest.mark.parametrize(("value", "decimals", "shown"), [
    (50.5, 0, "51"),      # a reported LVEF of 50.5 % reads 51 %, as a reader rounds (not half to even)
    (50.49, 0, "50"),
    (-2.5, 0, "-3"),
    (0.125, None, "0.13"),  # the shortest decimal form, not the binary value 0.12499...
    (12.25, 1, "12.3"),
    (-0.04, 1, "0.0"),    # never "-0.0"
    (3.0, None, "3"),
    (1234.0, None, "1234.0"),
    (2.345, None, "2.3"),
    (0.5, None, "0.50"),
])
def test_format_value(value: float, decimals: int | None, shown: str) -> None:
    assert format_value(value, decimals) == shown


def test_not_a_number_is_a_dash() -> None:
    assert format_value(math.nan, 0) == "-"
    assert format_value(math.inf) == "-"
