"""The identity of a source row: its key columns' values as one canonical text, that text's digest,
and the partition it belongs to.

The text is what the state stores and shows; the digest is what identifies the row in the
state, byte for byte, whatever the database's collation. Both must stay the same across
releases, or every existing sync would create its records again.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

#: Characters of a key digest: BLAKE2b-128 in lowercase hex.
DIGEST_LENGTH = 32
#: Prefix of a binary key value's hex text.
BYTES_PREFIX = "0x"
_DIGEST_BASE = hashlib.blake2b(digest_size=16)


class KeyEncodingError(ValueError):
    """A key column's value cannot name a row (NULL, NaN, or a type with no canonical text).

    :param column: the key column.
    :param reason: what is wrong with its value.
    """

    def __init__(self, column: str, reason: str) -> None:
        self.column = column
        self.reason = reason
        super().__init__(f"key column {column!r} {reason}")


def encode_key(values: Sequence[Any], columns: Sequence[str]) -> str:
    """The canonical, lossless text of a row's key column values.

    One column: a ``str`` is itself, an ``int`` its digits, a ``bool`` ``true``/``false``, a
    ``float`` its shortest round-trip ``repr``, a ``Decimal`` its exact value without trailing
    zeros (``1.10`` and ``1.1`` are one key), ``date``/``time``/``datetime`` their ISO text with
    every digit and the offset they carry, a ``UUID`` its hyphenated lowercase form, bytes
    ``0x`` and their lowercase hex. Several columns: a compact JSON list, numbers as JSON
    numbers and every other value as a JSON string of the text above, so no two keys collide.
    The forms of ``str`` and ``int`` keys are the ones earlier releases stored.

    :param values: the row's key column values, in ``columns`` order.
    :param columns: the key columns' names, for messages.
    :raises KeyEncodingError: for NULL, NaN, infinity, or a value of any other type.
    """
    if len(values) != len(columns):
        raise ValueError(f"{len(values)} key values for {len(columns)} key columns {list(columns)}")
    if len(values) == 1:
        value = values[0]
        if type(value) is str:  # the common case first
            return value
        text, _ = _text(value, columns[0])
        return text
    parts = []
    for value, column in zip(values, columns, strict=True):
        text, is_number = _text(value, column)
        parts.append(text if is_number else json.dumps(text, ensure_ascii=False))
    return "[" + ",".join(parts) + "]"


def _text(value: Any, column: str) -> tuple[str, bool]:
    """``(text, whether it is a JSON number)`` for one key value."""
    if value is None:
        raise KeyEncodingError(column, "is NULL: a row needs every key column to name it")
    if isinstance(value, str):
        return str.__str__(value), False
    if isinstance(value, bool):
        return ("true" if value else "false"), True
    if isinstance(value, int):
        try:
            return int.__repr__(value), True
        except ValueError as error:  # more digits than Python converts to text
            raise KeyEncodingError(column, f"holds an integer too large to name a row: {error}") from None
    if isinstance(value, float):
        if not math.isfinite(value):
            raise KeyEncodingError(column, f"is {value!r}, which names no row")
        return float.__repr__(value), True
    if isinstance(value, Decimal):
        return _decimal_text(value, column), True
    if isinstance(value, datetime | date | time):
        # datetime before date: a datetime is a date too, and must keep its time and offset.
        return value.isoformat(), False
    if isinstance(value, uuid.UUID):
        return str(value), False
    if isinstance(value, bytes | bytearray | memoryview):
        return BYTES_PREFIX + bytes(value).hex(), False
    raise KeyEncodingError(
        column,
        f"holds a {type(value).__name__}, which has no canonical text: key columns must be text, "
        "numbers, booleans, dates, times, UUIDs or bytes (cast it in the query)",
    )


def _decimal_text(value: Decimal, column: str) -> str:
    """A Decimal's exact value in fixed-point form without trailing zeros (``1.10`` -> ``1.1``).

    Built from the digits, not with ``normalize()``, which rounds to the context's precision.
    """
    if not value.is_finite():
        raise KeyEncodingError(column, f"is {value}, which names no row")
    if value.is_zero():
        return "0"
    sign, digit_tuple, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).lstrip("0")
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped
    if exponent >= 0:
        text = digits + "0" * exponent
    elif -exponent < len(digits):
        text = digits[:exponent] + "." + digits[exponent:]
    else:
        text = "0." + "0" * (-exponent - len(digits)) + digits
    return ("-" if sign else "") + text


def key_digest(key: str) -> str:
    """A key's identity in the state: BLAKE2b-128 of its UTF-8 text, 32 lowercase hex characters.

    :param key: the key's text (:func:`encode_key`).
    """
    # A copy of an empty hasher: once per source row, and cheaper than a new one.
    hasher = _DIGEST_BASE.copy()
    hasher.update(key.encode("utf-8"))
    return hasher.hexdigest()


def is_digest(text: str) -> bool:
    """Whether ``text`` has the form of a :func:`key_digest`.

    :param text: a key or a digest.
    """
    return len(text) == DIGEST_LENGTH and all(character in "0123456789abcdef" for character in text)


def partition_of(key: str, partition_count: int) -> int:
    """The partition a key belongs to: the first 8 bytes of its BLAKE2b digest, modulo the count.

    Python's ``hash()`` is salted per process, so it would put a key in different partitions on
    different workers; this digest is the same everywhere, forever.

    :param key: the row's source key.
    :param partition_count: how many partitions the sync is spread over.
    """
    if partition_count <= 1:
        return 0
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partition_count
