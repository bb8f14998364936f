"""JSON bodies exactly as both platforms expect them.

``Decimal`` values are written as JSON numbers with every digit they hold (never through a
float), and ``date``/``datetime`` values as ``yyyy-MM-dd``, the one unambiguous date form.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

# A Decimal is first written as a string holding this marker and its digits; the quotes and
# the marker are then removed. A NUL character cannot come from real data in a JSON string
# (the encoder escapes it as \u0000), so the marker cannot collide with a user's value.
_MARKER = "\x00decimal:"
_MARKED = re.compile(r'"\\u0000decimal:([^"]*)"')


def _default(value: Any) -> Any:
    """What ``json`` cannot write itself: a Decimal as its marked digits, a date as ``yyyy-MM-dd``.

    Used as ``json.dumps(default=...)``, it is only called for such values, so a payload of plain
    JSON types costs nothing beyond the C encoder.
    """
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} cannot be sent: JSON numbers must be finite")
        return _MARKER + str(value)
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    """Serialize a payload to compact JSON text, Decimals without rounding.

    :param value: the payload.
    :param sort_keys: order keys, for a canonical text to hash.
    """
    text = json.dumps(
        value,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        sort_keys=sort_keys,
        default=_default,
    )
    if _MARKER[1:] in text:
        text = _MARKED.sub(r"\1", text)
    return text


def dumps_bytes(value: Any) -> bytes:
    """Serialize a payload to the UTF-8 bytes that are signed and sent.

    :param value: the payload.
    """
    return dumps(value).encode("utf-8")
