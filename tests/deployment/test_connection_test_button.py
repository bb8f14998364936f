"""The UI's "Test" button: ``test_connection()`` answers for each platform and changes no data.

Each test runs against the mock CRM and compares its write counters and records before and
after; the connection travels the way the API server's test endpoint sends it (as a URI in an
``AIRFLOW_CONN_*`` variable, read back by ``Connection.test_connection()``).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from airflow.models.connection import Connection

from airflow_opportunity_provider.connection import CONN_TYPE, settings_from_connection
from airflow_opportunity_provider.hooks.opportunity import OpportunityHook
from airflow_opportunity_provider.mock_crm.server import TOKEN_PATH, MockCrmServer

WRITE_COUNTERS = ("v1_creates", "v1_updates", "v2_puts")

# Raised inside Airflow's own Connection.test_connection(), which is exactly what the UI runs.
pytestmark = pytest.mark.filterwarnings("ignore:ProvidersManager.hooks is deprecated")


def _data(server: MockCrmServer) -> tuple[dict[str, Any], dict[str, Any]]:
    """The mock's records and counters, read over HTTP as an outside observer would."""
    records = requests.get(server.base_url + "/_mock/opportunities", timeout=10).json()
    counters = requests.get(server.base_url + "/_mock/counters", timeout=10).json()
    return records, counters


def _v1(server: MockCrmServer, secret: str | None = None) -> dict[str, Any]:
    return {
        "host": server.base_url,
        "login": server.config.api_key,
        "password": secret if secret is not None else server.config.api_secret,
    }


def _v2_client_credentials(server: MockCrmServer, secret: str | None = None) -> dict[str, Any]:
    return {
        "v2_base_url": server.base_url,
        "v2_client_id": server.config.client_id,
        "v2_client_secret": secret if secret is not None else server.config.client_secret,
        "v2_oauth_url": server.base_url + TOKEN_PATH,
    }


def _press_test(
    monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any], extra: dict[str, Any] | None = None
) -> tuple[bool, str]:
    """What the API server's ``POST /connections/test`` does with the form's values."""
    conn = Connection(
        conn_id="ui_transient_test",
        conn_type=CONN_TYPE,
        extra=json.dumps(extra) if extra else None,
        **fields,
    )
    monkeypatch.setenv("AIRFLOW_CONN_UI_TRANSIENT_TEST", conn.get_uri())
    status, message = conn.test_connection()
    return bool(status), str(message)


