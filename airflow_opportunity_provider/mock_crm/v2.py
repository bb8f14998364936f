"""The v2 (Nexus engagement platform) rules the mock enforces on ``PUT /api/v2/opportunities/{Id}``:
query parameters, body fields, category and stage names, dates and exact decimals.

Money is parsed as ``Decimal`` and rendered back as a JSON number with every digit, so a test
can tell whether a client rounded it through a float.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

OPPORTUNITY_TYPES = {"pre": "Pre", "post": "Post"}
UNAUTHORIZED_MESSAGE = "Authorization has been denied for this request."
STRING_FIELDS = ("OpportunityName", "OpportunityID", "CategoryName", "StageName", "PendingCloseDate")
DECIMAL_FIELDS = ("AcctPotential", "SalesRevenue")
_ISO_DATE = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})$")
_SLASHED_DATE = re.compile(r"^([0-9]{2})/([0-9]{2})/([0-9]{4})$")


class V2Refusal(Exception):
    """A v2 error answer: the HTTP status and its body (a dict, or a plain string for 401).

    :param status: the HTTP status.
    :param body: the answer body.
    """

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(
            body if isinstance(body, str) else body.get("ValidationMessage") or body.get("Message")
        )
        self.status = status
        self.body = body


def validation_error(message: str) -> V2Refusal:
    """A 400 ``V2OpportunityInvalidResponse`` with only a ``ValidationMessage``.

    :param message: what is wrong.
    """
    return V2Refusal(400, {"ValidationMessage": message})


def not_found(raw_id: str, opportunity_type: str | None = None) -> V2Refusal:
    """A 404 ``ObjectNotFoundResponse``.

    :param raw_id: the ``{Id}`` path segment as received.
    :param opportunity_type: the type asked for, when one was.
    """
    what = f"Opportunity {raw_id}" + (f" of type {opportunity_type}" if opportunity_type else "")
    return V2Refusal(
        404, {"Message": f"{what} was not found.", "ObjectType": "Opportunity", "ObjectId": raw_id}
    )


def parse_id(raw_id: str) -> int | None:
    """The route's ``{Id}`` as an integer >= 1, or ``None`` (which the platform answers 404).

    :param raw_id: the path segment.
    """
    if not raw_id.isascii() or not raw_id.isdigit():
        return None
    value = int(raw_id)
    return value if value >= 1 else None


def _query_value(query: Mapping[str, str], name: str) -> str | None:
    # ASP.NET binds query parameters by name without regard to case.
    wanted = name.lower()
    for key, value in query.items():
        if key.lower() == wanted:
            return value
    return None


def parse_query(query: Mapping[str, str], *, type_required: bool) -> tuple[str | None, int]:
    """Read ``opportunityType`` and ``LanguageId`` from the query string.

    :param query: the query parameters.
    :param type_required: whether ``opportunityType`` must be given (``PUT``) or may be left out
        (``GET``).
    :raises V2Refusal: 400 when ``opportunityType`` is missing or not Pre/Post, or ``LanguageId``
        is not an integer >= 1.
    """
    raw_type = _query_value(query, "opportunityType")
    opportunity_type = None
    if raw_type is not None or type_required:
        opportunity_type = OPPORTUNITY_TYPES.get((raw_type or "").strip().lower())
        if opportunity_type is None:
            if raw_type is None:
                raise validation_error("The opportunityType query parameter is required: Pre or Post.")
            raise validation_error(
                f"The value '{raw_type}' is not valid for opportunityType: use Pre or Post."
            )
    raw_language = _query_value(query, "LanguageId")
    language_id = 1
    if raw_language is not None:
        if not raw_language.isascii() or not raw_language.isdigit() or int(raw_language) < 1:
            raise validation_error(f"The value '{raw_language}' is not valid for LanguageId.")
        language_id = int(raw_language)
    return opportunity_type, language_id


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _choices(names: Sequence[str], id_key: str, name_key: str) -> list[dict[str, Any]]:
    return [{id_key: index + 1, name_key: name} for index, name in enumerate(names)]


def _parse_date(value: str) -> str | None:
    """The date as yyyy-MM-dd, trying yyyy-MM-dd, then MM/dd/yyyy, then dd/MM/yyyy (so 03/04/2024
    is March 4, as the platform lists the formats in that order); ``None`` when none fits."""
    candidates: list[tuple[str, str, str]] = []
    iso = _ISO_DATE.match(value)
    if iso:
        candidates.append((iso.group(1), iso.group(2), iso.group(3)))
    slashed = _SLASHED_DATE.match(value)
    if slashed:
        first, second, year = slashed.groups()
        candidates += [(year, first, second), (year, second, first)]
    for year, month, day in candidates:
        try:
            return date(int(year), int(month), int(day)).isoformat()
        except ValueError:
            continue
    return None


def parse_put_body(
    body: bytes,
    categories: Sequence[str],
    stages: Sequence[str],
    reject_names: Collection[str] = (),
) -> dict[str, Any]:
    """Check a ``PUT`` body and return the changes it makes to the flat record.

    Fields left out or ``null`` leave the record as it is; unknown fields are ignored.

    :param body: the body bytes as received.
    :param categories: the category names that exist (``CategoryID`` = position + 1).
    :param stages: the stage names that exist (``StageID`` = position + 1).
    :param reject_names: ``OpportunityName`` values the server is told to refuse.
    :raises V2Refusal: 400 with a ``ValidationMessage`` (and the available choices when a
        category or stage name does not exist).
    """
    try:
        payload = json.loads(body, parse_float=Decimal, parse_constant=_refuse_constant)
    except ValueError:
        raise validation_error("The request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise validation_error("The request body must be a JSON object.")
    for name in STRING_FIELDS:
        if payload.get(name) is not None and not isinstance(payload[name], str):
            raise validation_error(f"{name} must be a string.")
    for name in DECIMAL_FIELDS:
        value = payload.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | Decimal)):
            raise validation_error(f"{name} must be a number.")
    changes: dict[str, Any] = {}
    category, stage = payload.get("CategoryName"), payload.get("StageName")
    if category is not None and category not in categories:
        raise _unknown_choice(
            f"Category '{category}' not found. Please select from available categories.", categories, stages
        )
    if stage is not None and stage not in stages:
        raise _unknown_choice(
            f"Stage '{stage}' not found. Please select from available stages.", categories, stages
        )
    if category is not None:
        changes["OpportunityCategoryID"] = list(categories).index(category) + 1
    if stage is not None:
        changes["OpportunityStageID"] = list(stages).index(stage) + 1
    raw_date = payload.get("PendingCloseDate")
    if raw_date is not None:
        parsed = _parse_date(raw_date)
        if parsed is None:
            raise validation_error(
                f"PendingCloseDate '{raw_date}' is not a valid date: use yyyy-MM-dd, MM/dd/yyyy or dd/MM/yyyy."
            )
        changes["PendingCloseDate"] = parsed
    opportunity_name = payload.get("OpportunityName")
    if opportunity_name is not None and opportunity_name in reject_names:
        raise validation_error("The opportunity details are invalid.")
    for field_name in ("OpportunityName", "OpportunityID"):
        if payload.get(field_name) is not None:
            changes[field_name] = payload[field_name]
    for field_name in DECIMAL_FIELDS:
        if payload.get(field_name) is not None:
            changes[field_name] = Decimal(payload[field_name])
    return changes


def _unknown_choice(message: str, categories: Sequence[str], stages: Sequence[str]) -> V2Refusal:
    return V2Refusal(
        400,
        {
            "ValidationMessage": message,
            "AvailableCategories": _choices(categories, "CategoryID", "CategoryName"),
            "AvailableStages": _choices(stages, "StageID", "StageName"),
        },
    )


def dumps(value: Any) -> str:
    """JSON text of ``value``, with every ``Decimal`` written as a number with all its digits.

    :param value: dicts, lists and JSON scalars, ``Decimal`` among them.
    """
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(item) for item in value) + "]"
    return json.dumps(value)
