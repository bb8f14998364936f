"""The mock's v1 endpoint over real loopback HTTP: IWS signatures, request dates and field rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from airflow_opportunity_provider.auth import content_md5, hmac_sha1_hex, sign_v1_request, v1_string_to_sign
from airflow_opportunity_provider.mock_crm import FaultConfig, MockCrmServer
from airflow_opportunity_provider.mock_crm.pytest_plugin import (
    V1_OPPORTUNITY_REQUEST,
    V1_PING_REQUEST,
    post_v1,
)

# The seed's "Add Opportunity" example, verbatim: integer fields as strings.
SEED_CREATE = {
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


def _error(response: requests.Response) -> tuple[int, int | None, str, list[str]]:
    body = response.json()
    assert body["errorCode"] == response.status_code
    return response.status_code, body.get("specificCode"), body["message"], body.get("additionalMessages", [])


def test_signed_create_then_update_is_accepted_and_merged(mock_crm: MockCrmServer) -> None:
    first = post_v1(mock_crm, SEED_CREATE)
    second = post_v1(mock_crm, {**SEED_CREATE, "name": "Second"})
    update = post_v1(mock_crm, {"id": 1000, "venueId": "107", "name": "Updated Name"})

    assert (first.status_code, first.json()) == (200, {"success": True, "id": 1000})
    assert second.json() == {"success": True, "id": 1001}
    assert (update.status_code, update.json()) == (200, {"success": True, "id": 1000})
    record = mock_crm.store.v1_record(1000)
    assert record is not None
    assert record["name"] == "Updated Name"
    assert record["contactId"] == "918"  # fields not in the update are kept, as sent
    assert mock_crm.counters["v1_creates"] == 2
    assert mock_crm.counters["v1_updates"] == 1


def test_the_date_header_form_of_the_signature_is_accepted(mock_crm: MockCrmServer) -> None:
    body = json.dumps(SEED_CREATE).encode()
    date = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S UTC")
    body_md5 = content_md5(body)
    to_sign = v1_string_to_sign("POST", body_md5, "application/json", date, V1_OPPORTUNITY_REQUEST, {})
    signature = hmac_sha1_hex(mock_crm.config.api_secret, to_sign)
    headers = {
        "Date": date,
        "Content-MD5": body_md5,
        "Content-Type": "application/json",
        "X-Api-Version": "1.0",
        "X-Api-Authorization": f"IWS {mock_crm.config.api_key}:{signature}",
    }

    response = requests.post(
        mock_crm.base_url + V1_OPPORTUNITY_REQUEST, data=body, headers=headers, timeout=5
    )

    assert response.json() == {"success": True, "id": 1000}


def test_ping_answers_success_and_changes_nothing(mock_crm: MockCrmServer) -> None:
    response = post_v1(mock_crm, {"example": "body"}, request_string=V1_PING_REQUEST)
    unsigned = requests.post(mock_crm.base_url + V1_PING_REQUEST, data=b"{}", timeout=5)

    assert (response.status_code, response.json()) == (200, {"success": True})
    assert unsigned.status_code == 401
    assert mock_crm.store.v1_records() == []
    assert mock_crm.counters["by_endpoint"]["v1_ping"] == 2


def _send(
    server: MockCrmServer, body: bytes, headers: dict[str, str], path: str = V1_OPPORTUNITY_REQUEST
) -> Any:
    return requests.post(server.base_url + path, data=body, headers=headers, timeout=5)


def test_a_body_changed_after_signing_is_refused(mock_crm: MockCrmServer) -> None:
    signed_body = json.dumps(SEED_CREATE).encode()
    tampered = signed_body.replace(b"Lead By API", b"Lead By XYZ")
    headers = sign_v1_request(
        mock_crm.config.api_key, mock_crm.config.api_secret, V1_OPPORTUNITY_REQUEST, signed_body
    )

    plain = _send(mock_crm, tampered, headers)
    # Even with a Content-MD5 that matches the new body, the signature no longer does.
    with_new_md5 = _send(mock_crm, tampered, {**headers, "Content-MD5": content_md5(tampered)})

    assert _error(plain)[:2] == (401, None)
    assert "Content-MD5" in _error(plain)[2]
    assert _error(with_new_md5)[:2] == (401, None)
    assert "signature" in _error(with_new_md5)[2]
    assert mock_crm.store.v1_records() == []


@pytest.mark.parametrize(
    ("change", "expected_message"),
    [
        ({"api_secret": "not-the-secret"}, "signature"),
        ({"api_key": "unknown-key"}, "API key"),
    ],
)
def test_wrong_credentials_are_refused_with_401(
    mock_crm: MockCrmServer, change: dict[str, str], expected_message: str
) -> None:
    response = post_v1(mock_crm, SEED_CREATE, **change)  # type: ignore[arg-type]

    status, specific, message, _ = _error(response)
    assert (status, specific) == (401, None)
    assert expected_message in message
    assert mock_crm.config.api_secret not in response.text
    assert mock_crm.store.v1_records() == []


@pytest.mark.parametrize(
    ("mutate", "expected_message"),
    [
        (lambda h: h.pop("X-Api-Authorization"), "X-Api-Authorization"),
        (lambda h: h.update({"X-Api-Authorization": "Basic abc"}), "X-Api-Authorization"),
        (lambda h: h.pop("Content-MD5"), "Content-MD5"),
        (lambda h: h.pop("X-Api-Version"), "X-Api-Version"),
        # Every IVVY* header takes part in the signature, so one added afterwards breaks it.
        (lambda h: h.update({"IVVY-Extra": "1"}), "signature"),
        (lambda h: h.update({"Content-Type": "text/plain"}), "signature"),
    ],
)
def test_missing_or_changed_headers_are_refused(
    mock_crm: MockCrmServer, mutate: Any, expected_message: str
) -> None:
    body = json.dumps(SEED_CREATE).encode()
    headers = sign_v1_request(
        mock_crm.config.api_key, mock_crm.config.api_secret, V1_OPPORTUNITY_REQUEST, body
    )
    mutate(headers)

    status, _, message, _ = _error(_send(mock_crm, body, headers))

    assert status == 401
    assert expected_message in message


def test_a_request_signed_for_another_path_is_refused(mock_crm: MockCrmServer) -> None:
    body = json.dumps(SEED_CREATE).encode()
    headers = sign_v1_request(mock_crm.config.api_key, mock_crm.config.api_secret, V1_PING_REQUEST, body)

    assert _send(mock_crm, body, headers).status_code == 401


@pytest.mark.parametrize("offset_minutes", [-6, 6])
def test_a_date_more_than_five_minutes_off_is_stale(mock_crm: MockCrmServer, offset_minutes: int) -> None:
    now = datetime.now(UTC) + timedelta(minutes=offset_minutes)

    response = post_v1(mock_crm, SEED_CREATE, now=now)

    assert _error(response)[:3] == (401, 23005, "Request is stale")
    assert mock_crm.store.v1_records() == []


def test_a_date_four_minutes_off_is_accepted(mock_crm: MockCrmServer) -> None:
    response = post_v1(mock_crm, SEED_CREATE, now=datetime.now(UTC) - timedelta(minutes=4))

    assert response.status_code == 200


def test_a_request_without_any_date_is_refused(mock_crm: MockCrmServer) -> None:
    body = json.dumps(SEED_CREATE).encode()
    headers = sign_v1_request(
        mock_crm.config.api_key, mock_crm.config.api_secret, V1_OPPORTUNITY_REQUEST, body
    )
    del headers["IVVY-Date"]

    assert _error(_send(mock_crm, body, headers))[:2] == (401, 23005)


def _without(*names: str) -> dict[str, Any]:
    return {key: value for key, value in SEED_CREATE.items() if key not in names}


@pytest.mark.parametrize(
    ("payload", "specific", "additional_fragment"),
    [
        (b"", 24221, None),
        (b"{}", 24221, None),
        (b"[1, 2]", 24221, None),
        (b"not json", 24221, "not valid JSON"),
        (_without("venueId"), 23017, "'venueId' is required"),
        (_without("name"), 23017, "'name' is required"),
        (_without("typeId"), 23017, "'typeId' is required"),
        (_without("stageId"), 23017, "'stageId' is required"),
        (_without("sourceId"), 23017, "'sourceId' is required"),
        (_without("contactId"), 23017, "'contactId' is required, or 'companyId' with 'companyLeadContactId'"),
        ({**_without("contactId"), "companyId": "5"}, 23017, "'companyLeadContactId' is required"),
        ({**SEED_CREATE, "venueId": "10x"}, 23016, "Value must be a whole number"),
        ({**SEED_CREATE, "typeId": 1.5}, 23016, "Value must be a whole number"),
        ({**SEED_CREATE, "contactId": True}, 23016, "Value must be a whole number"),
        ({**SEED_CREATE, "stageId": "-3"}, 23016, "Value must be a whole number"),
        ({**SEED_CREATE, "name": 12}, 23016, "Value must be a string"),
        ({**SEED_CREATE, "channelId": [1]}, 23016, "whole number or a string"),
        ({**SEED_CREATE, "closedDate": "2017-13-01"}, 24224, "closedDate"),
        ({**SEED_CREATE, "closedDate": "05/05/2017"}, 24224, "closedDate"),
    ],
)
def test_field_rules_answer_the_platform_codes(
    mock_crm: MockCrmServer, payload: Any, specific: int, additional_fragment: str | None
) -> None:
    response = post_v1(mock_crm, payload)

    status, specific_code, _, additional = _error(response)
    assert (status, specific_code) == (400, specific)
    if additional_fragment is not None:
        assert any(additional_fragment in message for message in additional), additional
    assert mock_crm.store.v1_records() == []


def test_the_first_invalid_parameter_is_named_in_the_message(mock_crm: MockCrmServer) -> None:
    response = post_v1(mock_crm, {**SEED_CREATE, "venueId": "abc"})

    assert response.json()["message"] == "'venueId' does not validate"


@pytest.mark.parametrize(
    "payload",
    [
        {**_without("contactId"), "companyId": "5", "companyLeadContactId": "6"},
        {**SEED_CREATE, "venueId": 107, "typeId": 18, "contactId": 918},
        {**SEED_CREATE, "channelId": 3},
        {**SEED_CREATE, "channelId": "web"},
        _without("industryId"),
        {**SEED_CREATE, "utmSource": "newsletter", "contact": {"firstName": "Ann"}},
        {**SEED_CREATE, "nmae": "typo"},  # the platform ignores unknown names; the client must catch them
    ],
)
def test_valid_variants_are_created(mock_crm: MockCrmServer, payload: dict[str, Any]) -> None:
    response = post_v1(mock_crm, payload)

    assert response.status_code == 200, response.text
    (record,) = mock_crm.store.v1_records()
    assert record.pop("createdDate") == record.pop("modifiedDate")
    assert record == {**payload, "id": 1000, "externalUrls": []}


def test_an_update_of_an_unknown_id_is_not_found(mock_crm: MockCrmServer) -> None:
    response = post_v1(mock_crm, {"id": "999", "venueId": "107", "name": "Updated"})

    assert _error(response)[:3] == (404, 24222, "The opportunity does not exist")
    assert mock_crm.counters["v1_updates"] == 0


def test_an_update_needs_no_create_fields(mock_crm: MockCrmServer) -> None:
    post_v1(mock_crm, SEED_CREATE)

    response = post_v1(mock_crm, {"id": 1000, "venueId": "107", "closedDate": "2018-01-31"})

    assert response.status_code == 200
    record = mock_crm.store.v1_record(1000)
    assert record is not None
    assert record["closedDate"] == "2018-01-31"


def test_names_told_to_be_rejected_answer_24224(mock_crm: MockCrmServer) -> None:
    mock_crm.set_faults(FaultConfig(reject_names=frozenset({"Bad Row"})))

    rejected = post_v1(mock_crm, {**SEED_CREATE, "name": "Bad Row"})
    accepted = post_v1(mock_crm, {**SEED_CREATE, "name": "Good Row"})

    assert _error(rejected)[:3] == (400, 24224, "The opportunity details are invalid")
    assert accepted.status_code == 200
    assert [record["name"] for record in mock_crm.store.v1_records()] == ["Good Row"]


def test_unknown_actions_and_methods(mock_crm: MockCrmServer) -> None:
    unknown_action = post_v1(mock_crm, SEED_CREATE, request_string="/api/1.0/venue?action=deleteEverything")
    wrong_method = requests.get(mock_crm.base_url + V1_OPPORTUNITY_REQUEST, timeout=5)

    assert unknown_action.status_code == 404
    assert wrong_method.status_code == 405
    assert wrong_method.json()["errorCode"] == 405
