"""The mock's v2 endpoints over real loopback HTTP: OAuth2 tokens, PUT rules, exact decimals, GET."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest
import requests

from airflow_opportunity_provider.mock_crm import FaultConfig, MockCrmServer
from airflow_opportunity_provider.mock_crm.pytest_plugin import fetch_v2_token

FLAT_RECORD_FIELDS = {
    "Type",
    "ID",
    "VisitID",
    "CustomerID",
    "OpportunityName",
    "OpportunityID",
    "OpportunityCategoryID",
    "OpportunityStageID",
    "OpportunityCompetitorID",
    "AcctPotential",
    "SalesRevenue",
    "PendingCloseDate",
    "VisitCustomerOpportunityID",
    "FollowUpSentDate",
}
DENIED = "Authorization has been denied for this request."


def _put(
    server: MockCrmServer,
    path: str,
    body: dict[str, Any] | bytes,
    token: str | None,
) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    url = server.base_url + "/api/v2/opportunities/" + path
    if isinstance(body, bytes):
        return requests.put(url, data=body, headers=headers, timeout=5)
    return requests.put(url, json=body, headers=headers, timeout=5)


def _get(server: MockCrmServer, path: str, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(server.base_url + "/api/v2/opportunities/" + path, headers=headers, timeout=5)


def _token_request(server: MockCrmServer, **form: str) -> requests.Response:
    return requests.post(server.base_url + "/oauth/token", data=form, timeout=5)


def test_client_credentials_issue_a_bearer_token_that_works(mock_crm: MockCrmServer) -> None:
    answer = _token_request(
        mock_crm,
        grant_type="client_credentials",
        client_id=mock_crm.config.client_id,
        client_secret=mock_crm.config.client_secret,
        scope="opportunities",
    )
    body = answer.json()

    assert answer.status_code == 200
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert len(body["access_token"]) >= 32
    response = _put(mock_crm, "12?opportunityType=Pre", {"StageName": "Qualified"}, body["access_token"])
    assert response.status_code == 200
    assert mock_crm.counters["token_issued"] == 1


def test_http_basic_client_credentials_are_accepted(mock_crm: MockCrmServer) -> None:
    answer = requests.post(
        mock_crm.base_url + "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(mock_crm.config.client_id, mock_crm.config.client_secret),
        timeout=5,
    )

    assert answer.status_code == 200
    assert answer.json()["access_token"]


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        (
            {"grant_type": "client_credentials", "client_id": "mock-client-id", "client_secret": "wrong"},
            401,
            "invalid_client",
        ),
        (
            {
                "grant_type": "client_credentials",
                "client_id": "other",
                "client_secret": "mock-client-secret-abcdef",
            },
            401,
            "invalid_client",
        ),
        (
            {
                "grant_type": "password",
                "client_id": "mock-client-id",
                "client_secret": "mock-client-secret-abcdef",
            },
            400,
            "unsupported_grant_type",
        ),
        ({"grant_type": "client_credentials"}, 400, "invalid_request"),
    ],
)
def test_bad_token_requests_are_refused(
    mock_crm: MockCrmServer, form: dict[str, str], status: int, error: str
) -> None:
    answer = _token_request(mock_crm, **form)

    assert (answer.status_code, answer.json()) == (status, {"error": error})
    assert mock_crm.counters["token_issued"] == 0


def test_an_issued_token_expires_after_its_ttl(mock_crm: MockCrmServer) -> None:
    mock_crm.set_faults(FaultConfig(token_ttl=0.3))
    answer = _token_request(
        mock_crm,
        grant_type="client_credentials",
        client_id=mock_crm.config.client_id,
        client_secret=mock_crm.config.client_secret,
    ).json()
    token = answer["access_token"]

    fresh = _get(mock_crm, "1", token)
    time.sleep(0.4)
    expired = _get(mock_crm, "1", token)

    assert answer["expires_in"] == 0.3
    assert fresh.status_code == 200
    assert (expired.status_code, expired.text) == (401, DENIED)


def test_expire_tokens_now_expires_issued_tokens_but_not_the_static_one(mock_crm: MockCrmServer) -> None:
    token = fetch_v2_token(mock_crm)
    assert _get(mock_crm, "1", token).status_code == 200

    assert mock_crm.expire_tokens_now() == 1

    assert _get(mock_crm, "1", token).status_code == 401
    assert _get(mock_crm, "1", mock_crm.config.static_token).status_code == 200


@pytest.mark.parametrize("token", [None, "made-up-token", ""])
def test_requests_without_a_valid_token_are_denied(mock_crm: MockCrmServer, token: str | None) -> None:
    before = mock_crm.store.v2_record(1, "Pre")

    put = _put(mock_crm, "1?opportunityType=Pre", {"StageName": "Qualified"}, token)
    get = _get(mock_crm, "1", token)

    assert (put.status_code, put.text) == (401, DENIED)
    assert put.headers["WWW-Authenticate"] == "Bearer"
    assert get.status_code == 401
    assert mock_crm.store.v2_record(1, "Pre") == before
    assert mock_crm.counters["v2_puts"] == 0


def test_put_answers_the_full_flat_record(mock_crm: MockCrmServer) -> None:
    body = {
        "OpportunityName": "Updated Product Launch",
        "OpportunityID": "OPP-2024-001",
        "CategoryName": "New Business",
        "StageName": "Proposal",
        "AcctPotential": 200000.00,
        "SalesRevenue": 100000.00,
        "PendingCloseDate": "2024-12-31",
    }

    response = _put(mock_crm, "42?opportunityType=Pre&LanguageId=1", body, mock_crm.config.static_token)

    record = response.json()
    assert response.status_code == 200
    assert set(record) == FLAT_RECORD_FIELDS
    assert record["Type"] == "Pre"
    assert record["ID"] == 42
    assert record["OpportunityName"] == "Updated Product Launch"
    assert record["OpportunityID"] == "OPP-2024-001"
    assert record["OpportunityCategoryID"] == 1
    assert record["OpportunityStageID"] == 3
    assert record["PendingCloseDate"] == "2024-12-31"
    # The Post record of the same opportunity is untouched.
    post = mock_crm.store.v2_record(42, "Post")
    assert post is not None
    assert post["OpportunityName"] == "Seed opportunity 42"


def test_decimals_are_stored_and_answered_without_rounding(mock_crm: MockCrmServer) -> None:
    raw = b'{"AcctPotential": 12345678901234567.89, "SalesRevenue": 0.1000000000000000055511151231257827}'

    response = _put(mock_crm, "7?opportunityType=Post", raw, mock_crm.config.static_token)

    assert response.status_code == 200
    assert '"AcctPotential":12345678901234567.89' in response.text
    assert '"SalesRevenue":0.1000000000000000055511151231257827' in response.text
    stored = mock_crm.store.v2_record(7, "Post")
    assert stored is not None
    assert stored["AcctPotential"] == Decimal("12345678901234567.89")
    assert stored["SalesRevenue"] == Decimal("0.1000000000000000055511151231257827")


@pytest.mark.parametrize(
    ("body", "message_fragment"),
    [
        ({"AcctPotential": "100.50"}, "AcctPotential must be a number"),
        ({"SalesRevenue": True}, "SalesRevenue must be a number"),
        ({"OpportunityName": 5}, "OpportunityName must be a string"),
        (b'{"SalesRevenue": NaN}', "not valid JSON"),
        (b"[1]", "must be a JSON object"),
        (b"", "not valid JSON"),
    ],
)
def test_badly_typed_bodies_are_refused(mock_crm: MockCrmServer, body: Any, message_fragment: str) -> None:
    response = _put(mock_crm, "7?opportunityType=Pre", body, mock_crm.config.static_token)

    assert response.status_code == 400
    assert message_fragment in response.json()["ValidationMessage"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "CategoryName",
            "Invalid Category",
            "Category 'Invalid Category' not found. Please select from available categories.",
        ),
        ("StageName", "Won", "Stage 'Won' not found. Please select from available stages."),
    ],
)
def test_an_unknown_category_or_stage_lists_the_choices(
    mock_crm: MockCrmServer, field: str, value: str, message: str
) -> None:
    response = _put(mock_crm, "3?opportunityType=Pre", {field: value}, mock_crm.config.static_token)

    assert response.status_code == 400
    assert response.json() == {
        "ValidationMessage": message,
        "AvailableCategories": [
            {"CategoryID": 1, "CategoryName": "New Business"},
            {"CategoryID": 2, "CategoryName": "Existing Business"},
            {"CategoryID": 3, "CategoryName": "Renewal"},
        ],
        "AvailableStages": [
            {"StageID": 1, "StageName": "Prospect"},
            {"StageID": 2, "StageName": "Qualified"},
            {"StageID": 3, "StageName": "Proposal"},
            {"StageID": 4, "StageName": "Closed Won"},
            {"StageID": 5, "StageName": "Closed Lost"},
        ],
    }
    assert mock_crm.counters["v2_puts"] == 0


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("2024-12-31", "2024-12-31"),
        ("12/31/2024", "2024-12-31"),
        ("31/12/2024", "2024-12-31"),
        ("03/04/2024", "2024-03-04"),  # ambiguous: MM/dd/yyyy is tried first
        ("29/02/2024", "2024-02-29"),
    ],
)
def test_pending_close_date_formats_are_accepted(mock_crm: MockCrmServer, sent: str, stored: str) -> None:
    response = _put(
        mock_crm, "9?opportunityType=Pre", {"PendingCloseDate": sent}, mock_crm.config.static_token
    )

    assert response.status_code == 200
    assert response.json()["PendingCloseDate"] == stored


@pytest.mark.parametrize(
    "sent", ["2024/12/31", "31-12-2024", "02/30/2024", "2024-12-31T00:00:00", "tomorrow"]
)
def test_other_pending_close_dates_are_refused(mock_crm: MockCrmServer, sent: str) -> None:
    response = _put(
        mock_crm, "9?opportunityType=Pre", {"PendingCloseDate": sent}, mock_crm.config.static_token
    )

    assert response.status_code == 400
    assert "PendingCloseDate" in response.json()["ValidationMessage"]


@pytest.mark.parametrize(
    "path",
    [
        "0?opportunityType=Pre",
        "-1?opportunityType=Pre",
        "abc?opportunityType=Pre",
        "101?opportunityType=Pre",
        "1.5?opportunityType=Pre",
    ],
)
def test_ids_that_are_not_seeded_integers_are_not_found(mock_crm: MockCrmServer, path: str) -> None:
    put = _put(mock_crm, path, {"StageName": "Qualified"}, mock_crm.config.static_token)
    get = _get(mock_crm, path, mock_crm.config.static_token)

    assert put.status_code == 404
    assert "was not found" in put.json()["Message"]
    assert get.status_code == 404


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("", "opportunityType query parameter is required"),
        ("?opportunityType=Middle", "'Middle'"),
        ("?opportunityType=Pre&LanguageId=0", "LanguageId"),
    ],
)
def test_a_missing_or_invalid_query_is_refused(mock_crm: MockCrmServer, query: str, fragment: str) -> None:
    response = _put(mock_crm, "5" + query, {"StageName": "Qualified"}, mock_crm.config.static_token)

    assert response.status_code == 400
    assert fragment in response.json()["ValidationMessage"]


def test_an_empty_body_changes_nothing(mock_crm: MockCrmServer) -> None:
    before = mock_crm.store.v2_record(5, "Post")

    response = _put(mock_crm, "5?opportunityType=post", {}, mock_crm.config.static_token)

    assert response.status_code == 200
    assert mock_crm.store.v2_record(5, "Post") == before


def test_get_lists_both_types_or_the_one_asked_for(mock_crm: MockCrmServer) -> None:
    token = fetch_v2_token(mock_crm)
    _put(mock_crm, "8?opportunityType=Post", {"SalesRevenue": 10.10}, token)

    both = _get(mock_crm, "8", token).json()
    post_only = _get(mock_crm, "8?opportunityType=Post", token).json()

    assert [record["Type"] for record in both] == ["Pre", "Post"]
    assert all(set(record) == FLAT_RECORD_FIELDS for record in both)
    assert [record["Type"] for record in post_only] == ["Post"]
    assert post_only[0]["SalesRevenue"] == 10.10


def test_rejected_names_are_refused_on_v2_too(mock_crm: MockCrmServer) -> None:
    mock_crm.set_faults(FaultConfig(reject_names=frozenset({"Bad Row"})))

    response = _put(
        mock_crm, "2?opportunityType=Pre", {"OpportunityName": "Bad Row"}, mock_crm.config.static_token
    )

    assert response.status_code == 400
    assert response.json() == {"ValidationMessage": "The opportunity details are invalid."}
