"""The compiled fast check must agree with jsonschema on every document, or fall back to it."""

from __future__ import annotations

import datetime
import random
from decimal import Decimal
from typing import Any

import pytest

from airflow_opportunity_provider.schemas import (
    ADD_OR_UPDATE_OPPORTUNITY,
    PUT_OPPORTUNITY_V2,
    get_validator,
    validate_add_or_update_payload,
    validation,
)
from airflow_opportunity_provider.schemas.fast_check import compile_check, is_integer, is_number

IDS = [1, 42, "7", "0042", 10**12, 0, -1, "0", "000", True, False, 5.0, "abc", "12\n", " 1", "", None, [1]]
TEXT = ["Lead", "", "   ", 5, None, {"a": 1}]
OBJECTS = [{}, {"name": "Acme"}, "Acme", None, [1]]
V1_POOLS: dict[str, list[Any]] = {
    **{
        field: IDS
        for field in (
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
            "companyLeadContactId",
            "contactId",
            "ownerUserId",
            "typeId",
            "stageId",
            "stageReasonId",
            "referralContactId",
        )
    },
    "channelId": ["web", 3, 1.5, None, True],
    "closedDate": ["2017-05-05", "2024-02-29", "2023-02-30", "2017/05/05", "2017-05-05\n", 20170505, ""],
    "name": TEXT,
    "description": TEXT,
    "company": OBJECTS,
    "contact": OBJECTS,
    "referralContact": OBJECTS,
    **{name: TEXT for name in ("utmSource", "utmMedium", "utmCampaign", "utmTerm", "utmContent")},
    "externalUrls": [
        None,
        [],
        [{"ref": "a"}],
        [{"ref": "a", "url": "https://a", "label": "A"}, {"ref": "b", "url": None}],
        [{"ref": "a"}, {"ref": "b"}, {"ref": "c"}],
        [{"ref": "a"}, {"ref": "b"}, {"ref": "c"}, {"ref": "d"}],
        [{"ref": ""}],
        [{"ref": "r" * 256}],
        [{"url": "https://a"}],
        [{"ref": "a", "url": "http://a"}],
        [{"ref": "a", "label": None}],
        [{"ref": "a", "label": "l" * 256}],
        [{"ref": "a", "href": "https://a"}],
        ["https://a"],
        {"ref": "a"},
        "https://a",
    ],
    "stageID": [1],
    "colour": ["red"],
}
V1_BASES = [
    {"venueId": 107, "name": "Lead", "contactId": 918, "typeId": 18, "sourceId": 25, "stageId": 69},
    {
        "venueId": "107",
        "name": "Lead",
        "companyId": "5",
        "companyLeadContactId": "6",
        "typeId": 1,
        "sourceId": 2,
        "stageId": 3,
    },
    {"id": 755, "venueId": "107", "name": "Updated Name"},
]
AMOUNTS = [0, 1.5, Decimal("10.25"), Decimal("NaN"), float("inf"), True, "100", None]
V2_POOLS: dict[str, list[Any]] = {
    "Id": IDS,
    "LanguageId": IDS,
    "opportunityType": ["Pre", "Post", "pre", "", None, 1],
    "OpportunityName": TEXT,
    "OpportunityID": TEXT,
    "CategoryName": TEXT,
    "StageName": TEXT,
    "AcctPotential": AMOUNTS,
    "SalesRevenue": AMOUNTS,
    "PendingCloseDate": ["2024-12-31", "12/31/2024", "31/12/2024", "2024-02-30", "31/31/2024", "1/2/2024", 5],
    "stagename": ["Won"],
}
V2_BASES = [
    {"Id": 123, "opportunityType": "Pre", "OpportunityName": "Launch", "SalesRevenue": 100000.0},
    {"Id": "456", "opportunityType": "Post", "LanguageId": 1, "StageName": "Closed Won"},
]


def mutated_documents(bases: list[dict[str, Any]], pools: dict[str, list[Any]], count: int) -> list[Any]:
    """Valid documents with zero to three random changes each: a new value, a dropped key, a typo."""
    chooser = random.Random(20240101)
    documents: list[Any] = [[], "not a document", None]
    for _ in range(count):
        document = dict(chooser.choice(bases))
        for _ in range(chooser.choice([0, 0, 1, 1, 2, 3])):
            field = chooser.choice(list(pools))
            if field in document and chooser.random() < 0.3:
                del document[field]
            else:
                document[field] = chooser.choice(pools[field])
        documents.append(document)
    return documents