def _assert_nothing_written(
    before: tuple[dict[str, Any], dict[str, Any]], after: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    (records_before, counters_before), (records_after, counters_after) = before, after
    assert records_after == records_before
    for name in WRITE_COUNTERS:
        assert counters_after[name] == counters_before[name] == 0, name


def test_v1_test_sends_the_signed_ping_and_writes_nothing(
    mock_crm: MockCrmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _data(mock_crm)
    status, message = _press_test(monkeypatch, _v1(mock_crm))
    after = _data(mock_crm)
    assert status, message
    assert "v1" in message
    assert after[1]["by_endpoint"].get("v1_ping") == 1  # it did reach the platform
    assert after[1]["auth_failures"] == 0
    _assert_nothing_written(before, after)


def test_v2_test_with_client_credentials_fetches_a_token_and_writes_nothing(
    mock_crm: MockCrmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _data(mock_crm)
    status, message = _press_test(monkeypatch, {}, _v2_client_credentials(mock_crm))
    after = _data(mock_crm)
    assert status, message
    assert "v2" in message
    assert after[1]["token_issued"] == 1
    assert after[1]["by_endpoint"].get("v2_get") == 1
    _assert_nothing_written(before, after)


def test_v2_test_with_a_static_token(mock_crm: MockCrmServer, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = {"v2_base_url": mock_crm.base_url, "v2_token": mock_crm.config.static_token}
    before = _data(mock_crm)
    status, message = _press_test(monkeypatch, {}, extra)
    after = _data(mock_crm)
    assert status, message
    assert after[1]["token_issued"] == 0
    _assert_nothing_written(before, after)


def test_a_connection_with_both_platforms_tests_both(
    mock_crm: MockCrmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _data(mock_crm)
    status, message = _press_test(monkeypatch, _v1(mock_crm), _v2_client_credentials(mock_crm))
    after = _data(mock_crm)
    assert status, message
    assert "v1" in message
    assert "v2" in message
    _assert_nothing_written(before, after)


@pytest.mark.parametrize("platform", ["v1", "v2"])
def test_a_wrong_secret_fails_the_test_without_showing_it(
    mock_crm: MockCrmServer, monkeypatch: pytest.MonkeyPatch, platform: str
) -> None:
    wrong = "wrong-secret-never-shown-0042"
    if platform == "v1":
        status, message = _press_test(monkeypatch, _v1(mock_crm, secret=wrong))
    else:
        status, message = _press_test(monkeypatch, {}, _v2_client_credentials(mock_crm, secret=wrong))
    assert not status
    assert message
    assert wrong not in message
    assert mock_crm.config.api_secret not in message
    assert mock_crm.config.client_secret not in message
    _, counters = _data(mock_crm)
    assert all(counters[name] == 0 for name in WRITE_COUNTERS)


def test_a_connection_without_either_platform_says_what_to_fill_in(monkeypatch: pytest.MonkeyPatch) -> None:
    status, message = _press_test(monkeypatch, {}, {"timeout": 5})
    assert not status
    assert "v1" in message
    assert "v2_base_url" in message


def test_an_unreachable_platform_fails_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from_connection(
        "unreachable",
        host="http://127.0.0.1:9",  # discard port: nothing listens
        port=None,
        schema=None,
        login="key",
        password="secret-value-0001",
        extra={"timeout": 2, "max_retries": 0},
    )
    status, message = OpportunityHook(settings=settings).test_connection()
    assert not status
    assert "connect" in message
    assert "secret-value-0001" not in message


# -- answering fast and clearly -----------------------------------------------------------------

TIMEOUT = 2.0
# The button's bound: the connection's timeout and a second, with a second more for a slow machine.
BOUND = TIMEOUT + 2.0
CONN_ID = "ui_transient_test"


@pytest.fixture
def hung_host() -> Iterator[str]:
    """The address of a socket that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture
def closed_port() -> str:
    """The address of a port nothing listens on (bound once, then freed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _timed_press(
    monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any], extra: dict[str, Any] | None = None
) -> tuple[bool, str, float]:
    began = time.monotonic()
    status, message = _press_test(monkeypatch, fields, {"timeout": TIMEOUT, **(extra or {})})
    return status, message, time.monotonic() - began


def _assert_shows_nothing_secret(message: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in message
    assert CONN_ID not in message  # Airflow tests a form under a throwaway id: it means nothing to the person


def _token_requests(server: MockCrmServer) -> int:
    return int(_data(server)[1]["by_endpoint"].get("oauth_token", 0))


@pytest.mark.parametrize("platform", ["v1", "v2"])
def test_a_host_that_accepts_and_never_answers_fails_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch, hung_host: str, platform: str
) -> None:
    secret = "hung-secret-value-0003"
    if platform == "v1":
        fields, extra = {"host": hung_host, "login": "key", "password": secret}, {}
    else:
        fields = {}
        extra = {
            "v2_base_url": hung_host,
            "v2_client_id": "client",
            "v2_client_secret": secret,
            "v2_oauth_url": hung_host + TOKEN_PATH + "?tenant=query-never-shown",
        }

    status, message, elapsed = _timed_press(monkeypatch, fields, extra)

    assert not status
    assert elapsed < BOUND, f"{elapsed:.1f} s: {message}"
    label = {"v1": "v1 (iVvy)", "v2": "v2 (Nexus)"}[platform]
    assert message.startswith(f"{label} at {hung_host}: ")
    assert f"no answer within {TIMEOUT:g} s" in message
    assert "query-never-shown" not in message
    _assert_shows_nothing_secret(message, secret)


def test_both_platforms_on_a_hung_host_are_tested_at_once(
    monkeypatch: pytest.MonkeyPatch, hung_host: str
) -> None:
    fields = {"host": hung_host, "login": "key", "password": "hung-secret-value-0004"}
    extra = {"v2_base_url": hung_host, "v2_token": "static-token-value-0005"}

    status, message, elapsed = _timed_press(monkeypatch, fields, extra)

    assert not status
    # In parallel: one timeout, not two.
    assert elapsed < BOUND, f"{elapsed:.1f} s: {message}"
    assert f"v1 (iVvy) at {hung_host}" in message
    assert f"v2 (Nexus) at {hung_host}" in message
    _assert_shows_nothing_secret(message, "hung-secret-value-0004", "static-token-value-0005")


@pytest.mark.parametrize("platform", ["v1", "v2"])
def test_a_closed_port_names_the_address_tried(
    monkeypatch: pytest.MonkeyPatch, closed_port: str, platform: str
) -> None:
    secret = "closed-secret-value-0006"
    if platform == "v1":
        fields, extra = {"host": closed_port, "login": "key", "password": secret}, {}
    else:
        fields = {}
        extra = {
            "v2_base_url": closed_port,
            "v2_client_id": "client",
            "v2_client_secret": secret,
            "v2_oauth_url": closed_port + TOKEN_PATH,
        }

    status, message, elapsed = _timed_press(monkeypatch, fields, extra)

    assert not status
    assert elapsed < BOUND, f"{elapsed:.1f} s: {message}"
    label = {"v1": "v1 (iVvy)", "v2": "v2 (Nexus)"}[platform]
    assert message.startswith(f"{label} at {closed_port}: ")
    assert "could not connect" in message
    assert closed_port in message.split(": ", 1)[1]  # the request's own address, too
    _assert_shows_nothing_secret(message, secret)
    if platform == "v1":
        assert "host and port" in message
        assert "v2" not in message
    else:
        assert "extra.v2_oauth_url" in message
        assert "password" not in message


def test_a_wrong_v1_secret_talks_only_about_v1_fields(
    mock_crm: MockCrmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-v1-secret-never-shown-0007"

    status, message, elapsed = _timed_press(monkeypatch, _v1(mock_crm, secret=wrong))

    assert not status
    assert elapsed < BOUND
    assert message.startswith(f"v1 (iVvy) at {mock_crm.base_url}: ")
    assert "login (the v1 API key)" in message
    assert "password (the v1 API secret)" in message
    assert "v2" not in message
    assert "extra." not in message
    _assert_shows_nothing_secret(message, wrong, mock_crm.config.api_secret)
    assert _data(mock_crm)[1]["by_endpoint"] == {"v1_ping": 1}  # one attempt, no retry


def test_a_wrong_v2_client_secret_asks_for_one_token_and_talks_only_about_v2_fields(
    mock_crm: MockCrmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-v2-secret-never-shown-0008"

    status, message, elapsed = _timed_press(monkeypatch, {}, _v2_client_credentials(mock_crm, secret=wrong))

    assert not status
    assert elapsed < BOUND
    assert message.startswith(f"v2 (Nexus) at {mock_crm.base_url}: ")
    assert "extra.v2_client_secret" in message
    assert "v1" not in message
    assert "login" not in message
    assert "password" not in message
    _assert_shows_nothing_secret(message, wrong, mock_crm.config.client_secret)
    assert _token_requests(mock_crm) == 1


@pytest.mark.parametrize("platforms", ["v1", "v2", "both"])
def test_a_passing_press_names_each_platform_and_asks_for_one_token(
    mock_crm: MockCrmServer, monkeypatch: pytest.MonkeyPatch, platforms: str
) -> None:
    fields = _v1(mock_crm) if platforms in ("v1", "both") else {}
    extra = _v2_client_credentials(mock_crm) if platforms in ("v2", "both") else {}

    status, message, elapsed = _timed_press(monkeypatch, fields, extra)

    assert status, message
    assert elapsed < BOUND
    assert (f"v1 (iVvy) at {mock_crm.base_url}: the signed test ping was accepted" in message) == (
        platforms != "v2"
    )
    assert (f"v2 (Nexus) at {mock_crm.base_url}: a token from {mock_crm.base_url} was issued" in message) == (
        platforms != "v1"
    )
    assert _token_requests(mock_crm) == (0 if platforms == "v1" else 1)
    _assert_shows_nothing_secret(message, mock_crm.config.api_secret, mock_crm.config.client_secret)
