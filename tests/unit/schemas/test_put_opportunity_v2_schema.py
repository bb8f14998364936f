"""The flat v2 put-request schema and its split into route, query and body."""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any

import pytest

from airflow_opportunity_provider.errors import PayloadValidationError
from airflow_opportunity_provider.schemas import V2_BODY_FIELDS, split_put_request, validate_put_request

SEED_PRE_BODY = {
    "OpportunityName": "Updated Product Launch",
    "CategoryName": "New Business",
    "StageName": "Qualified",
    "AcctPotential": 200000.00,
    "SalesRevenue": 100000.00,
    "PendingCloseDate": "2024-12-31",
}
SEED_PRE = {"Id": 123, "opportunityType": "Pre", **SEED_PRE_BODY}
SEED_POST = {
    "Id": 456,
    "opportunityType": "Post",
    "LanguageId": 1,
    "StageName": "Closed Won",
    "SalesRevenue": 150000.00,
}
ROUTE = {"Id": 123, "opportunityType": "Pre"}

EMPTY_BODY = (
    "an update needs at least one body field (OpportunityName, OpportunityID, CategoryName, StageName, "
    "AcctPotential, SalesRevenue, PendingCloseDate); without one it changes nothing"
)
NOT_AN_INTEGER = "must be an integer or a string of digits, got {}"
NOT_A_DATE = "must be a real date as yyyy-MM-dd, MM/dd/yyyy or dd/MM/yyyy, got {}"
NULL_HINT = "; leave the field out rather than sending null"


def problems_of(document: Any) -> list[tuple[str, str]]:
    with pytest.raises(PayloadValidationError) as raised:
        validate_put_request(document)
    assert raised.value.schema_name == "put_opportunity_v2"
    return raised.value.problems


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(SEED_PRE, id="seed-pre"),
        pytest.param(SEED_POST, id="seed-post"),
        pytest.param({**ROUTE, "Id": "123", "LanguageId": "2", "StageName": "Won"}, id="route-as-digits"),
        pytest.param({**ROUTE, "OpportunityID": "OPP-2024-001"}, id="crm-id-alone"),
    ],
)
def test_valid_documents_pass(document: dict[str, Any]) -> None:
    assert validate_put_request(document) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("OpportunityName", "Launch"),
        ("OpportunityID", "OPP-1"),
        ("CategoryName", "New Business"),
        ("StageName", "Qualified"),
        ("AcctPotential", 0),
        ("SalesRevenue", 1.5),
        ("PendingCloseDate", "2024-12-31"),
    ],
)
def test_any_one_body_field_is_enough(field: str, value: Any) -> None:
    assert validate_put_request({**ROUTE, field: value}) is None


def test_the_body_fields_are_the_documented_seven() -> None:
    assert {
        "OpportunityName",
        "OpportunityID",
        "CategoryName",
        "StageName",
        "AcctPotential",
        "SalesRevenue",
        "PendingCloseDate",
    } == V2_BODY_FIELDS


@pytest.mark.parametrize("document", [ROUTE, {**ROUTE, "LanguageId": 1}])
def test_an_empty_body_is_refused_because_it_changes_nothing(document: dict[str, Any]) -> None:
    assert problems_of(document) == [("$", EMPTY_BODY)]


@pytest.mark.parametrize("missing", ["Id", "opportunityType"])
def test_route_and_type_are_required(missing: str) -> None:
    document = {key: value for key, value in SEED_POST.items() if key != missing}

    assert problems_of(document) == [(f"$.{missing}", "required field is missing")]


@pytest.mark.parametrize("value", ["pre", "PRE", "post", "Pre ", "", "Other", 1, None])
def test_opportunity_type_is_exactly_pre_or_post(value: Any) -> None:
    assert problems_of({**SEED_POST, "opportunityType": value}) == [
        ("$.opportunityType", f"must be 'Pre' or 'Post', got {value!r}")
    ]


