"""The call flow, table-driven and in-process (no sockets): what every answer class means for an
idempotent and a non-idempotent call, and how many attempts each makes.

The rule under test: a v1 create is retried only after a definite refusal (429, 503, nothing
sent); anything else that is not a clean answer ends it as outcome-unknown after one attempt.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from airflow_opportunity_provider import protocol
from airflow_opportunity_provider.auth import TokenCache
from airflow_opportunity_provider.connection import OpportunitySettings, settings_from_connection
from airflow_opportunity_provider.errors import (
    OpportunityAuthenticationError,
    OpportunityConfigurationError,
    OpportunityConnectionError,
    OpportunityError,
    OpportunityInvalidError,
    OpportunityNotFoundError,
    OpportunityOutcomeUnknownError,
    OpportunityRateLimitedError,
    OpportunityRedirectError,
    OpportunityRequestFailedError,
    OpportunityServerError,
    OpportunityUnexpectedAnswerError,
)
from airflow_opportunity_provider.flow import (
    Credentials,
    TransportFault,
    Verdict,
    build_request,
    decide,
    perform,
    perform_async,
)
from airflow_opportunity_provider.protocol import Call
from airflow_opportunity_provider.retries import Backoff, RetryPolicy
from airflow_opportunity_provider.schemas import check_put_request
from tests.unit.core.scripted_transport import ScriptedTransport, answer

RETRIES = 2
POLICY = RetryPolicy(RETRIES, Backoff(initial=0.0, maximum=0.0, max_retry_after=0.0))
SECRET = "v1-secret-that-signs"
CLIENT_SECRET = "v2-client-secret-value"
CREATE = {"venueId": 107, "name": "Lead", "contactId": 918, "typeId": 18, "sourceId": 25, "stageId": 69}
UPDATE = {"id": 755, "venueId": 107, "name": "Renamed"}
V1_OK = {"success": True, "id": 755}


def _settings(**extra: Any) -> OpportunitySettings:
    return settings_from_connection(
        "crm",
        host="https://v1.example.com",
        port=None,
        schema=None,
        login="api-key",
        password=SECRET,
        extra={
            "v2_base_url": "https://v2.example.com",
            "v2_client_id": "client",
            "v2_client_secret": CLIENT_SECRET,
            "v2_oauth_url": "https://v2.example.com/oauth/token",
            **extra,
        },
    )


SETTINGS = _settings()


def _credentials(settings: OpportunitySettings = SETTINGS) -> Credentials:
    return Credentials.from_settings(settings)


def _run(call: Call[Any], transport: ScriptedTransport, settings: OpportunitySettings = SETTINGS) -> Any:
    return perform(call, _credentials(settings), POLICY, transport.send, transport.token)


# Every answer class: (label, reply, verdict, error type for an idempotent call).
TRANSPORT_NOT_SENT = TransportFault(False, "could not connect (ConnectionRefusedError)")
ANSWER_CLASSES: list[tuple[str, Any, Verdict, type[OpportunityError] | None]] = [
    ("200 with an id", answer(200, V1_OK), Verdict.SUCCESS, None),
    ("201 with an id", answer(201, V1_OK), Verdict.SUCCESS, None),
    (
        "200 success without id",
        answer(200, {"success": True}),
        Verdict.UNKNOWN,
        OpportunityUnexpectedAnswerError,
    ),
    (
        "200 id null",
        answer(200, {"success": True, "id": None}),
        Verdict.UNKNOWN,
        OpportunityUnexpectedAnswerError,
    ),
    (
        "200 id true",
        answer(200, {"success": True, "id": True}),
        Verdict.UNKNOWN,
        OpportunityUnexpectedAnswerError,
    ),
    ("200 id 0", answer(200, {"success": True, "id": 0}), Verdict.UNKNOWN, OpportunityUnexpectedAnswerError),
    (
        "200 id text",
        answer(200, {"success": True, "id": "abc"}),
        Verdict.UNKNOWN,
        OpportunityUnexpectedAnswerError,
    ),
    ("200 no success field", answer(200, {"id": 755}), Verdict.UNKNOWN, OpportunityUnexpectedAnswerError),
    ("200 JSON list", answer(200, [1, 2]), Verdict.UNKNOWN, OpportunityUnexpectedAnswerError),
    (
        "200 HTML page",
        answer(200, "<html><body>Welcome</body></html>", {"Content-Type": "text/html"}),
        Verdict.UNKNOWN,
        OpportunityUnexpectedAnswerError,
    ),
    ("200 truncated JSON", answer(200, b'{"success": tr'), Verdict.UNKNOWN, OpportunityUnexpectedAnswerError),
    ("200 empty body", answer(200, b""), Verdict.UNKNOWN, OpportunityUnexpectedAnswerError),
    ("200 not UTF-8", answer(200, b"\xff\xfe\x00{"), Verdict.UNKNOWN, OpportunityUnexpectedAnswerError),
    ("204 no content", answer(204, b""), Verdict.UNKNOWN, OpportunityUnexpectedAnswerError),
    ("200 success false", answer(200, {"success": False}), Verdict.REJECTED, OpportunityRequestFailedError),
    (
        "200 success false 24224",
        answer(200, {"success": False, "errorCode": 400, "specificCode": 24224}),
        Verdict.REJECTED,
        OpportunityInvalidError,
    ),
    (
        "200 success false 23005",
        answer(200, {"success": False, "specificCode": 23005}),
        Verdict.AUTH_FAILED,
        OpportunityAuthenticationError,
    ),
    (
        "200 success false 429",
        answer(200, {"success": False, "errorCode": 429}),
        Verdict.REFUSED,
        OpportunityRateLimitedError,
    ),
    (
        "301",
        answer(301, b"", {"Location": "https://elsewhere.example.net/x?sig=1"}),
        Verdict.UNKNOWN,
        OpportunityRedirectError,
    ),
    (
        "302",
        answer(302, b"", {"Location": "https://elsewhere.example.net/"}),
        Verdict.UNKNOWN,
        OpportunityRedirectError,
    ),
    ("303", answer(303, b"", {"Location": "/done"}), Verdict.UNKNOWN, OpportunityRedirectError),
    (
        "307",
        answer(307, b"", {"Location": "https://elsewhere.example.net/"}),
        Verdict.UNKNOWN,
        OpportunityRedirectError,
    ),
    (
        "308",
        answer(308, b"", {"Location": "https://elsewhere.example.net/"}),
        Verdict.UNKNOWN,
        OpportunityRedirectError,
    ),
    (
        "400 invalid",
        answer(400, {"errorCode": 400, "specificCode": 24224, "message": "bad"}),
        Verdict.REJECTED,
        OpportunityInvalidError,
    ),
    ("400 HTML", answer(400, "<html>Bad Request</html>"), Verdict.REJECTED, OpportunityInvalidError),
    (
        "401",
        answer(401, {"errorCode": 401, "message": "no"}),
        Verdict.AUTH_FAILED,
        OpportunityAuthenticationError,
    ),
    (
        "401 stale",
        answer(401, {"errorCode": 401, "specificCode": 23005}),
        Verdict.AUTH_FAILED,
        OpportunityAuthenticationError,
    ),
    ("403", answer(403, b""), Verdict.AUTH_FAILED, OpportunityAuthenticationError),
    (
        "404 24222",
        answer(404, {"errorCode": 404, "specificCode": 24222}),
        Verdict.REJECTED,
        OpportunityNotFoundError,
    ),
    ("404 HTML", answer(404, "<html>Not Found</html>"), Verdict.REJECTED, OpportunityNotFoundError),
    ("405", answer(405, b""), Verdict.REJECTED, OpportunityRequestFailedError),
    ("409", answer(409, b""), Verdict.REJECTED, OpportunityRequestFailedError),
    ("413", answer(413, b""), Verdict.REJECTED, OpportunityRequestFailedError),
    ("460", answer(460, {"errorCode": 460}), Verdict.REJECTED, OpportunityRequestFailedError),
    ("461", answer(461, {"errorCode": 461}), Verdict.REJECTED, OpportunityRequestFailedError),
    ("462", answer(462, {"errorCode": 462}), Verdict.AUTH_FAILED, OpportunityAuthenticationError),
    ("463", answer(463, {"errorCode": 463}), Verdict.AUTH_FAILED, OpportunityAuthenticationError),
    ("408", answer(408, b""), Verdict.UNKNOWN, OpportunityServerError),
    ("499", answer(499, b""), Verdict.UNKNOWN, OpportunityServerError),
    ("429", answer(429, b"", {"Retry-After": "0"}), Verdict.REFUSED, OpportunityRateLimitedError),
    ("503", answer(503, b""), Verdict.REFUSED, OpportunityServerError),
    *[
        (str(status), answer(status, b"<html>error</html>"), Verdict.UNKNOWN, OpportunityServerError)
        for status in (500, 501, 502, 504, 505, 520, 521, 522, 523, 524, 525, 526, 527, 598, 599)
    ],
    ("600", answer(600, b""), Verdict.UNKNOWN, OpportunityServerError),
    ("not sent", TRANSPORT_NOT_SENT, Verdict.REFUSED, OpportunityConnectionError),
    (
        "read timeout",
        TransportFault(True, "got no answer within 60 s"),
        Verdict.UNKNOWN,
        OpportunityConnectionError,
    ),
    (
        "reset after sending",
        TransportFault(True, "lost its connection after sending (ConnectionResetError)"),
        Verdict.UNKNOWN,
        OpportunityConnectionError,
    ),
    (
        "answer cut short",
        TransportFault(True, "had its answer cut short (ChunkedEncodingError)"),
        Verdict.UNKNOWN,
        OpportunityConnectionError,
    ),
    (
        "TLS error after sending",
        TransportFault(True, "failed in TLS after sending (SSLError)"),
        Verdict.UNKNOWN,
        OpportunityConnectionError,
    ),
]
IDS = [row[0] for row in ANSWER_CLASSES]


@pytest.mark.parametrize(("label", "reply", "verdict", "error_type"), ANSWER_CLASSES, ids=IDS)
def test_the_decision_of_each_answer_class(label: str, reply: Any, verdict: Verdict, error_type: Any) -> None:
    for payload, idempotent in ((UPDATE, True), (CREATE, False)):
        call = protocol.v1_add_or_update(SETTINGS, payload)
        assert call.idempotent is idempotent
        request = build_request(call, _credentials())
        decision = decide(call, request, reply)
        assert decision.verdict is verdict, (label, payload)
        if verdict is Verdict.SUCCESS:
            assert decision.value == 755
            continue
        if verdict is Verdict.REFUSED:
            assert decision.retry is True
        elif verdict is Verdict.UNKNOWN:
            # Repeated only when repeating cannot change the result twice (and not a redirect).
            assert decision.retry is (idempotent and error_type is not OpportunityRedirectError)
        else:
            assert decision.retry is False
        if verdict is Verdict.UNKNOWN and not idempotent:
            assert isinstance(decision.error, OpportunityOutcomeUnknownError)
            assert isinstance(decision.error.cause, error_type)
            assert decision.error.payload == CREATE
        else:
            assert type(decision.error) is error_type, label


@pytest.mark.parametrize(("label", "reply", "verdict", "error_type"), ANSWER_CLASSES, ids=IDS)
def test_attempts_made_for_each_answer_class(
    label: str, reply: Any, verdict: Verdict, error_type: Any
) -> None:
    for payload, idempotent in ((UPDATE, True), (CREATE, False)):
        transport = ScriptedTransport([reply])
        call = protocol.v1_add_or_update(SETTINGS, payload)
        if verdict is Verdict.SUCCESS:
            assert _run(call, transport) == 755
            assert len(transport.requests) == 1
            continue
        with pytest.raises(OpportunityError) as caught:
            _run(call, transport)
        retried = verdict is Verdict.REFUSED or (
            verdict is Verdict.UNKNOWN and idempotent and error_type is not OpportunityRedirectError
        )
        assert len(transport.requests) == (RETRIES + 1 if retried else 1), (label, payload)
        if verdict is Verdict.UNKNOWN and not idempotent:
            assert type(caught.value) is OpportunityOutcomeUnknownError, label
        else:
            assert type(caught.value) is error_type, label


@pytest.mark.parametrize(
    "refusal",
    [answer(429, b"", {"Retry-After": "0"}), answer(503, b""), TRANSPORT_NOT_SENT],
    ids=["429", "503", "not sent"],
)
def test_a_create_refused_then_answered_is_created_once(refusal: Any) -> None:
    transport = ScriptedTransport([refusal, answer(200, V1_OK)])
    assert _run(protocol.v1_add_or_update(SETTINGS, CREATE), transport) == 755
    assert len(transport.requests) == 2


def test_a_create_is_never_sent_again_after_an_unknown_outcome_even_if_it_would_succeed() -> None:
    transport = ScriptedTransport([answer(502, b""), answer(200, V1_OK)])
    with pytest.raises(OpportunityOutcomeUnknownError) as caught:
        _run(protocol.v1_add_or_update(SETTINGS, CREATE), transport)
    assert len(transport.requests) == 1
    assert caught.value.status_code == 502
    assert "502" in str(caught.value)


def test_an_update_whose_outcome_is_unknown_is_retried_until_it_succeeds() -> None:
    transport = ScriptedTransport(
        [TransportFault(True, "got no answer within 1 s"), answer(504), answer(200, V1_OK)]
    )
    assert _run(protocol.v1_add_or_update(SETTINGS, UPDATE), transport) == 755
    assert len(transport.requests) == 3


def test_every_attempt_is_signed_afresh() -> None:
    transport = ScriptedTransport([answer(503), answer(200, V1_OK)])
    _run(protocol.v1_add_or_update(SETTINGS, CREATE), transport)
    first, second = transport.requests
    assert first.body == second.body
    assert first.headers["X-Api-Authorization"].startswith("IWS api-key:")
    assert "IVVY-Date" in second.headers


def test_a_redirect_names_the_host_not_the_query() -> None:
    transport = ScriptedTransport(
        [answer(307, b"", {"Location": "https://evil.example.net/take?sig=abc123"})]
    )
    with pytest.raises(OpportunityRedirectError) as caught:
        _run(protocol.v1_add_or_update(SETTINGS, UPDATE), transport)
    assert "evil.example.net" in str(caught.value)
    assert "sig=abc123" not in str(caught.value)
    assert caught.value.location_host == "evil.example.net"
    assert OpportunityRedirectError.stops_load


def test_an_error_body_echoing_the_request_never_shows_a_secret() -> None:
    transport = ScriptedTransport([])

    def echo(request: Any) -> Any:
        transport.requests.append(request)
        return answer(400, {"message": f"bad request: {dict(request.headers)}"})

    call = protocol.v1_add_or_update(SETTINGS, UPDATE)
    with pytest.raises(OpportunityInvalidError) as caught:
        perform(call, _credentials(), POLICY, echo, transport.token)
    signature = transport.requests[0].headers["X-Api-Authorization"].rpartition(":")[2]
    assert signature not in str(caught.value)
    assert signature not in repr(caught.value.body)
    assert "***" in str(caught.value)


# -- v2: bearer tokens and the one refresh ----------------------------------------------------

PUT_REQUEST = check_put_request({"Id": 42, "opportunityType": "Pre", "StageName": "Qualified"})
PUT = protocol.v2_put(SETTINGS, PUT_REQUEST)
RECORD = {"ID": 42, "Type": "Pre"}


def test_a_401_gets_one_new_token_and_one_repeat() -> None:
    transport = ScriptedTransport([answer(401, "denied"), answer(200, RECORD)])
    assert _run(PUT, transport) == RECORD
    assert len(transport.requests) == 2
    assert [need.rejected for need in transport.token_requests] == [None, "token-1"]
    assert transport.requests[1].headers["Authorization"] == "Bearer token-2"


def test_a_second_401_is_an_authentication_error_after_two_requests() -> None:
    transport = ScriptedTransport([answer(401, "denied")])
    with pytest.raises(OpportunityAuthenticationError):
        _run(PUT, transport)
    assert len(transport.requests) == 2
    assert len(transport.token_requests) == 2


def test_a_static_token_is_never_replaced() -> None:
    settings = _settings(v2_token="static-token")
    call = protocol.v2_put(settings, PUT_REQUEST)
    transport = ScriptedTransport([answer(401, "denied")])
    credentials = Credentials.from_settings(settings)
    with pytest.raises(OpportunityAuthenticationError):
        perform(call, credentials, POLICY, transport.send, lambda need: credentials.tokens.current() or "")
    assert len(transport.requests) == 1
    assert transport.requests[0].headers["Authorization"] == "Bearer static-token"


@pytest.mark.parametrize(
    ("reply", "retried"),
    [
        (answer(200, {"token_type": "Bearer", "expires_in": 3600}), False),
        (answer(200, {"access_token": "", "expires_in": 3600}), False),
        (answer(200, {"access_token": 12345}), False),
        (answer(200, {"access_token": "   "}), False),
        (answer(401, {"error": "invalid_client"}), False),
        (answer(400, {"error": "invalid_scope"}), False),
        (answer(200, "<html>Sign in</html>", {"Content-Type": "text/html"}), False),
    ],
    ids=["no access_token", "empty", "not a string", "blank", "401", "400", "HTML"],
)
def test_a_token_answer_without_a_usable_token_is_a_clear_error_after_one_request(
    reply: Any, retried: bool
) -> None:
    transport = ScriptedTransport([reply])
    with pytest.raises(OpportunityAuthenticationError) as caught:
        _run(protocol.v2_token(SETTINGS), transport)
    assert len(transport.requests) == 1
    message = str(caught.value)
    assert "v2.example.com" in message
    assert CLIENT_SECRET not in message
    assert "extra.v2_" in message


def test_the_token_request_carries_the_secret_only_in_its_form_body() -> None:
    request = build_request(protocol.v2_token(SETTINGS), _credentials())
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert b"client_secret=v2-client-secret-value" in (request.body or b"")
    assert CLIENT_SECRET not in repr(request)
    assert "Authorization" not in request.headers


# -- what no library may ever quote ----------------------------------------------------------


def test_a_header_value_that_would_break_the_line_is_refused_before_sending() -> None:
    settings = OpportunitySettings(
        conn_id="crm", v1_base_url="https://v1.example.com", v1_api_key="key\nX-Evil: 1", v1_api_secret=SECRET
    )
    transport = ScriptedTransport([answer(200, V1_OK)])
    with pytest.raises(OpportunityConfigurationError) as caught:
        _run(protocol.v1_add_or_update(settings, UPDATE), transport, settings)
    assert transport.requests == []
    assert "login" in str(caught.value)
    assert "IWS" not in str(caught.value)


@pytest.mark.parametrize(
    ("field", "named", "make_call"),
    [
        ("v1_api_secret", "password", lambda settings: protocol.v1_add_or_update(settings, CREATE)),
        ("v2_client_id", "extra.v2_client_id", protocol.v2_token),
        ("v2_client_secret", "extra.v2_client_secret", protocol.v2_token),
    ],
    ids=["v1 secret", "client id", "client secret"],
)
def test_a_credential_with_a_line_break_is_refused_before_any_request(
    field: str, named: str, make_call: Any
) -> None:
    settings = dataclasses.replace(SETTINGS, **{field: "value\r\nX-Injected: 1"})
    with pytest.raises(OpportunityConfigurationError) as caught:
        make_call(settings)
    assert named in str(caught.value)
    assert "value\r\n" not in str(caught.value)


def test_a_login_with_a_newline_is_refused_when_the_connection_is_read() -> None:
    with pytest.raises(OpportunityConfigurationError, match="login"):
        settings_from_connection(
            "crm",
            host="https://v1.example.com",
            port=None,
            schema=None,
            login="key\r\n",
            password="s",
            extra={},
        )


def test_the_async_driver_makes_the_same_decisions() -> None:
    for reply, payload, requests_made in [
        (answer(503), CREATE, RETRIES + 1),
        (answer(520), CREATE, 1),
        (answer(520), UPDATE, RETRIES + 1),
        (TransportFault(True, "got no answer within 1 s"), CREATE, 1),
    ]:
        sync_transport, async_transport = ScriptedTransport([reply]), ScriptedTransport([reply])
        call = protocol.v1_add_or_update(SETTINGS, payload)
        with pytest.raises(OpportunityError) as sync_error:
            _run(call, sync_transport)
        with pytest.raises(OpportunityError) as async_error:
            asyncio.run(
                perform_async(
                    call, _credentials(), POLICY, async_transport.send_async, async_transport.token_async
                )
            )
        assert type(sync_error.value) is type(async_error.value)
        assert len(sync_transport.requests) == len(async_transport.requests) == requests_made


def test_token_cache_is_shared_by_credentials() -> None:
    cache = TokenCache("static")
    assert Credentials.from_settings(SETTINGS, cache).tokens is cache
    assert not Credentials.from_settings(SETTINGS, cache).can_refresh
