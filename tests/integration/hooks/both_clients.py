"""The same call through ``OpportunityHook`` and through ``AsyncOpportunityClient``, reduced to an
outcome both can be compared on ("created id 5", "unknown", "OpportunityServerError 400") and
to what the servers received, with a check that no secret reached an error, a repr or a log line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from airflow_opportunity_provider.connection import OpportunitySettings, settings_from_connection
from airflow_opportunity_provider.errors import (
    OpportunityApiError,
    OpportunityConnectionError,
    OpportunityError,
    OpportunityOutcomeUnknownError,
)
from airflow_opportunity_provider.hooks.async_client import AsyncOpportunityClient
from airflow_opportunity_provider.hooks.opportunity import OpportunityHook
from airflow_opportunity_provider.retries import Backoff
from tests.integration.hooks.fault_servers import FaultServer, Received

API_KEY = "matrix-api-key"
API_SECRET = "matrix-api-secret-0451"
CLIENT_ID = "matrix-client"
CLIENT_SECRET = "matrix-client-secret-9931"
STATIC_TOKEN = "matrix-static-token-7788"
ISSUED_TOKEN = "matrix-issued-token-2206"
TOKEN_PATH = "/oauth/token"
RETRIES = 2
# No waits between attempts; a Retry-After is honoured up to 50 ms, so that it is still seen.
NO_WAIT = Backoff(initial=0.0, maximum=0.0, max_retry_after=0.05)

CREATE = {
    "venueId": 107,
    "name": "Matrix lead",
    "contactId": 918,
    "typeId": 18,
    "sourceId": 25,
    "stageId": 69,
}
UPDATE = {"id": 755, "venueId": 107, "name": "Renamed"}
PUT = {"Id": 42, "opportunityType": "Pre", "StageName": "Qualified"}
V1_OK = {"success": True, "id": 755}
RECORD = {"ID": 42, "Type": "Pre", "StageName": "Qualified"}
CALLS = ("create", "update", "put")


def settings_for(
    base_url: str,
    *,
    v2_base_url: str | None = None,
    token_url: str | None = None,
    read_timeout: float = 3.0,
    max_retries: int = RETRIES,
    login: str = API_KEY,
    password: str = API_SECRET,
    **extra: Any,
) -> OpportunitySettings:
    """Settings for both platforms at ``base_url``: v2 with the static token, or with client
    credentials when ``token_url`` is given.

    :param base_url: the v1 base URL (and v2's unless ``v2_base_url`` is given).
    :param v2_base_url: the v2 base URL.
    :param token_url: the token endpoint; client credentials are used when it is given.
    :param read_timeout: seconds to wait for an answer.
    :param max_retries: retries after the first attempt.
    :param login: the v1 API key.
    :param password: the v1 API secret.
    :param extra: more connection extras (``verify``, ``proxies``, ...).
    """
    v2: dict[str, Any] = {"v2_base_url": v2_base_url or base_url}
    if token_url is None:
        v2["v2_token"] = STATIC_TOKEN
    else:
        v2.update(v2_client_id=CLIENT_ID, v2_client_secret=CLIENT_SECRET, v2_oauth_url=token_url)
    host, port = base_url.rsplit(":", 1)
    return settings_from_connection(
        "matrix",
        host=host,
        port=int(port),
        schema=None,
        login=login,
        password=password,
        extra={"timeout": [1.0, read_timeout], "max_retries": max_retries, **v2, **extra},
    )


@dataclass(frozen=True)
class Result:
    """What one client made of a call.

    :param outcome: the comparable outcome.
    :param error: the error raised, if any.
    :param received: every request each server received, in server order.
    """

    outcome: str
    error: BaseException | None
    received: tuple[tuple[Received, ...], ...] = field(repr=False)

    @property
    def api_requests(self) -> int:
        """Requests the first server received, token requests left out."""
        return sum(1 for request in self.received[0] if not request.path.startswith(TOKEN_PATH))

    @property
    def token_requests(self) -> int:
        """Token requests every server received."""
        return sum(1 for server in self.received for request in server if request.path.startswith(TOKEN_PATH))


def outcome_of(call: str, value: Any, error: BaseException | None) -> str:
    """The comparable outcome of a call's value or error.

    :param call: ``"create"``, ``"update"`` or ``"put"``.
    :param value: the value returned.
    :param error: the error raised.
    """
    if error is None:
        return f"{'created' if call == 'create' else 'updated'} id {value}" if call != "put" else "put ok"
    if isinstance(error, OpportunityOutcomeUnknownError):
        return "unknown"
    if isinstance(error, OpportunityApiError):
        return f"{type(error).__name__} {error.status_code}"
    if isinstance(error, OpportunityConnectionError):
        return f"{type(error).__name__} sent={error.sent}"
    return type(error).__name__


def _through_hook(settings: OpportunitySettings, call: str) -> tuple[Any, BaseException | None]:
    hook = OpportunityHook(settings=settings, backoff=NO_WAIT)
    try:
        if call == "put":
            return hook.put_opportunity_request(PUT), None
        return hook.add_or_update_opportunity(CREATE if call == "create" else UPDATE), None
    except OpportunityError as error:
        return None, error
    finally:
        hook.close()


async def _through_async_client(settings: OpportunitySettings, call: str) -> tuple[Any, BaseException | None]:
    try:
        async with AsyncOpportunityClient(settings, concurrency=1, backoff=NO_WAIT) as client:
            if call == "put":
                return await client.put_opportunity_request(PUT), None
            return await client.add_or_update_opportunity(CREATE if call == "create" else UPDATE), None
    except OpportunityError as error:
        return None, error


def run_client(
    client: str, settings: OpportunitySettings, call: str, servers: Sequence[FaultServer]
) -> Result:
    """One call through one client, the servers reset first.

    :param client: ``"hook"`` or ``"async"``.
    :param settings: the connection settings.
    :param call: ``"create"``, ``"update"`` or ``"put"``.
    :param servers: the servers whose received requests to report.
    """
    for server in servers:
        server.reset()
    if client == "hook":
        value, error = _through_hook(settings, call)
    else:
        value, error = asyncio.run(_through_async_client(settings, call))
    return Result(outcome_of(call, value, error), error, tuple(tuple(server.received) for server in servers))


def _signatures(results: Sequence[Result]) -> list[str]:
    found = []
    for result in results:
        for server in result.received:
            for request in server:
                authorization = request.headers.get("x-api-authorization", "")
                if ":" in authorization:
                    found.append(authorization.rpartition(":")[2])
    return found


def _texts_of(error: BaseException | None) -> list[str]:
    texts: list[str] = []
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        texts += [str(error), repr(error), repr(getattr(error, "body", None))]
        following = getattr(error, "cause", None) or error.__cause__ or error.__context__
        error = following if isinstance(following, BaseException) else None
    return texts


def assert_no_secret(results: Sequence[Result], log_text: str, *extra: str) -> None:
    """No secret (the API secret, the client secret, a token, a request's signature) appears in
    any error's text or repr, in its cause's, or in what was logged.

    :param results: the results to check.
    :param log_text: everything logged (see :attr:`BothClients.log_text`).
    :param extra: more values that must not appear.
    """
    secrets = [API_SECRET, CLIENT_SECRET, STATIC_TOKEN, ISSUED_TOKEN, *_signatures(results), *extra]
    texts = [text for result in results for text in _texts_of(result.error)] + [log_text]
    for secret in secrets:
        for text in texts:
            assert secret not in text, f"a secret reached: {text[:300]}"


@dataclass
class BothClients:
    """Runs one call through both clients and checks that nothing secret leaked.

    :param caplog: the test's captured log records (the asyncio client logs through ``logging``).
    :param capsys: the test's captured output (Airflow's task logger renders the hook's lines there).
    """

    caplog: pytest.LogCaptureFixture
    capsys: pytest.CaptureFixture[str]
    printed: list[str] = field(default_factory=list)

    @property
    def log_text(self) -> str:
        """Everything logged so far in the test, through either logger."""
        out, err = self.capsys.readouterr()
        self.printed += [out, err]
        return self.caplog.text + "".join(self.printed)

    def run(
        self, settings: OpportunitySettings, call: str, servers: Sequence[FaultServer]
    ) -> tuple[Result, Result]:
        """The call through the hook, then through the async client; the outcomes must agree.

        :param settings: the connection settings.
        :param call: ``"create"``, ``"update"`` or ``"put"``.
        :param servers: the servers whose received requests to report.
        """
        hook = run_client("hook", settings, call, servers)
        client = run_client("async", settings, call, servers)
        assert hook.outcome == client.outcome, (hook, client)
        assert hook.api_requests == client.api_requests, (
            hook.outcome,
            hook.api_requests,
            client.api_requests,
        )
        assert_no_secret((hook, client), self.log_text)
        return hook, client
