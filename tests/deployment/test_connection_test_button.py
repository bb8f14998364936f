"""The UI's "Test" button: ``test_connection()`` answers for each platform and changes no data.

Each test runs against the mock CRM and compares its write counters and records before and
after; the connection travels the way the API server's test endpoint sends it (as a URI in an
``AIRFLOW_CONN_*`` variable, read back by ``Connection.test_connection()``).
"""

from __future__ import annotations

import json
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
