"""Row keys: the canonical text of every supported type, the forms earlier releases stored,
composite keys that cannot collide, digests, stable partitions, and values that name no row."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from airflow_opportunity_provider.transfers.keys import (
    KeyEncodingError,
    encode_key,
    is_digest,
    key_digest,
    partition_of,
)


def _one(value: Any) -> str:
    return encode_key([value], ["ref"])


def test_the_forms_earlier_releases_stored_stay_the_same() -> None:
    # Changing any of these would make every existing sync create its records again.
    assert _one("WH-000001") == "WH-000001"
    assert _one("") == ""
    assert _one("a|b") == "a|b"
    assert _one(42) == "42"
    assert _one(-7) == "-7"
    assert _one(date(2026, 1, 2)) == "2026-01-02"
    assert encode_key([1, "Pre"], ["id", "type"]) == '[1,"Pre"]'
    assert encode_key(["a|b", "c"], ["x", "y"]) == '["a|b","c"]'
    assert encode_key(["é", 'q"t'], ["x", "y"]) == '["é","q\\"t"]'  # not ASCII-escaped, as before


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (1.5, "1.5"),
        (0.1, "0.1"),
        (1e20, "1e+20"),
        (1.0, "1.0"),
        (Decimal("1.10"), "1.1"),
        (Decimal("1.1"), "1.1"),
        (Decimal("100"), "100"),
        (Decimal("1E+2"), "100"),
        (Decimal("-0.000"), "0"),
        (Decimal("0.00012300"), "0.000123"),
        (Decimal("-12.5000"), "-12.5"),
        # More digits than the default context's 28: kept exactly, never rounded.
        (
            Decimal("1234567890123456789012345678901234567890.10"),
            "1234567890123456789012345678901234567890.1",
        ),
        (datetime(2026, 1, 2, 3, 4, 5, 123456), "2026-01-02T03:04:05.123456"),
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "2026-01-02T03:04:05+00:00"),
        (
            datetime(2026, 1, 2, 3, 4, 5, 1, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
            "2026-01-02T03:04:05.000001-05:30",
        ),
        (time(23, 59, 58, 7), "23:59:58.000007"),
        (uuid.UUID("12345678-1234-5678-1234-567812345678"), "12345678-1234-5678-1234-567812345678"),
        (b"\x00\xffA", "0x00ff41"),
        (bytearray(b"\x01"), "0x01"),
        (memoryview(b"\x02\x03"), "0x0203"),
    ],
)
def test_each_type_has_one_canonical_text(value: Any, text: str) -> None:
    assert _one(value) == text


def test_two_rows_on_one_day_are_two_keys() -> None:
    morning, evening = datetime(2026, 3, 1, 8), datetime(2026, 3, 1, 20)
    assert _one(morning) != _one(evening)
    assert _one(morning.replace(microsecond=1)) != _one(morning)


def test_equal_decimals_are_one_key_and_every_digit_counts() -> None:
    assert _one(Decimal("1.10")) == _one(Decimal("1.1")) == _one(Decimal("1.100000"))
    assert _one(Decimal("1.1000001")) != _one(Decimal("1.1"))
    assert _one(Decimal("5")) == _one(5)  # an integral NUMERIC and an integer name the same row


def test_floats_use_their_shortest_round_trip_text() -> None:
    for value in (0.1 + 0.2, 1 / 3, 5e-324, 1.7976931348623157e308):
        assert float(_one(value)) == value


def test_composite_keys_cannot_collide() -> None:
    columns = ["a", "b"]
    pairs = [
        ["a", "b,c"],
        ["a,b", "c"],
        ['a"', "b"],
        ["a", '"b'],
        ["", "ab"],
        ["ab", ""],
        ["1", 1],
        [1, "1"],
        ["a\\", "b"],
        ["a", "\\b"],
        ["a]", "b"],
        ["a", "b["],
    ]
    texts = [encode_key(pair, columns) for pair in pairs]
    assert len(set(texts)) == len(texts)
    # Every composite key is a JSON list that gives back its text values.
    assert json.loads(encode_key(["a", "b,c"], columns)) == ["a", "b,c"]


def test_composite_keys_of_every_type() -> None:
    key = encode_key(
        [Decimal("2.50"), datetime(2026, 1, 2, 3, 4), True, uuid.UUID(int=1), b"\x0a", 2.5, "x"],
        ["n", "t", "flag", "id", "raw", "f", "s"],
    )
    assert key == '[2.5,"2026-01-02T03:04:00",true,"00000000-0000-0000-0000-000000000001","0x0a",2.5,"x"]'
    assert json.loads(key)[0] == 2.5


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "is NULL"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (Decimal("NaN"), "NaN"),
        (Decimal("-Infinity"), "Infinity"),
        ({"a": 1}, "dict"),
        ([1, 2], "list"),
        (object(), "object"),
        ((1,), "tuple"),
    ],
)
def test_values_that_name_no_row_raise_an_error_naming_the_column(value: Any, reason: str) -> None:
    with pytest.raises(KeyEncodingError, match=rf"'venue_ref'.*{reason}") as raised:
        encode_key(["ok", value], ["id", "venue_ref"])
    assert raised.value.column == "venue_ref"
    assert isinstance(raised.value, ValueError)
    with pytest.raises(KeyEncodingError, match="venue_ref"):
        encode_key([value], ["venue_ref"])


def test_a_value_count_that_does_not_match_the_columns_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="2 key values for 1 key columns"):
        encode_key(["a", "b"], ["a"])


def test_long_keys_are_kept_whole() -> None:
    long = "x" * 10_000
    assert _one(long) == long
    assert key_digest(long) != key_digest(long[:-1] + "y")


def test_digests_are_blake2b_128_in_lowercase_hex() -> None:
    import hashlib

    assert key_digest("WH-000001") == hashlib.blake2b(b"WH-000001", digest_size=16).hexdigest()
    assert len(key_digest("")) == 32
    assert key_digest("ABC") != key_digest("abc")
    assert key_digest("a") != key_digest("a ")
    assert is_digest(key_digest("é"))
    assert not is_digest("WH-000001")
    assert not is_digest(key_digest("a").upper())


def test_partitions_are_stable_across_processes_and_spread_evenly() -> None:
    # Pinned values: the same key must land in the same partition on every worker, forever.
    assert [partition_of(f"WH-{n:06d}", 4) for n in range(1, 9)] == [2, 1, 0, 3, 0, 0, 2, 2]
    assert partition_of('[1,"Pre"]', 7) == 3
    assert partition_of("anything", 1) == 0
    spread = Counter(partition_of(f"key-{n}", 4) for n in range(4000))
    assert set(spread) == {0, 1, 2, 3}
    assert min(spread.values()) > 900
