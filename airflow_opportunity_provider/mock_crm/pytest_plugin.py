"""pytest fixtures that start a mock CRM server on a free loopback port, and small helpers to
send it signed v1 requests (the opportunity list included) and v2 token requests. Enable with
``pytest_plugins = ["airflow_opportunity_provider.mock_crm.pytest_plugin"]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import pytest
import requests

from airflow_opportunity_provider.auth import client_credentials_form, sign_v1_request
from airflow_opportunity_provider.mock_crm.config import MockCrmConfig
from airflow_opportunity_provider.mock_crm.server import TOKEN_PATH, MockCrmServer

V1_OPPORTUNITY_REQUEST = "/api/1.0/venue?action=addOrUpdateOpportunity"
V1_LIST_REQUEST = "/api/1.0/crm?action=getOpportunityList"
V1_PING_REQUEST = "/api/1.0/test?action=ping"


@pytest.fixture
def mock_crm_config() -> MockCrmConfig:
    """The configuration ``mock_crm`` starts with; override this fixture to change it."""
    return MockCrmConfig()


@pytest.fixture
def mock_crm(mock_crm_config: MockCrmConfig) -> Iterator[MockCrmServer]:
    """A started :class:`MockCrmServer` on a free loopback port, reset and stopped after the test."""
    server = MockCrmServer(mock_crm_config).start()
    try:
        yield server
    finally:
        server.reset()
        server.stop()


@pytest.fixture
def mock_crm_session() -> Iterator[requests.Session]:
    """A ``requests`` session (keep-alive) closed after the test."""
    with requests.Session() as session:
        yield session


def post_v1(
    server: MockCrmServer,
    payload: Mapping[str, Any] | bytes,
    *,
    request_string: str = V1_OPPORTUNITY_REQUEST,
    api_key: str | None = None,
    api_secret: str | None = None,
    now: datetime | None = None,
    session: requests.Session | None = None,
    extra_headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> requests.Response:
    """Send one v1 request signed as the client signs it (``auth.sign_v1_request``).

    :param server: a started mock server.
    :param payload: a JSON object, or the exact body bytes.
    :param request_string: path and query.
    :param api_key: the key to sign with (the server's when omitted).
    :param api_secret: the secret to sign with (the server's when omitted).
    :param now: the request date (now when omitted).
    :param session: the session to send on (a one-off request when omitted).
    :param extra_headers: headers added after signing (to tamper with a request).
    :param timeout: seconds to wait for the answer.
    """
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = sign_v1_request(
        api_key or server.config.api_key,
        api_secret or server.config.api_secret,
        request_string,
        body,
        now=now,
    )
    headers.update(extra_headers or {})
    sender: Any = session or requests
    return sender.post(server.base_url + request_string, data=body, headers=headers, timeout=timeout)


def list_v1(
    server: MockCrmServer, parameters: Mapping[str, Any] | None = None, **options: Any
) -> dict[str, Any]:
    """Ask for one page of v1 opportunities (signed) and return the answer's body.

    :param server: a started mock server.
    :param parameters: ``venueIds``, ``perPage``, ``start`` and ``filter``; none when omitted.
    :param options: passed to :func:`post_v1` (``session``, ``now``, ...).
    :raises requests.HTTPError: when the answer is not a 200.
    """
    response = post_v1(server, dict(parameters or {}), request_string=V1_LIST_REQUEST, **options)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def fetch_v2_token(server: MockCrmServer, session: requests.Session | None = None) -> str:
    """Fetch a bearer token with the server's client credentials.

    :param server: a started mock server.
    :param session: the session to send on (a one-off request when omitted).
    """
    sender: Any = session or requests
    form = client_credentials_form(server.config.client_id, server.config.client_secret, None)
    response = sender.post(server.base_url + TOKEN_PATH, data=form, timeout=10)
    response.raise_for_status()
    return str(response.json()["access_token"])