@pytest.mark.parametrize(
    ("name", "documents"),
    [
        (ADD_OR_UPDATE_OPPORTUNITY, mutated_documents(V1_BASES, V1_POOLS, 3000)),
        (PUT_OPPORTUNITY_V2, mutated_documents(V2_BASES, V2_POOLS, 3000)),
    ],
)
def test_fast_check_agrees_with_jsonschema(name: str, documents: list[Any]) -> None:
    fast = validation._fast_check(name)
    validator = get_validator(name)

    disagreements = [document for document in documents if fast(document) != validator.is_valid(document)]
    valid = sum(1 for document in documents if validator.is_valid(document))

    assert disagreements == []
    # Both answers must be common, or the comparison proves little.
    assert 500 < valid < len(documents) - 500


EXTERNAL_URL_ENTRIES: list[Any] = [
    {"ref": "a"},
    {"ref": "b", "url": "https://b.example.com/1", "label": "B"},
    {"ref": "c", "url": None},
    {"ref": "d", "label": ""},
    {"ref": ""},
    {"ref": "r" * 255},
    {"ref": "r" * 256},
    {"ref": 1},
    {"url": "https://x"},
    {"ref": "e", "url": "http://e"},
    {"ref": "e", "url": "HTTPS://e"},
    {"ref": "e", "url": 5},
    {"ref": "f", "label": None},
    {"ref": "f", "label": "l" * 256},
    {"ref": "g", "extra": 1},
    "https://x",
    None,
    [],
]


def test_fast_check_agrees_with_jsonschema_on_external_urls() -> None:
    chooser = random.Random(7)
    fast = validation._fast_check(ADD_OR_UPDATE_OPPORTUNITY)
    validator = get_validator(ADD_OR_UPDATE_OPPORTUNITY)
    documents = [
        {
            **chooser.choice(V1_BASES),
            "externalUrls": chooser.sample(EXTERNAL_URL_ENTRIES, chooser.randrange(5)),
        }
        for _ in range(2000)
    ]

    disagreements = [document for document in documents if fast(document) != validator.is_valid(document)]
    valid = sum(1 for document in documents if validator.is_valid(document))

    assert disagreements == []
    assert 300 < valid < len(documents) - 300


def _jsonschema_answer(schema: Any, instance: Any) -> bool:
    validator = validation._OpportunityValidator(schema, format_checker=validation._FORMAT_CHECKER)
    return bool(validator.is_valid(instance))


KEYWORD_CASES = [
    ({"type": "integer"}, [1, True, 1.0, "1", None]),
    ({"type": ["string", "null"]}, ["a", None, 1]),
    ({"type": "number", "minimum": 2}, [2, 1, Decimal("1.9"), float("nan"), "1"]),
    ({"type": "array"}, [[], (), {}]),
    ({"type": "boolean"}, [True, 0]),
    ({"minimum": 2}, [1, "1", None, True]),
    ({"minLength": 2}, ["ab", "a", 5]),
    ({"maxLength": 2}, ["ab", "abc", "", 500]),
    ({"maxLength": 1}, ["\N{SNOWMAN}", "\N{SNOWMAN}\N{SNOWMAN}"]),
    ({"items": {"type": "integer"}}, [[], [1, 2], [1, "2"], "12", {"a": "b"}]),
    ({"items": False}, [[], [1]]),
    ({"maxItems": 2}, [[], [1, 2], [1, 2, 3], "abc", {"a": 1, "b": 2, "c": 3}]),
    (
        {"type": ["array", "null"], "maxItems": 1, "items": {"required": ["ref"]}},
        [None, [], [{"ref": 1}], [{}], [{"ref": 1}, {"ref": 2}], 5],
    ),
    ({"pattern": "^a"}, ["abc", "bac", 1]),
    ({"enum": ["x", "y"]}, ["x", "z", 1, None]),
    ({"format": "date"}, ["2024-02-29", "2023-02-29", 5]),
    ({"format": "pending-close-date"}, ["31/12/2024", "12/31/2024", "31/31/2024", 5]),
    ({"format": "no-such-format"}, ["anything"]),
    ({"required": ["a"]}, [{"a": 1}, {}, [], "a"]),
    ({"properties": {"a": {"type": "string"}}}, [{"a": "x"}, {"a": 1}, {"b": 1}, 5]),
    ({"properties": {"a": {}}, "additionalProperties": False}, [{"a": 1}, {"b": 1}, []]),
    ({"additionalProperties": {"type": "integer"}}, [{"a": 1}, {"a": "1"}]),
    ({"anyOf": [{"type": "string"}, {"minimum": 5}]}, ["a", 6, 4]),
    ({"not": {"type": "string"}}, ["a", 1]),
    ({"if": {"required": ["a"]}, "then": {"required": ["b"]}}, [{"a": 1}, {"a": 1, "b": 2}, {}]),
    ({"if": {"required": ["a"]}, "else": {"required": ["b"]}}, [{"a": 1}, {}, {"b": 1}]),
    ({"then": False}, [1]),
    (
        {"$defs": {"n": {"type": "integer"}}, "properties": {"a": {"$ref": "#/$defs/n"}}},
        [{"a": 1}, {"a": "1"}],
    ),
    ({"$defs": {"a~b/c": {"type": "integer"}}, "$ref": "#/$defs/a~0b~1c"}, [1, "1"]),
    (True, [1, None]),
    (False, [1, None]),
    ({"title": "annotations only", "description": "x", "$comment": "y", "errorMessage": {}}, [1]),
]


