"""The fault matrix over real loopback, against both clients: every way an answer can go wrong,
what each client makes of it, and how many requests reached the server.

A v1 create is sent again only after a definite refusal (429, 503, nothing sent); every other
fault leaves its outcome unknown after exactly one request. Idempotent calls (a v1 update, a v2
put) are retried, at most ``RETRIES`` times. Both clients must agree on every row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import certifi
import pytest

from airflow_opportunity_provider.connection import OpportunitySettings, settings_from_connection
from airflow_opportunity_provider.mock_crm import FaultConfig, MockCrmServer
from airflow_opportunity_provider.mock_crm.testing import connection_dict
from tests.integration.hooks.both_clients import (
    CALLS,
    RECORD,
    RETRIES,
    V1_OK,
    BothClients,
    assert_no_secret,
    run_client,
    settings_for,
)
from tests.integration.hooks.fault_servers import (
    Behaviour,
    Certificate,
    FaultServer,
    answer,
    chunked_cut,
    closed_port,
    drop,
    hang_for,
    short_body,
    tls_alert,
)

HTML = {"Content-Type": "text/html"}
READ_TIMEOUT = 0.3


def _ok(call: str) -> Behaviour:
    return answer(200, RECORD if call == "put" else V1_OK)


# Faults whose outcome may be processed: (label, behaviour, the calls it applies to, TLS?).
UNKNOWN_FAULTS: list[tuple[str, Callable[[], Behaviour], tuple[str, ...], bool]] = [
    ("dropped after reading", lambda: drop, CALLS, False),
    ("TLS dropped after reading", lambda: drop, CALLS, True),
    ("TLS alert after reading", lambda: tls_alert, CALLS, True),
    ("chunked answer cut", lambda: chunked_cut, CALLS, False),
    ("Content-Length over the body", lambda: short_body, CALLS, False),
    ("200 HTML", lambda: answer(200, "<html><body>Welcome</body></html>", HTML), CALLS, False),
    ("200 success without id", lambda: answer(200, {"success": True}), ("create", "update"), False),
    ("200 JSON that is not a record", lambda: answer(200, [1, 2]), ("put",), False),
    ("read timeout", lambda: hang_for(2.0), CALLS, False),
    *[
        (str(status), lambda status=status: answer(status, "<html>error</html>", HTML), CALLS, False)
        for status in (408, 499, 500, 502, 504, 520, 524, 527)
    ],
]
ROWS = [(label, fault, call, tls) for label, fault, calls, tls in UNKNOWN_FAULTS for call in calls]
IDS = [f"{label}-{call}" for label, _, call, _ in ROWS]


def _server(script: list[Behaviour], tls: bool, certificate: Certificate) -> FaultServer:
    return FaultServer(script, tls=certificate.server_context() if tls else None)


def _settings(server: FaultServer, certificate: Certificate, **extra: Any) -> OpportunitySettings:
    return settings_for(
        server.base_url, read_timeout=READ_TIMEOUT, verify=str(certificate.cert_path), **extra
    )


@pytest.mark.parametrize(("label", "fault", "call", "tls"), ROWS, ids=IDS)
def test_a_fault_that_may_follow_processing(
    label: str,
    fault: Callable[[], Behaviour],
    call: str,
    tls: bool,
    both_clients: BothClients,
    certificate: Certificate,
) -> None:
    # The fault first, then a clean answer: a create must never reach the clean answer.
    with _server([fault(), _ok(call)], tls, certificate) as server:
        hook, _client = both_clients.run(_settings(server, certificate), call, [server])
    if call == "create":
        assert hook.outcome == "unknown", hook
        assert hook.api_requests == 1
    else:
        assert hook.outcome == ("updated id 755" if call == "update" else "put ok"), hook
        assert hook.api_requests == 2


# The read timeout's decision is the same as in the rows above; three timeouts per client would
# cost a second and show nothing more.
BOUNDED = [
    (row, i) for row, i in zip(ROWS, IDS, strict=True) if row[2] != "create" and row[0] != "read timeout"
]


@pytest.mark.parametrize(
    ("label", "fault", "call", "tls"), [row for row, _ in BOUNDED], ids=[i for _, i in BOUNDED]
)
def test_an_idempotent_call_is_retried_a_bounded_number_of_times(
    label: str,
    fault: Callable[[], Behaviour],
    call: str,
    tls: bool,
    both_clients: BothClients,
    certificate: Certificate,
) -> None:
    with _server([fault()], tls, certificate) as server:
        hook, _ = both_clients.run(_settings(server, certificate), call, [server])
    assert hook.error is not None
    assert hook.api_requests == RETRIES + 1


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("call", CALLS)
def test_a_refusal_with_retry_after_is_retried_for_every_call(
    status: int, call: str, both_clients: BothClients, certificate: Certificate
) -> None:
    refusal = answer(status, {"errorCode": status, "message": "slow down"}, {"Retry-After": "1"})
    with FaultServer([refusal, _ok(call)]) as server:
        hook, _ = both_clients.run(_settings(server, certificate), call, [server])
    assert hook.outcome in ("created id 755", "updated id 755", "put ok")
    assert hook.api_requests == 2


@pytest.mark.parametrize("call", CALLS)
def test_a_closed_port_is_retried_then_fails_and_nothing_was_received(
    call: str, both_clients: BothClients
) -> None:
    port = closed_port()
    with FaultServer([answer(200, V1_OK)]) as bystander:
        settings = settings_for(f"http://127.0.0.1:{port}")
        hook, client = both_clients.run(settings, call, [bystander])
    assert hook.outcome == "OpportunityConnectionError sent=False"
    assert hook.error is not None
    assert client.error is not None
    assert str(port) in str(hook.error)
    # Every attempt was made, and each was logged as a retry before the next.
    logged = both_clients.log_text
    assert logged.count(f"(attempt {RETRIES} of {RETRIES + 1})") == 1
    assert logged.count(f"attempt {RETRIES} failed") == 1


@pytest.mark.parametrize("call", CALLS)
def test_an_untrusted_certificate_fails_the_handshake_so_nothing_was_sent(
    call: str, both_clients: BothClients, certificate: Certificate
) -> None:
    with _server([_ok(call)], True, certificate) as server:
        # The system's CA bundle does not trust a self-signed certificate.
        hook, _client = both_clients.run(settings_for(server.base_url, verify=True), call, [server])
    assert hook.outcome == "OpportunityConnectionError sent=False"
    assert hook.api_requests == 0


def test_a_create_refused_then_dropped_is_received_twice_but_never_a_third_time(
    both_clients: BothClients, certificate: Certificate
) -> None:
    with FaultServer([answer(503, b"", {"Retry-After": "1"}), drop, _ok("create")]) as server:
        hook, _ = both_clients.run(_settings(server, certificate), "create", [server])
    assert hook.outcome == "unknown"
    assert hook.api_requests == 2


def test_a_put_on_a_kept_alive_connection_that_drops_is_one_attempt_per_request(
    both_clients: BothClients, certificate: Certificate
) -> None:
    # aiohttp on its own resends a PUT once when a pooled connection drops; the flow's count of
    # attempts (and of requests the server saw) must not depend on the client.
    with FaultServer([drop, drop, drop]) as server:
        hook, client = both_clients.run(_settings(server, certificate, max_retries=0), "put", [server])
    assert hook.api_requests == client.api_requests == 1


@pytest.mark.parametrize("verify", ["bundle", False], ids=["the connection's CA bundle", "verify off"])
def test_requests_ca_bundle_never_replaces_the_connections_verify(
    verify: str | bool,
    both_clients: BothClients,
    certificate: Certificate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A bundle that does not hold the test certificate, as a machine's environment may name one.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    with _server([_ok("create")], True, certificate) as server:
        setting = str(certificate.cert_path) if verify == "bundle" else False
        hook, _ = both_clients.run(settings_for(server.base_url, verify=setting), "create", [server])
    assert hook.outcome == "created id 755"


def test_a_create_the_mock_crm_stores_then_drops_is_stored_once_per_client(
    mock_crm: MockCrmServer, both_clients: BothClients
) -> None:
    settings = settings_from_connection("mock", **_mock_connection(mock_crm))
    mock_crm.set_faults(FaultConfig(drop_after_commit_rate=1.0))
    stored = []
    for client in ("hook", "async"):
        result = run_client(client, settings, "create", [])
        assert result.outcome == "unknown"
        stored.append(len(mock_crm.store.v1_records()))
    assert stored == [1, 2]
    assert_no_secret([], both_clients.log_text, mock_crm.config.api_secret)


def _mock_connection(server: MockCrmServer) -> dict[str, Any]:
    conn = connection_dict(server.base_url, server.config, max_retries=RETRIES)
    return {key: conn[key] for key in ("host", "port", "login", "password", "extra")} | {"schema": None}
