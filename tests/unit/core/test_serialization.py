"""JSON bodies: Decimals keep every digit, dates go as yyyy-MM-dd."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal

import pytest

from airflow_opportunity_provider.serialization import dumps, dumps_bytes


def test_decimal_is_written_without_float_rounding() -> None:
    text = dumps({"AcctPotential": Decimal("200000.00"), "SalesRevenue": Decimal("0.1000000000000000055511")})
    assert text == '{"AcctPotential":200000.00,"SalesRevenue":0.1000000000000000055511}'
    assert json.loads(text, parse_float=Decimal)["SalesRevenue"] == Decimal("0.1000000000000000055511")


def test_dates_and_datetimes_become_iso_dates() -> None:
    assert (
        dumps({"d": date(2024, 12, 31), "t": datetime(2024, 3, 4, 23, 59)})
        == '{"d":"2024-12-31","t":"2024-03-04"}'
    )


def test_nested_values_and_unicode() -> None:
    text = dumps_bytes({"name": "Café", "items": [Decimal("1.5"), (date(2020, 1, 2),)]})
    assert text == '{"name":"Café","items":[1.5,["2020-01-02"]]}'.encode()


def test_non_finite_decimal_is_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        dumps({"x": Decimal("NaN")})


def test_a_string_that_looks_like_the_marker_is_left_alone() -> None:
    assert json.loads(dumps({"s": "decimal:12"})) == {"s": "decimal:12"}


def test_sort_keys_gives_a_canonical_text() -> None:
    assert dumps({"b": 1, "a": 2}, sort_keys=True) == dumps({"a": 2, "b": 1}, sort_keys=True)
