"""The v1 ``crm?action=getOpportunityList`` rules the mock enforces: its parameters, what each
filter matches and how it compares a stored value, and the page it answers.

Records keep their fields as clients sent them (``"107"`` or ``107``), so every comparison first
reads both sides the same way; the rules are in :class:`FieldFilter`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from airflow_opportunity_provider.mock_crm.v1 import (
    INTEGER_FIELDS,
    PARAMETER_INVALID,
    V1Refusal,
    invalid_parameter,
    is_whole_number,
)

EQUALS = ""
CONTAINS = "CONTAINS"
NOT_CONTAINS = "NOTCONTAINS"
BEGINS = "BEGINS"
ENDS = "ENDS"
LESS_THAN = "LESSTHAN"
GREATER_THAN = "GREATERTHAN"
NOT = "NOT"
EMPTY = "EMPTY"
# In the order the vendor lists them; a key is `field` or `field__SUFFIX`.
FILTER_SUFFIXES = (CONTAINS, NOT_CONTAINS, BEGINS, ENDS, LESS_THAN, GREATER_THAN, NOT, EMPTY)
# The value that matches a field that is null or missing (with no suffix), or present (with __NOT).
IS_NULL = "__ISNULL__"
_TEXT_SEARCHES = frozenset({CONTAINS, NOT_CONTAINS, BEGINS, ENDS})
_NUMBER = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")


def _text(field: str, value: Any) -> str | None:
    """A stored or filter value as the text comparisons read it; ``None`` for null, objects, lists.

    The platform keeps id fields as integers, so there a string of digits is read as its number
    (``"0107"`` is ``107``); elsewhere an integer is its digits and a string stays as it is.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if field in INTEGER_FIELDS and is_whole_number(value):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return json.dumps(value)
    if isinstance(value, str):
        return value
    return None


def _number(value: Any) -> Decimal | None:
    """A value as a number when it is one (``5``, ``1.5``, ``"-2.50"``), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else None
    if isinstance(value, str) and _NUMBER.match(value):
        return Decimal(value)
    return None


@dataclass(frozen=True)
class FieldFilter:
    """One ``filter`` key and its value: which records it keeps.

    How a record's value compares, in order:

    - ``__EMPTY``: ``true`` keeps records whose field is null, missing or ``""``; ``false`` keeps
      every other record.
    - ``__ISNULL__`` as the value: keeps records whose field is null or missing; with ``__NOT``,
      records whose field holds anything else.
    - Otherwise a record whose field is null, missing, an object or a list matches nothing,
      ``__NOT`` and ``__NOTCONTAINS`` included, as a database compares a NULL.
    - Both sides are read as text: an integer is its digits, so ``"107"`` and ``107`` are one
      value; in the id fields (``venueId``, ``contactId``, ...) ``"0107"`` is ``107`` too;
      ``true``/``false`` are those words.
    - Equals and ``__NOT`` compare the texts exactly, letter case included.
    - ``__CONTAINS``, ``__NOTCONTAINS``, ``__BEGINS`` and ``__ENDS`` ignore letter case.
    - ``__LESSTHAN`` and ``__GREATERTHAN`` include the bound. They compare numbers when both sides
      are numbers (``5``, ``"5"``, ``"-1.5"``), else the texts character by character, which orders
      ``"2019-04-12 09:00:35 UTC"`` dates in time (and a bare ``"2019-04-12"`` before every moment
      of that day).

    :param field: the record field, a top-level key.
    :param suffix: one of :data:`FILTER_SUFFIXES`, or :data:`EQUALS` (``""``) for none.
    :param value: the value as received, already checked by :func:`parse_filter`.
    """

    field: str
    suffix: str
    value: Any

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Whether ``record`` passes this filter.

        :param record: a stored v1 record.
        """
        stored = record.get(self.field)
        if self.suffix == EMPTY:
            return (stored is None or stored == "") is self.value
        if self.value == IS_NULL:
            return (stored is None) is (self.suffix == EQUALS)
        stored_text = _text(self.field, stored)
        wanted = _text(self.field, self.value)
        if stored_text is None or wanted is None:
            return False
        if self.suffix == EQUALS:
            return stored_text == wanted
        if self.suffix == NOT:
            return stored_text != wanted
        if self.suffix in (LESS_THAN, GREATER_THAN):
            stored_number, wanted_number = _number(stored), _number(self.value)
            if stored_number is not None and wanted_number is not None:
                below = stored_number <= wanted_number
                above = stored_number >= wanted_number
            else:
                below, above = stored_text <= wanted, stored_text >= wanted
            return below if self.suffix == LESS_THAN else above
        haystack, needle = stored_text.casefold(), wanted.casefold()
        if self.suffix == CONTAINS:
            return needle in haystack
        if self.suffix == NOT_CONTAINS:
            return needle not in haystack
        if self.suffix == BEGINS:
            return haystack.startswith(needle)
        return haystack.endswith(needle)