@pytest.mark.parametrize("field", ["Id", "LanguageId"])
@pytest.mark.parametrize("value", [1, 456, "1", "456"])
def test_id_and_language_take_an_integer_or_digits(field: str, value: Any) -> None:
    assert validate_put_request({**SEED_POST, field: value}) is None


@pytest.mark.parametrize("field", ["Id", "LanguageId"])
@pytest.mark.parametrize("value", [0, -1, "0"])
def test_id_and_language_are_at_least_one(field: str, value: Any) -> None:
    assert problems_of({**SEED_POST, field: value}) == [(f"$.{field}", f"must be at least 1, got {value!r}")]


@pytest.mark.parametrize("field", ["Id", "LanguageId"])
@pytest.mark.parametrize("value", [True, 1.0, "12.5", "abc", "{{ ti.xcom_pull() }}", "", None])
def test_id_and_language_refuse_anything_else(field: str, value: Any) -> None:
    reason = NOT_AN_INTEGER.format(repr(value)) + (NULL_HINT if value is None else "")

    assert problems_of({**SEED_POST, field: value}) == [(f"$.{field}", reason)]


@pytest.mark.parametrize("field", ["AcctPotential", "SalesRevenue"])
@pytest.mark.parametrize(
    "value",
    [0, 150000, 150000.0, -5.25, Decimal("150000.00"), Decimal("0.1"), Decimal("-1E+3"), 10**20],
)
def test_amounts_take_any_finite_number_decimal_included(field: str, value: Any) -> None:
    assert validate_put_request({**ROUTE, field: value}) is None


@pytest.mark.parametrize("field", ["AcctPotential", "SalesRevenue"])
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("150000", "must be a number, got '150000'"),
        (True, "must be a number, got True"),
        (None, "must be a number, got None" + NULL_HINT),
        ([1], "must be a number, got [1]"),
        (1j, "must be a number, got 1j"),
        (float("nan"), "must be a finite number, got nan"),
        (float("inf"), "must be a finite number, got inf"),
        (Decimal("NaN"), "must be a finite number, got Decimal('NaN')"),
        (Decimal("-Infinity"), "must be a finite number, got Decimal('-Infinity')"),
    ],
)
def test_amounts_refuse_anything_else(field: str, value: Any, reason: str) -> None:
    assert problems_of({**ROUTE, field: value}) == [(f"$.{field}", reason)]


@pytest.mark.parametrize("field", ["OpportunityName", "OpportunityID", "CategoryName", "StageName"])
@pytest.mark.parametrize(
    ("value", "reason"), [(5, "must be a string, got 5"), (None, "must be a string, got None" + NULL_HINT)]
)
def test_text_fields_must_be_strings(field: str, value: Any, reason: str) -> None:
    assert problems_of({**SEED_PRE, field: value}) == [(f"$.{field}", reason)]


@pytest.mark.parametrize(
    "value",
    [
        "2024-12-31",
        "2024-02-29",
        "12/31/2024",
        "31/12/2024",
        "03/04/2024",
        "02/29/2024",
        datetime.date(2024, 12, 31),
        datetime.datetime(2024, 12, 31, 8, 30),
    ],
)
def test_pending_close_date_takes_each_documented_form_of_a_real_date(value: Any) -> None:
    assert validate_put_request({**ROUTE, "PendingCloseDate": value}) is None


@pytest.mark.parametrize(
    "value",
    [
        "2024-02-30",
        "2023-02-29",
        "13/13/2024",
        "31/31/2024",
        "02/30/2024",
        "00/12/2024",
        "2024/12/31",
        "12-31-2024",
        "1/2/2024",
        "12/31/24",
        "2024-12-31T00:00:00",
        "2024-12-31\n",
        "",
        20241231,
    ],
)
def test_pending_close_date_refuses_anything_else(value: Any) -> None:
    assert problems_of({**ROUTE, "PendingCloseDate": value}) == [
        ("$.PendingCloseDate", NOT_A_DATE.format(repr(value)))
    ]


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("opportunityname", "unknown field; did you mean `OpportunityName`?"),
        ("OpportunityId", "unknown field; did you mean `OpportunityID`?"),
        ("id", "unknown field; did you mean `Id`?"),
        ("languageId", "unknown field; did you mean `LanguageId`?"),
        ("Stage", "unknown field; did you mean `StageName`?"),
        ("Colour", "unknown field"),
    ],
)
def test_unknown_keys_are_refused_with_the_closest_known_name(key: str, reason: str) -> None:
    assert problems_of({**SEED_POST, key: "x"}) == [(f"$.{key}", reason)]


