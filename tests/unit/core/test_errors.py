"""Every error code PLATFORM_NOTES.md lists maps to its exception type, with a message that helps."""

from __future__ import annotations

import pytest

from airflow_opportunity_provider.answers import retry_after_seconds, v1_error, v2_error
from airflow_opportunity_provider.errors import (
    OpportunityApiError,
    OpportunityAuthenticationError,
    OpportunityInvalidError,
    OpportunityNotFoundError,
    OpportunityOutcomeUnknownError,
    OpportunityRateLimitedError,
    OpportunityRequestFailedError,
    OpportunityServerError,
    OpportunityV2ValidationError,
)


def _v1_body(
    error_code: int, specific: int | None, message: str, additional: list[str] | None = None
) -> dict:
    body: dict = {"errorCode": error_code, "message": message}
    if specific is not None:
        body["specificCode"] = specific
    if additional is not None:
        body["additionalMessages"] = additional
    return body


@pytest.mark.parametrize(
    ("status", "specific", "kind", "advice"),
    [
        (400, 24221, OpportunityInvalidError, "send at least `venueId`"),
        (404, 24222, OpportunityNotFoundError, "Check its `id`"),
        (400, 24222, OpportunityNotFoundError, "leave `id` out to create"),
        (400, 24224, OpportunityInvalidError, "correct the fields"),
        (400, 23016, OpportunityInvalidError, "correct the parameter"),
        (400, 23017, OpportunityInvalidError, "add the missing parameter"),
        (401, 23005, OpportunityAuthenticationError, "clock"),
        (401, None, OpportunityAuthenticationError, "v1 API key (login) and API secret"),
        (403, None, OpportunityAuthenticationError, "permission"),
        (462, None, OpportunityAuthenticationError, "session expired"),
        (463, None, OpportunityAuthenticationError, "revoked"),
        (404, None, OpportunityNotFoundError, "opportunity id"),
        (405, None, OpportunityRequestFailedError, "HTTP 405"),
        (406, None, OpportunityRequestFailedError, "HTTP 406"),
        (429, None, OpportunityRateLimitedError, "lower the request rate"),
        (460, None, OpportunityRequestFailedError, "HTTP 460"),
        (461, None, OpportunityRequestFailedError, "HTTP 461"),
        (500, None, OpportunityServerError, "try again later"),
        (501, None, OpportunityServerError, "HTTP 501"),
        (408, None, OpportunityServerError, "HTTP 408"),
        (502, None, OpportunityServerError, "HTTP 502"),
        (503, None, OpportunityServerError, "HTTP 503"),
        (504, None, OpportunityServerError, "HTTP 504"),
    ],
)
def test_every_v1_code_maps_to_its_type(status: int, specific: int | None, kind: type, advice: str) -> None:
    error = v1_error(
        status, {}, _v1_body(status, specific, "platform says no", ["field x is bad"]), "The call"
    )
    assert type(error) is kind
    assert error.status_code == status
    assert error.specific_code == specific
    assert error.platform_message == "platform says no"
    assert error.additional_messages == ["field x is bad"]
    assert advice in str(error)
    assert error.code == (specific if specific is not None else status)


def test_success_false_on_200_is_an_error_with_the_body_code() -> None:
    error = v1_error(200, {}, {"success": False, "errorCode": 400, "specificCode": 24224}, "The create")
    assert isinstance(error, OpportunityInvalidError)
    assert error.specific_code == 24224
    error = v1_error(200, {}, {"success": False}, "The create")
    assert isinstance(error, OpportunityRequestFailedError)
    assert "success=false" in str(error)


def test_each_error_type_says_what_it_means_for_a_row() -> None:
    assert OpportunityInvalidError("x").row_outcome == "rejected"
    assert OpportunityNotFoundError("x").row_outcome == "rejected"
    assert OpportunityServerError("x").row_outcome == "failed"
    assert OpportunityAuthenticationError("x").stops_load
    unknown = OpportunityOutcomeUnknownError({"name": "n"}, "it timed out.")
    assert unknown.row_outcome == "unknown"
    assert not unknown.stops_load
    assert "it timed out. It was not resent" in str(unknown)


def test_rate_limited_error_carries_retry_after() -> None:
    error = v1_error(429, {"Retry-After": "7"}, None)
    assert isinstance(error, OpportunityRateLimitedError)
    assert error.retry_after == 7.0


def test_v2_validation_error_names_the_valid_choices() -> None:
    body = {
        "ValidationMessage": "Category 'Invalid Category' not found. Please select from available categories.",
        "AvailableCategories": [
            {"CategoryID": 1, "CategoryName": "New Business"},
            {"CategoryID": 2, "CategoryName": "Existing Business"},
        ],
        "AvailableStages": [
            {"StageID": 1, "StageName": "Prospect"},
            {"StageID": 2, "StageName": "Qualified"},
        ],
    }
    error = v2_error(400, {}, body, "The v2 put")
    assert isinstance(error, OpportunityV2ValidationError)
    assert error.available_categories == ["New Business", "Existing Business"]
    assert error.available_stages == ["Prospect", "Qualified"]
    assert "CategoryName must be one of: 'New Business', 'Existing Business'" in str(error)
    assert "StageName must be one of: 'Prospect', 'Qualified'" in str(error)


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, {"ValidationMessage": "opportunityType is required"}, OpportunityInvalidError),
        (401, "Authorization has been denied for this request.", OpportunityAuthenticationError),
        (404, {"Message": "Opportunity 9 not found"}, OpportunityNotFoundError),
        (429, None, OpportunityRateLimitedError),
        (500, {"Message": "An error has occurred."}, OpportunityServerError),
    ],
)
def test_v2_statuses(status: int, body: object, kind: type) -> None:
    error = v2_error(status, {}, body, "The v2 put")
    assert type(error) is kind
    assert error.status_code == status
    assert isinstance(error, OpportunityApiError)


def test_outcome_unknown_carries_the_payload_and_says_what_to_do() -> None:
    payload = {"venueId": 107, "name": "Lead By API"}
    error = OpportunityOutcomeUnknownError(payload, "no answer within 60 s")
    assert error.payload == payload
    assert "'Lead By API'" in str(error)
    assert "not resent" in str(error)
    assert "Check the CRM" in str(error)


def test_retry_after_http_date_and_garbage() -> None:
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    assert retry_after_seconds({}) is None
