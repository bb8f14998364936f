"""The v1 addOrUpdateOpportunity schema: every rule both ways, with the path and sentence a user sees."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest

from airflow_opportunity_provider.errors import OpportunityError, PayloadValidationError
from airflow_opportunity_provider.schemas import validate_add_or_update_payload

SEED_ADD = {
    "venueId": "107",
    "name": "Lead By API",
    "contactId": "918",
    "typeId": "18",
    "sourceId": "25",
    "stageId": "69",
    "industryId": "77",
    "stageReasonId": "127",
    "closedDate": "2017-05-05",
}
SEED_UPDATE = {"id": 755, "venueId": "107", "name": "Updated Name"}
CREATE = {"venueId": 107, "name": "Lead", "contactId": 918, "typeId": 18, "sourceId": 25, "stageId": 69}
UPDATE = {"id": 755, "venueId": 107}

CREATE_REQUIRED = "required when creating (no `id`)"
CONTACT_OR_COMPANY = "a new opportunity needs `contactId`, or `companyId` with `companyLeadContactId`"
NOT_AN_INTEGER = "must be an integer or a string of digits, got {}"
NOT_A_DATE = "must be a real date in YYYY-MM-DD form, got {}"
NOT_A_NAME = "must be a non-empty string, got {}"


def problems_of(payload: Any) -> list[tuple[str, str]]:
    with pytest.raises(PayloadValidationError) as raised:
        validate_add_or_update_payload(payload)
    assert raised.value.schema_name == "add_or_update_opportunity"
    return raised.value.problems


def without(payload: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in payload.items() if key not in keys}


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(SEED_ADD, id="seed-add"),
        pytest.param(SEED_UPDATE, id="seed-update"),
        pytest.param(without(SEED_ADD, "industryId"), id="create-without-industry"),
        pytest.param(
            {**without(CREATE, "contactId"), "companyId": 5, "companyLeadContactId": "6"},
            id="create-for-a-company",
        ),
        pytest.param({**CREATE, "companyId": 5, "companyLeadContactId": 6}, id="create-with-both-owners"),
        pytest.param(UPDATE, id="update-with-only-id-and-venue"),
        pytest.param({**UPDATE, "id": "755"}, id="update-id-as-digits"),
        pytest.param({**UPDATE, "companyId": 5}, id="update-company-without-lead-contact"),
        pytest.param(MappingProxyType(dict(SEED_UPDATE)), id="any-mapping"),
    ],
)
def test_valid_payloads_pass(payload: Mapping[str, Any]) -> None:
    assert validate_add_or_update_payload(payload) is None


INTEGER_FIELDS = [
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
]


@pytest.mark.parametrize("field", INTEGER_FIELDS)
@pytest.mark.parametrize("value", [1, 42, "1", "42", "0042", 10**12])
def test_integer_fields_take_an_integer_or_a_string_of_digits(field: str, value: Any) -> None:
    assert validate_add_or_update_payload({**UPDATE, field: value}) is None


@pytest.mark.parametrize("field", INTEGER_FIELDS)
@pytest.mark.parametrize(
    "value",
    [True, False, 5.0, 1.5, "abc", "12a", "1.5", "-5", "+5", " 12", "12 ", "12\n", "", None, [1], {"id": 1}],
)
def test_integer_fields_refuse_anything_else(field: str, value: Any) -> None:
    reason = NOT_AN_INTEGER.format(repr(value))
    if value is None:
        reason += "; leave the field out rather than sending null"

    assert problems_of({**UPDATE, field: value}) == [(f"$.{field}", reason)]


@pytest.mark.parametrize("field", sorted(set(INTEGER_FIELDS) - {"confirmedQuoteStatus"}))
@pytest.mark.parametrize("value", [0, -1, "0", "000"])
def test_ids_are_at_least_one(field: str, value: Any) -> None:
    assert problems_of({**UPDATE, field: value}) == [(f"$.{field}", f"must be at least 1, got {value!r}")]


@pytest.mark.parametrize("value", [0, "0", "000"])
def test_confirmed_quote_status_may_be_zero(value: Any) -> None:
    assert validate_add_or_update_payload({**UPDATE, "confirmedQuoteStatus": value}) is None


def test_confirmed_quote_status_is_not_negative() -> None:
    assert problems_of({**UPDATE, "confirmedQuoteStatus": -1}) == [
        ("$.confirmedQuoteStatus", "must be 0 or more, got -1")
    ]


def test_venue_id_is_always_required() -> None:
    assert problems_of({"id": 755, "name": "Updated Name"}) == [("$.venueId", "required field is missing")]


@pytest.mark.parametrize("missing", ["name", "typeId", "stageId", "sourceId"])
def test_a_create_needs_each_create_field(missing: str) -> None:
    assert problems_of(without(CREATE, missing)) == [(f"$.{missing}", CREATE_REQUIRED)]


def test_a_create_names_every_missing_field_at_once() -> None:
    assert problems_of({"venueId": 1, "contactId": 2}) == [
        ("$.name", CREATE_REQUIRED),
        ("$.sourceId", CREATE_REQUIRED),
        ("$.stageId", CREATE_REQUIRED),
        ("$.typeId", CREATE_REQUIRED),
    ]


@pytest.mark.parametrize(
    "owner",
    [
        pytest.param({}, id="neither"),
        pytest.param({"companyId": 5}, id="company-without-lead-contact"),
        pytest.param({"companyLeadContactId": 6}, id="lead-contact-without-company"),
    ],
)
def test_a_create_needs_a_contact_or_a_company_with_its_lead_contact(owner: dict[str, Any]) -> None:
    assert problems_of({**without(CREATE, "contactId"), **owner}) == [("$", CONTACT_OR_COMPANY)]


def test_an_update_does_not_need_the_create_fields() -> None:
    assert validate_add_or_update_payload({"id": 1, "venueId": 1, "description": "x"}) is None


def test_industry_id_is_optional_for_a_contacts_new_opportunity() -> None:
    assert "industryId" not in CREATE
    assert validate_add_or_update_payload(CREATE) is None


@pytest.mark.parametrize(
    "value",
    [
        "2017-05-05",
        "2024-02-29",
        datetime.date(2023, 2, 28),
        datetime.datetime(2023, 2, 28, 23, 59),
        datetime.datetime(2023, 2, 28, tzinfo=datetime.UTC),
    ],
)
def test_closed_date_takes_a_real_date(value: Any) -> None:
    assert validate_add_or_update_payload({**UPDATE, "closedDate": value}) is None


@pytest.mark.parametrize(
    "value",
    [
        "2023-02-30",
        "2023-02-29",
        "2023-13-01",
        "2023-00-10",
        "2017/05/05",
        "05/05/2017",
        "2017-5-5",
        "20170505",
        "2017-05-05T00:00:00",
        "2017-05-05\n",
        "",
        20170505,
        datetime.time(12, 0),
    ],
)
def test_closed_date_refuses_anything_else(value: Any) -> None:
    assert problems_of({**UPDATE, "closedDate": value}) == [("$.closedDate", NOT_A_DATE.format(repr(value)))]


def test_a_date_object_is_checked_on_a_copy() -> None:
    payload = {**UPDATE, "closedDate": datetime.date(2023, 2, 28)}

    validate_add_or_update_payload(payload)

    assert payload["closedDate"] == datetime.date(2023, 2, 28)


@pytest.mark.parametrize("value", ["", "   ", "\t\n", 5, None])
def test_name_must_be_a_non_empty_string(value: Any) -> None:
    reason = NOT_A_NAME.format(repr(value))
    if value is None:
        reason += "; leave the field out rather than sending null"

    assert problems_of({**UPDATE, "name": value}) == [("$.name", reason)]


@pytest.mark.parametrize("value", ["", "Anything at all"])
def test_description_is_any_string(value: str) -> None:
    assert validate_add_or_update_payload({**UPDATE, "description": value}) is None


def test_description_must_be_a_string() -> None:
    assert problems_of({**UPDATE, "description": 5}) == [("$.description", "must be a string, got 5")]


@pytest.mark.parametrize("value", ["3", "web", 3])
def test_channel_id_takes_a_string_or_an_integer(value: Any) -> None:
    assert validate_add_or_update_payload({**UPDATE, "channelId": value}) is None


@pytest.mark.parametrize("value", [1.5, True, None, ["web"]])
def test_channel_id_refuses_anything_else(value: Any) -> None:
    reason = f"must be a string or an integer, got {value!r}"
    if value is None:
        reason += "; leave the field out rather than sending null"

    assert problems_of({**UPDATE, "channelId": value}) == [("$.channelId", reason)]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("company", {"name": "Acme", "phone": "555"}),
        ("contact", {"firstName": "Ada", "email": "ada@example.com"}),
        ("referralContact", {"firstName": "Bob"}),
        ("referralContactId", "12"),
        ("utmSource", "newsletter"),
        ("utmMedium", "email"),
        ("utmCampaign", "spring"),
        ("utmTerm", "venues"),
        ("utmContent", "banner"),
    ],
)
def test_the_vendors_newer_fields_are_accepted(field: str, value: Any) -> None:
    assert validate_add_or_update_payload({**CREATE, field: value}) is None


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("company", "Acme", "must be an object, got 'Acme'"),
        ("contact", ["Ada"], "must be an object, got ['Ada']"),
        ("referralContact", 5, "must be an object, got 5"),
        ("utmSource", 5, "must be a string, got 5"),
        ("utmContent", {"a": 1}, "must be a string, got {'a': 1}"),
    ],
)
def test_the_vendors_newer_fields_are_checked(field: str, value: Any, reason: str) -> None:
    assert problems_of({**UPDATE, field: value}) == [(f"$.{field}", reason)]


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("stageID", "unknown field; did you mean `stageId`?"),
        ("StageId", "unknown field; did you mean `stageId`?"),
        ("venue_id", "unknown field; did you mean `venueId`?"),
        ("closeDate", "unknown field; did you mean `closedDate`?"),
        ("Name", "unknown field; did you mean `name`?"),
        ("utm_source", "unknown field; did you mean `utmSource`?"),
        ("colour", "unknown field"),
        ("OpportunityName", "unknown field"),
    ],
)
def test_unknown_keys_are_refused_with_the_closest_known_name(key: str, reason: str) -> None:
    assert problems_of({**UPDATE, key: 1}) == [(f"$.{key}", reason)]


def test_an_odd_unknown_key_gets_a_bracketed_path() -> None:
    assert problems_of({**UPDATE, "venue id": 1}) == [
        ("$['venue id']", "unknown field; did you mean `venueId`?")
    ]


@pytest.mark.parametrize("payload", [["venueId", 1], "venueId=1", None, 107])
def test_a_payload_must_be_an_object(payload: Any) -> None:
    assert problems_of(payload) == [("$", f"must be an object, got {payload!r}")]


def test_every_problem_is_reported_at_once_sorted_by_path() -> None:
    payload = {
        "name": "",
        "typeId": "abc",
        "closedDate": "2023-02-30",
        "stageID": 69,
        "companyId": True,
        "qualityId": 0,
    }

    assert problems_of(payload) == [
        ("$", CONTACT_OR_COMPANY),
        ("$.closedDate", NOT_A_DATE.format("'2023-02-30'")),
        ("$.companyId", NOT_AN_INTEGER.format("True")),
        ("$.name", NOT_A_NAME.format("''")),
        ("$.qualityId", "must be at least 1, got 0"),
        ("$.sourceId", CREATE_REQUIRED),
        ("$.stageID", "unknown field; did you mean `stageId`?"),
        ("$.stageId", CREATE_REQUIRED),
        ("$.typeId", NOT_AN_INTEGER.format("'abc'")),
        ("$.venueId", "required field is missing"),
    ]


def test_a_long_value_is_shown_truncated() -> None:
    (problem,) = problems_of({**UPDATE, "typeId": "x" * 500})

    shown = problem[1].removeprefix("must be an integer or a string of digits, got ")
    assert shown == repr("x" * 500)[:57] + "..."
    assert len(shown) == 60


def test_the_error_is_catchable_and_says_nothing_was_sent() -> None:
    with pytest.raises(PayloadValidationError) as raised:
        validate_add_or_update_payload({"id": 1, "venueId": "x"})

    assert isinstance(raised.value, OpportunityError)
    assert isinstance(raised.value, ValueError)
    assert "add_or_update_opportunity has 1 problem; nothing was sent" in str(raised.value)
    assert "$.venueId: must be an integer or a string of digits, got 'x'" in str(raised.value)


LINK = {"ref": "warehouse:row-1", "url": "https://warehouse.example.com/rows/1", "label": "Row 1"}
NOT_A_REF = "must be a non-empty string of at most 255 characters, got {}"
NOT_A_URL = "must be an https:// URL, or null to remove the entry, got {}"
NOT_A_LABEL = "must be a string of at most 255 characters, got {}"


@pytest.mark.parametrize(
    "external_urls",
    [
        pytest.param([LINK], id="one-full-entry"),
        pytest.param([{"ref": "a"}], id="ref-only"),
        pytest.param([{"ref": "a", "url": None}], id="url-null-removes-one"),
        pytest.param([{"ref": "a", "label": ""}], id="empty-label"),
        pytest.param([{"ref": "a"}, {"ref": "b"}, {"ref": "c", "url": "https://c"}], id="three-entries"),
        pytest.param([], id="empty-list"),
        pytest.param(None, id="null-removes-all"),
        pytest.param([{"ref": "r" * 255, "label": "l" * 255}], id="longest-ref-and-label"),
    ],
)
def test_external_urls_take_up_to_three_links(external_urls: Any) -> None:
    assert validate_add_or_update_payload({**UPDATE, "externalUrls": external_urls}) is None
    assert validate_add_or_update_payload({**CREATE, "externalUrls": external_urls}) is None


@pytest.mark.parametrize(
    ("external_urls", "expected"),
    [
        pytest.param(
            [{"ref": "a"}, {"ref": "b"}, {"ref": "c"}, {"ref": "d"}],
            [("$.externalUrls", "must hold at most 3 external URLs")],
            id="four-entries",
        ),
        pytest.param(
            [{"url": "https://x"}], [("$.externalUrls[0].ref", "required field is missing")], id="no-ref"
        ),
        pytest.param([{"ref": ""}], [("$.externalUrls[0].ref", NOT_A_REF.format("''"))], id="empty-ref"),
        pytest.param([{"ref": 7}], [("$.externalUrls[0].ref", NOT_A_REF.format("7"))], id="ref-not-a-string"),
        pytest.param(
            [LINK, {"ref": "r" * 256}],
            [("$.externalUrls[1].ref", NOT_A_REF.format(repr("r" * 256)[:57] + "..."))],
            id="ref-too-long",
        ),
        pytest.param(
            [{"ref": "a", "url": "http://plain.example.com"}],
            [("$.externalUrls[0].url", NOT_A_URL.format("'http://plain.example.com'"))],
            id="url-not-https",
        ),
        pytest.param(
            [{"ref": "a", "url": " https://x"}],
            [("$.externalUrls[0].url", NOT_A_URL.format("' https://x'"))],
            id="url-with-leading-space",
        ),
        pytest.param(
            [{"ref": "a", "url": 5}], [("$.externalUrls[0].url", NOT_A_URL.format("5"))], id="url-a-number"
        ),
        pytest.param(
            [{"ref": "a", "label": 5}],
            [("$.externalUrls[0].label", NOT_A_LABEL.format("5"))],
            id="label-not-a-string",
        ),
        pytest.param(
            [{"ref": "a", "label": None}],
            [
                (
                    "$.externalUrls[0].label",
                    NOT_A_LABEL.format("None") + "; leave the field out rather than sending null",
                )
            ],
            id="label-null",
        ),
        pytest.param(
            [{"ref": "a", "label": "l" * 256}],
            [("$.externalUrls[0].label", NOT_A_LABEL.format(repr("l" * 256)[:57] + "..."))],
            id="label-too-long",
        ),
        pytest.param(
            [{"ref": "a", "URL": "https://x"}],
            [("$.externalUrls[0].URL", "unknown field; did you mean `url`?")],
            id="unknown-key",
        ),
        pytest.param(
            ["https://x"],
            [
                (
                    "$.externalUrls[0]",
                    "must be an object with `ref` and optionally `url` and `label`, got 'https://x'",
                )
            ],
            id="entry-not-an-object",
        ),
        pytest.param(
            {"ref": "a"},
            [
                (
                    "$.externalUrls",
                    "must be a list of at most 3 external URLs, or null to remove them all, got {'ref': 'a'}",
                )
            ],
            id="an-object-not-a-list",
        ),
    ],
)
def test_external_urls_refuse_anything_else_naming_the_entry(
    external_urls: Any, expected: list[tuple[str, str]]
) -> None:
    assert problems_of({**UPDATE, "externalUrls": external_urls}) == expected


def test_every_problem_of_every_external_url_is_reported_at_once() -> None:
    external_urls = [{"ref": "", "url": "ftp://x", "colour": "red"}, {"label": 1}]

    assert problems_of({**UPDATE, "externalUrls": external_urls}) == [
        ("$.externalUrls[0].colour", "unknown field"),
        ("$.externalUrls[0].ref", NOT_A_REF.format("''")),
        ("$.externalUrls[0].url", NOT_A_URL.format("'ftp://x'")),
        ("$.externalUrls[1].label", NOT_A_LABEL.format("1")),
        ("$.externalUrls[1].ref", "required field is missing"),
    ]