def test_a_misspelled_body_field_is_named_as_well_as_the_empty_body() -> None:
    assert problems_of({**ROUTE, "stagename": "Won"}) == [
        ("$", EMPTY_BODY),
        ("$.stagename", "unknown field; did you mean `StageName`?"),
    ]


@pytest.mark.parametrize(
    ("document", "shown"),
    [
        ("Id=123", "'Id=123'"),
        (None, "None"),
        ([SEED_POST], "[{'Id': 456, 'opportunityType': 'Post', 'LanguageId': 1, ..."),
    ],
)
def test_a_document_must_be_an_object(document: Any, shown: str) -> None:
    assert problems_of(document) == [("$", f"must be an object, got {shown}")]


def test_every_problem_is_reported_at_once_sorted_by_path() -> None:
    document = {
        "Id": 0,
        "opportunityType": "pre",
        "LanguageId": "x",
        "AcctPotential": "lots",
        "PendingCloseDate": "2024-02-30",
        "Stagename": "Won",
    }

    assert problems_of(document) == [
        ("$.AcctPotential", "must be a number, got 'lots'"),
        ("$.Id", "must be at least 1, got 0"),
        ("$.LanguageId", NOT_AN_INTEGER.format("'x'")),
        ("$.opportunityType", "must be 'Pre' or 'Post', got 'pre'"),
        ("$.PendingCloseDate", NOT_A_DATE.format("'2024-02-30'")),
        ("$.Stagename", "unknown field; did you mean `StageName`?"),
    ]


def test_split_the_seed_pre_example() -> None:
    assert split_put_request(SEED_PRE) == (123, "Pre", None, SEED_PRE_BODY)


def test_split_the_seed_post_example() -> None:
    assert split_put_request(SEED_POST) == (
        456,
        "Post",
        1,
        {"StageName": "Closed Won", "SalesRevenue": 150000.00},
    )


def test_split_turns_rendered_digits_into_integers() -> None:
    opportunity_id, opportunity_type, language_id, body = split_put_request(
        {"Id": "123", "opportunityType": "Post", "LanguageId": "2", "StageName": "Won"}
    )

    assert (opportunity_id, opportunity_type, language_id, body) == (123, "Post", 2, {"StageName": "Won"})
    assert type(opportunity_id) is int
    assert type(language_id) is int


def test_split_keeps_decimals_and_sends_a_date_as_yyyy_mm_dd() -> None:
    revenue = Decimal("150000.10")
    document = {**ROUTE, "SalesRevenue": revenue, "PendingCloseDate": datetime.datetime(2024, 2, 29, 17, 0)}

    _, _, _, body = split_put_request(document)

    assert body == {"SalesRevenue": revenue, "PendingCloseDate": "2024-02-29"}
    assert body["SalesRevenue"] is revenue
    assert document["PendingCloseDate"] == datetime.datetime(2024, 2, 29, 17, 0)


def test_split_returns_a_new_body() -> None:
    document = dict(SEED_POST)

    _, _, _, body = split_put_request(document)
    body["StageName"] = "Lost"

    assert document["StageName"] == "Closed Won"


def test_split_refuses_an_invalid_document() -> None:
    with pytest.raises(PayloadValidationError) as raised:
        split_put_request({"Id": "abc", "opportunityType": "Pre"})

    assert raised.value.problems == [("$", EMPTY_BODY), ("$.Id", NOT_AN_INTEGER.format("'abc'"))]
