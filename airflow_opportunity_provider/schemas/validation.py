"""Validate opportunity payloads against this package's JSON Schemas, with messages a user can act on.

One validator per schema is built on first use and reused. A valid payload costs one pass of the
check compiled from the same schema (``fast_check``); only an invalid one pays for jsonschema
collecting every error and for turning each into a plain sentence.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker, TypeChecker
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import extend

from airflow_opportunity_provider.errors import PayloadValidationError
from airflow_opportunity_provider.schemas.fast_check import TYPE_PREDICATES, Check, compile_check

ADD_OR_UPDATE_OPPORTUNITY = "add_or_update_opportunity"
PUT_OPPORTUNITY_V2 = "put_opportunity_v2"
SCHEMA_NAMES = frozenset({ADD_OR_UPDATE_OPPORTUNITY, PUT_OPPORTUNITY_V2})

V1_FIELDS = frozenset(
    {
        "id",
        "venueId",
        "qualityId",
        "companyId",
        "industryId",
        "sourceId",
        "confirmedQuoteId",
        "confirmedQuoteStatus",
        "cancelledQuoteId",
        "lostToCompetition",
        "closedDate",
        "companyLeadContactId",
        "contactId",
        "name",
        "ownerUserId",
        "typeId",
        "stageId",
        "stageReasonId",
        "channelId",
        "description",
        "company",
        "contact",
        "utmSource",
        "utmMedium",
        "utmCampaign",
        "utmTerm",
        "utmContent",
        "referralContactId",
        "referralContact",
        "externalUrls",
    }
)
V2_ROUTE_AND_QUERY_FIELDS = frozenset({"Id", "opportunityType", "LanguageId"})
V2_BODY_FIELDS = frozenset(
    {
        "OpportunityName",
        "OpportunityID",
        "CategoryName",
        "StageName",
        "AcctPotential",
        "SalesRevenue",
        "PendingCloseDate",
    }
)

# Fields where a Python date is accepted and becomes ISO text before validation.
_V1_DATE_FIELDS = ("closedDate",)
_V2_DATE_FIELDS = ("PendingCloseDate",)

_MAX_SHOWN = 60
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_SLASHED_DATE = re.compile(r"([0-9]{2})/([0-9]{2})/([0-9]{4})")
_TYPE_PHRASES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "object": "an object",
    "array": "a list",
    "boolean": "true or false",
    "null": "null",
}


def _type_check(predicate: Callable[[object], bool], checker: object, instance: object) -> bool:
    return predicate(instance)


# The same type definitions as the fast check, so that both always agree on what is valid.
_OpportunityValidator = extend(
    Draft202012Validator,
    type_checker=TypeChecker(
        {name: functools.partial(_type_check, predicate) for name, predicate in TYPE_PREDICATES.items()}
    ),
)

# Draft 2020-12 treats `format` as an annotation unless a checker is passed; this one asserts.
_FORMAT_CHECKER = FormatChecker(formats=("date",))


@_FORMAT_CHECKER.checks("pending-close-date", raises=ValueError)
def _is_pending_close_date(instance: object) -> bool:
    """Accept yyyy-MM-dd, MM/dd/yyyy or dd/MM/yyyy when it names a real date.

    :param instance: the value to check; anything but a string is left to the ``type`` keyword.
    """
    if not isinstance(instance, str):
        return True
    if _ISO_DATE.fullmatch(instance):
        date.fromisoformat(instance)
        return True
    match = _SLASHED_DATE.fullmatch(instance)
    if match is None:
        return False
    first, second, year = (int(part) for part in match.groups())
    # 03/04/2024 reads both ways; the platform decides, so either reading being real is enough.
    return _is_real_date(year, first, second) or _is_real_date(year, second, first)


def _is_real_date(year: int, month: int, day: int) -> bool:
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


def load_schema(name: str) -> dict[str, Any]:
    """Read one of the package's JSON Schemas; each call returns a fresh dict the caller may change.

    :param name: ``"add_or_update_opportunity"`` or ``"put_opportunity_v2"``.
    :raises ValueError: for any other name.
    """
    if name not in SCHEMA_NAMES:
        raise ValueError(f"Unknown schema {name!r}; choose one of {', '.join(sorted(SCHEMA_NAMES))}.")
    text = resources.files(__package__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def get_validator(name: str) -> Validator:
    """Return the validator for one schema, built on the first call and the same object afterwards.

    Integers exclude ``bool`` and floats, numbers include ``Decimal`` but not NaN or infinities,
    and the ``date`` and ``pending-close-date`` formats are asserted.

    :param name: ``"add_or_update_opportunity"`` or ``"put_opportunity_v2"``.
    """
    validator: Validator = _OpportunityValidator(load_schema(name), format_checker=_FORMAT_CHECKER)
    return validator


@functools.cache
def _fast_check(name: str) -> Check:
    # jsonschema's own is_valid is the fallback should the schema outgrow the compiler.
    validator = get_validator(name)
    return compile_check(validator.schema, format_checker=_FORMAT_CHECKER) or validator.is_valid


@dataclass(frozen=True, slots=True)
class CheckedV1Payload:
    """A v1 ``addOrUpdateOpportunity`` payload that passed the schema: the hook and the bulk client
    send it as it is, without checking it again.

    Build it with :func:`check_add_or_update_payload`, never directly.

    :param fields: the payload, as it will be serialized.
    """

    fields: Mapping[str, Any]

    @property
    def creates(self) -> bool:
        """Whether the payload creates a record (no ``id``): not safe to send twice."""
        return self.fields.get("id") in (None, "")


@dataclass(frozen=True, slots=True)
class CheckedPutRequest:
    """A v2 put request that passed the schema, split into its route, query and body.

    Build it with :func:`check_put_request`, never directly.

    :param opportunity_id: the platform's own opportunity id (``Id``).
    :param opportunity_type: ``"Pre"`` or ``"Post"``.
    :param language_id: ``LanguageId``, when given.
    :param body: the body fields, a date ``PendingCloseDate`` already as ``yyyy-MM-dd``.
    """

    opportunity_id: int
    opportunity_type: str
    language_id: int | None
    body: Mapping[str, Any]


def check_add_or_update_payload(payload: Mapping[str, Any] | CheckedV1Payload) -> CheckedV1Payload:
    """Check a v1 ``addOrUpdateOpportunity`` payload once and return it as checked.

    Without ``id`` it is checked as a create. ``closedDate`` may be a ``datetime.date`` or
    ``datetime.datetime``; it is checked as its ``YYYY-MM-DD`` text and sent that way.

    :param payload: the JSON body to send (an already checked payload is returned as it is).
    :raises PayloadValidationError: listing every problem, each as ``(json_path, reason)``.
    """
    if isinstance(payload, CheckedV1Payload):
        return payload
    _validate(ADD_OR_UPDATE_OPPORTUNITY, _with_dates_as_text(payload, _V1_DATE_FIELDS))
    return CheckedV1Payload(dict(payload))


def check_put_request(document: Mapping[str, Any] | CheckedPutRequest) -> CheckedPutRequest:
    """Check a flat v2 put request once and split it into what goes in the route, the query and the body.

    :param document: ``Id`` and ``opportunityType`` (required), ``LanguageId`` and at least one
        of the body fields in ``V2_BODY_FIELDS`` (an already checked request is returned as it is).
    :return: ``Id`` and ``LanguageId`` as ``int``, the body a new dict with a date
        ``PendingCloseDate`` already as ``yyyy-MM-dd`` and every other value (``Decimal``
        included) as given.
    :raises PayloadValidationError: listing every problem, each as ``(json_path, reason)``.
    """
    if isinstance(document, CheckedPutRequest):
        return document
    prepared = _with_dates_as_text(document, _V2_DATE_FIELDS)
    _validate(PUT_OPPORTUNITY_V2, prepared)
    language = prepared.get("LanguageId")
    return CheckedPutRequest(
        int(prepared["Id"]),
        prepared["opportunityType"],
        None if language is None else int(language),
        {key: value for key, value in prepared.items() if key in V2_BODY_FIELDS},
    )


def validate_add_or_update_payload(payload: Mapping[str, Any]) -> None:
    """Check a v1 ``addOrUpdateOpportunity`` payload; see :func:`check_add_or_update_payload`.

    :param payload: the JSON body to send.
    :raises PayloadValidationError: listing every problem, each as ``(json_path, reason)``.
    """
    check_add_or_update_payload(payload)


def validate_put_request(document: Mapping[str, Any]) -> None:
    """Check a v2 put request given as one flat document; see :func:`check_put_request`.

    :param document: the flat put request.
    :raises PayloadValidationError: listing every problem, each as ``(json_path, reason)``.
    """
    check_put_request(document)


def split_put_request(document: Mapping[str, Any]) -> tuple[int, str, int | None, dict[str, Any]]:
    """Check a flat v2 put request and split it: ``(Id, opportunityType, LanguageId or None, body)``.

    :param document: the flat document :func:`check_put_request` accepts.
    :raises PayloadValidationError: listing every problem, each as ``(json_path, reason)``.
    """
    checked = check_put_request(document)
    return checked.opportunity_id, checked.opportunity_type, checked.language_id, dict(checked.body)


def _validate(name: str, document: Any) -> None:
    if _fast_check(name)(document):
        return
    problems = _describe_errors(get_validator(name).iter_errors(document))
    # jsonschema has the last word: the fast check only ever saves time on valid payloads.
    if problems:
        raise PayloadValidationError(problems, name)


def _with_dates_as_text(document: object, date_fields: Iterable[str]) -> Any:
    """Return ``document`` as a plain dict with date values as ISO text, copying only when needed.

    Anything that is not a mapping comes back as it was, for the schema's ``type`` check to name.
    """
    if not isinstance(document, Mapping):
        return document
    prepared = document if isinstance(document, dict) else dict(document)
    for field in date_fields:
        value = prepared.get(field)
        if isinstance(value, date):
            if prepared is document:
                prepared = dict(document)
            # A datetime is a date too; only its calendar day is sent.
            day = value.date() if isinstance(value, datetime) else value
            prepared[field] = day.isoformat()
    return prepared


def _describe_errors(errors: Iterable[ValidationError]) -> list[tuple[str, str]]:
    """Turn jsonschema errors into ``(json_path, reason)`` pairs: deduplicated, sorted by path."""
    found: dict[tuple[str, str], None] = {}
    for error in errors:
        for problem in _explain(error):
            found[problem] = None
    return sorted(found, key=lambda problem: (problem[0].casefold(), problem))


def _explain(error: ValidationError) -> Iterator[tuple[str, str]]:
    keyword = str(error.validator)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    custom = _custom_message(schema, keyword)
    path = list(error.absolute_path)
    instance = error.instance
    expected: Any = error.validator_value

    if keyword == "required":
        # One problem per missing field, so that each lands on its own path.
        if isinstance(instance, Mapping):
            for name in expected:
                if name not in instance:
                    yield _json_path([*path, name]), custom or "required field is missing"
        return
    if keyword == "additionalProperties" and isinstance(instance, Mapping):
        known = list(schema.get("properties", {}))
        for key in _unknown_keys(instance, schema):
            yield _json_path([*path, key]), _unknown_field_reason(key, known)
        return
    if custom is None and keyword in ("anyOf", "oneOf") and error.context:
        # The branch whose type fitted the value says more than "matched none of the alternatives".
        fitted = [branch_error for branch_error in error.context if branch_error.validator != "type"]
        if fitted:
            yield from _explain(best_match(fitted))
            return
        # No branch took the value's type: name every type that would have done.
        types: list[str] = []
        for branch_error in error.context:
            expected_types: Any = branch_error.validator_value
            for kind in [expected_types] if isinstance(expected_types, str) else expected_types:
                if kind not in types:
                    types.append(kind)
        reason = f"must be {_either(_TYPE_PHRASES.get(kind, kind) for kind in types)}, got {_show(instance)}"
        yield _json_path(path), reason
        return

    reason = custom.replace("{value}", _show(instance)) if custom is not None else _generic_reason(error)
    if keyword == "type" and instance is None and path:
        reason += "; leave the field out rather than sending null"
    yield _json_path(path), reason


def _custom_message(schema: Mapping[str, Any], keyword: str) -> str | None:
    messages = schema.get("errorMessage")
    if isinstance(messages, Mapping):
        message = messages.get(keyword)
        if isinstance(message, str):
            return message
    return None


def _generic_reason(error: ValidationError) -> str:
    """Word an error from its keyword, for schema locations without their own ``errorMessage``."""
    keyword = error.validator
    expected: Any = error.validator_value
    shown = _show(error.instance)
    if keyword == "type":
        if isinstance(error.instance, (float, Decimal)) and "number" in expected:
            return f"must be a finite number, got {shown}"
        types = [expected] if isinstance(expected, str) else list(expected)
        return f"must be {_either(_TYPE_PHRASES.get(kind, kind) for kind in types)}, got {shown}"
    if keyword == "enum":
        return f"must be {_either(repr(choice) for choice in expected)}, got {shown}"
    if keyword == "const":
        return f"must be {expected!r}, got {shown}"
    if keyword == "format":
        return f"must be a valid {expected}, got {shown}"
    if keyword == "minimum":
        return f"must be at least {expected}, got {shown}"
    if keyword == "maximum":
        return f"must be at most {expected}, got {shown}"
    if keyword == "exclusiveMinimum":
        return f"must be more than {expected}, got {shown}"
    if keyword == "exclusiveMaximum":
        return f"must be less than {expected}, got {shown}"
    if keyword == "minLength":
        if expected == 1:
            return f"must not be empty, got {shown}"
        return f"must be at least {expected} characters long, got {shown}"
    if keyword == "maxLength":
        return f"must be at most {expected} characters long, got {shown}"
    if keyword == "pattern":
        return f"must match the pattern {expected!r}, got {shown}"
    if keyword == "minProperties":
        return f"must have at least {expected} field(s)"
    message = str(error.message)
    return message if len(message) <= 200 else message[:197] + "..."


def _unknown_keys(instance: Mapping[Any, Any], schema: Mapping[str, Any]) -> list[Any]:
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return [
        key
        for key in instance
        if key not in properties and not any(re.search(pattern, str(key)) for pattern in patterns)
    ]


def _unknown_field_reason(key: object, known: Iterable[str]) -> str:
    suggestion = _closest_name(str(key), known)
    if suggestion is None:
        return "unknown field"
    return f"unknown field; did you mean `{suggestion}`?"


def _closest_name(key: str, known: Iterable[str]) -> str | None:
    """The known field name closest to ``key``, ignoring case (``stageID`` finds ``stageId``)."""
    by_lower = {name.lower(): name for name in known}
    matches = difflib.get_close_matches(key.lower(), list(by_lower), n=1)
    return by_lower[matches[0]] if matches else None


def _either(choices: Iterable[str]) -> str:
    items = list(choices)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} or {items[-1]}"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _json_path(parts: Iterable[Any]) -> str:
    """``$`` for the root, ``$.closedDate`` for a field, ``$.items[0]``, ``$['odd key']``."""
    path = "$"
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            path += f"[{part}]"
        elif isinstance(part, str) and _IDENTIFIER.fullmatch(part):
            path += f".{part}"
        else:
            path += f"[{_show(str(part))}]"
    return path