@pytest.mark.parametrize(("schema", "instances"), KEYWORD_CASES)
def test_each_keyword_compiles_to_what_jsonschema_decides(schema: Any, instances: list[Any]) -> None:
    check = compile_check(schema, format_checker=validation._FORMAT_CHECKER)

    assert check is not None
    assert [check(instance) for instance in instances] == [
        _jsonschema_answer(schema, instance) for instance in instances
    ]


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param({"oneOf": [{"type": "string"}]}, id="unknown-keyword"),
        pytest.param({"properties": {"a": {"multipleOf": 3}}}, id="unknown-keyword-nested"),
        pytest.param({"prefixItems": [{"type": "string"}], "items": False}, id="prefix-items"),
        pytest.param({"items": {"uniqueItems": True}}, id="unknown-keyword-in-items"),
        pytest.param(
            {"patternProperties": {"^x": {}}, "additionalProperties": False}, id="pattern-properties"
        ),
        pytest.param({"enum": [1, True]}, id="enum-of-non-strings"),
        pytest.param({"$ref": "https://example.com/schema.json"}, id="remote-ref"),
        pytest.param({"$ref": "#/$defs/missing"}, id="dangling-ref"),
        pytest.param({"properties": {"a": {"$ref": "#"}}}, id="recursive-ref"),
        pytest.param({"$ref": "#anchor"}, id="anchor-ref"),
        pytest.param({"properties": {"a": {"$id": "other.json"}}}, id="nested-id"),
        pytest.param({"type": "decimal"}, id="unknown-type"),
        pytest.param(["not", "a", "schema"], id="not-a-schema"),
    ],
)
def test_anything_else_falls_back_to_jsonschema(schema: Any) -> None:
    assert compile_check(schema, format_checker=validation._FORMAT_CHECKER) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, True), (10**30, True), (0, True), (True, False), (1.0, False), (Decimal("1"), False), ("1", False)],
)
def test_what_counts_as_an_integer(value: Any, expected: bool) -> None:
    assert is_integer(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, True),
        (10**400, True),
        (1.5, True),
        (Decimal("1.5"), True),
        (True, False),
        (float("nan"), False),
        (float("-inf"), False),
        (Decimal("sNaN"), False),
        (Decimal("Infinity"), False),
        (1j, False),
        ("1", False),
        (None, False),
    ],
)
def test_what_counts_as_a_number(value: Any, expected: bool) -> None:
    assert is_number(value) is expected


def test_jsonschema_has_the_last_word_on_a_valid_payload(monkeypatch: pytest.MonkeyPatch) -> None:
    # Should the fast check ever refuse a payload jsonschema accepts, the payload still passes.
    monkeypatch.setattr(validation, "_fast_check", lambda name: lambda document: False)

    assert (
        validate_add_or_update_payload({"id": 1, "venueId": 1, "closedDate": datetime.date(2024, 1, 1)})
        is None
    )
