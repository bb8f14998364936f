"""The connection's public shape, read into settings, with errors that name the fields to fill in."""

from __future__ import annotations

import pytest

from airflow_opportunity_provider.connection import base_url_from, settings_from_connection
from airflow_opportunity_provider.errors import OpportunityConfigurationError


@pytest.mark.parametrize(
    ("host", "port", "schema", "expected"),
    [
        ("api.example.com", None, None, "https://api.example.com"),
        ("api.example.com", 8443, None, "https://api.example.com:8443"),
        ("http://127.0.0.1", 8080, None, "http://127.0.0.1:8080"),
        ("http://127.0.0.1:9000/", None, None, "http://127.0.0.1:9000"),
        ("https://proxy.example.com/crm", None, None, "https://proxy.example.com/crm"),
        ("api.example.com", None, "http", "http://api.example.com"),
        (None, 80, None, None),
    ],
)
def test_base_url_like_http_hook(
    host: str | None, port: int | None, schema: str | None, expected: str
) -> None:
    assert base_url_from(host, port, schema) == expected


def _settings(**overrides: object):
    fields = {"host": None, "port": None, "schema": None, "login": None, "password": None, "extra": None}
    fields.update(overrides)
    return settings_from_connection("crm", **fields)  # type: ignore[arg-type]


def test_both_platforms_and_shared_extras() -> None:
    settings = _settings(
        host="http://127.0.0.1",
        port=8080,
        login="api-key-0001",
        password="api-secret-0001",
        extra={
            "v2_base_url": "http://127.0.0.1:8080/",
            "v2_client_id": "client-0001",
            "v2_client_secret": "client-secret-0001",
            "v2_oauth_url": "http://127.0.0.1:8080/oauth/token",
            "timeout": 5,
            "verify": "false",
            "max_retries": "2",
        },
    )
    assert settings.require_v1() == ("http://127.0.0.1:8080", "api-key-0001", "api-secret-0001")
    assert settings.require_v2() == "http://127.0.0.1:8080"
    assert (settings.read_timeout, settings.connect_timeout) == (5.0, 5.0)
    assert settings.verify is False
    assert settings.max_retries == 2
    assert set(settings.secrets) == {"api-secret-0001", "client-secret-0001"}
    assert "api-secret-0001" not in repr(settings)
    assert "client-secret-0001" not in repr(settings)


def test_defaults() -> None:
    settings = _settings(host="api.example.com", login="k", password="s")
    assert settings.verify is True
    assert settings.max_retries == 5
    assert (settings.connect_timeout, settings.read_timeout) == (10.0, 60.0)


def test_missing_v1_fields_are_named() -> None:
    with pytest.raises(OpportunityConfigurationError) as caught:
        _settings(host="api.example.com").require_v1()
    message = str(caught.value)
    assert "login (the v1 API key)" in message
    assert "password (the v1 API secret)" in message
    assert "host" not in message.split("fill in")[1].split(",")[0]


def test_missing_v2_fields_are_named() -> None:
    with pytest.raises(OpportunityConfigurationError) as caught:
        _settings(extra={"v2_client_id": "client-0001"}).require_v2()
    message = str(caught.value)
    assert "extra.v2_base_url" in message
    assert "extra.v2_token" in message
    assert "missing: extra.v2_client_secret, extra.v2_oauth_url" in message


def test_static_token_is_enough_for_v2() -> None:
    settings = _settings(extra={"v2_base_url": "https://nexus.example.com", "v2_token": "static-token-0001"})
    assert settings.require_v2() == "https://nexus.example.com"
    assert settings.has_v2
    assert not settings.has_v1


def test_ui_form_prefixed_extras_are_read() -> None:
    settings = _settings(extra={"extra__opportunity_crm__v2_base_url": "https://nexus.example.com"})
    assert settings.v2_base_url == "https://nexus.example.com"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"timeout": "soon"}, "extra.timeout must be a number"),
        ({"timeout": 0}, "extra.timeout must be above 0"),
        ({"max_retries": "many"}, "extra.max_retries must be a whole number"),
        ({"max_retries": -1}, "extra.max_retries must be 0 or more"),
        ("{not json", "extra is not valid JSON"),
    ],
)
def test_bad_extras_say_what_to_change(extra: object, fragment: str) -> None:
    with pytest.raises(OpportunityConfigurationError, match=fragment):
        _settings(extra=extra)