@dataclass(frozen=True)
class ListQuery:
    """One checked ``getOpportunityList`` request.

    :param venue_ids: the venues whose records are listed; ``None`` for every venue.
    :param filters: every filter, all of which a record must pass.
    :param start: how many matching records to skip (zero-based offset).
    :param per_page: the most records to answer, already capped by the server.
    """

    venue_ids: frozenset[int] | None
    filters: tuple[FieldFilter, ...]
    start: int
    per_page: int

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Whether ``record`` belongs to the list (before paging).

        :param record: a stored v1 record.
        """
        if self.venue_ids is not None:
            venue_id: Any = record.get("venueId")
            if not is_whole_number(venue_id) or int(venue_id) not in self.venue_ids:
                return False
        # A plain loop, not all(): this runs for every stored record on every page.
        for one in self.filters:  # noqa: SIM110
            if not one.matches(record):
                return False
        return True


def parse_list_request(
    body: bytes, page_cap: int, *, ignore_filters: bool = False, ignore_venue_ids: bool = False
) -> ListQuery:
    """Apply the ``getOpportunityList`` parameter rules to a request body.

    An empty body asks for the first page of every record. Unknown parameters are ignored, as the
    platform ignores unknown names. ``perPage`` above ``page_cap`` is lowered to it; left out it is
    ``page_cap``. A ``venueIds`` of ``null`` or ``[]`` means every venue.

    :param body: the body bytes as received.
    :param page_cap: the most records one page holds.
    :param ignore_filters: leave ``filter`` unread, as a server that does not support it would.
    :param ignore_venue_ids: leave ``venueIds`` unread, likewise.
    :raises V1Refusal: 400 with specificCode 23016 naming the parameter that does not validate.
    """
    try:
        parameters = json.loads(body) if body.strip() else {}
    except ValueError:
        raise V1Refusal(
            400, "The request does not validate", PARAMETER_INVALID, ["The body is not valid JSON"]
        ) from None
    if not isinstance(parameters, dict):
        raise V1Refusal(
            400, "The request does not validate", PARAMETER_INVALID, ["The body must be a JSON object"]
        )
    per_page = _whole_number(parameters, "perPage", minimum=1, default=page_cap)
    start = _whole_number(parameters, "start", minimum=0, default=0)
    venue_ids = None if ignore_venue_ids else _venue_ids(parameters.get("venueIds"))
    filters = () if ignore_filters else parse_filter(parameters.get("filter"))
    return ListQuery(venue_ids, filters, start, min(per_page, page_cap))


def _whole_number(parameters: Mapping[str, Any], name: str, *, minimum: int, default: int) -> int:
    value = parameters.get(name)
    if value is None:
        return default
    if not is_whole_number(value):
        raise invalid_parameter(name, f"Value must be a whole number >= {minimum}")
    number = int(value)
    if number < minimum:
        raise invalid_parameter(name, f"Value must be a whole number >= {minimum}")
    return number


def _venue_ids(value: Any) -> frozenset[int] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise invalid_parameter("venueIds", "Value must be a list of venue ids")
    for item in value:
        if not is_whole_number(item):
            raise invalid_parameter("venueIds", f"Every venue id must be a whole number, got {item!r}")
    return frozenset(int(item) for item in value) or None


def parse_filter(value: Any) -> tuple[FieldFilter, ...]:
    """Check a ``filter`` object and return its filters, in the order given.

    :param value: the ``filter`` value as received; ``None`` for no filter.
    :raises V1Refusal: 400, 23016, naming the key that does not validate.
    """
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise invalid_parameter("filter", "Value must be an object of field names and values")
    return tuple(_field_filter(key, item) for key, item in value.items())


def _field_filter(key: str, value: Any) -> FieldFilter:
    field, separator, suffix = key.partition("__")
    if not field:
        raise invalid_parameter("filter", f"{key!r} names no field")
    if separator and suffix not in FILTER_SUFFIXES:
        known = ", ".join(f"__{name}" for name in FILTER_SUFFIXES)
        raise invalid_parameter("filter", f"{key!r} has an unknown suffix '__{suffix}'; use one of {known}")
    if suffix == EMPTY:
        if not isinstance(value, bool):
            raise invalid_parameter("filter", f"{key!r} takes true or false, got {value!r}")
        return FieldFilter(field, suffix, value)
    if value == IS_NULL and suffix not in (EQUALS, NOT):
        raise invalid_parameter("filter", f"{key!r}: {IS_NULL} works with no suffix or with __NOT only")
    scalar = isinstance(value, (str, int)) or (isinstance(value, float) and math.isfinite(value))
    if not scalar:
        raise invalid_parameter(
            "filter", f"{key!r} takes a string, a number or true/false, got {json.dumps(value)}"
        )
    return FieldFilter(field, suffix, value)


def list_answer(query: ListQuery, total: int, results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The body of a ``getOpportunityList`` answer.

    :param query: the request it answers.
    :param total: how many records match, over every page.
    :param results: the page's records.
    """
    return {
        "meta": {
            "totalResults": total,
            "start": query.start,
            "perPage": query.per_page,
            "count": len(results),
        },
        "results": list(results),
    }
