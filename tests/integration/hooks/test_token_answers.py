"""Token answers over real loopback, against both clients: only a non-empty string ``access_token``
is a token; anything else is a clear error, and the put is never sent with a bogus bearer. A 401
gets one new token and one repeat.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.hooks.both_clients import (
    ISSUED_TOKEN,
    RECORD,
    BothClients,
    settings_for,
)
from tests.integration.hooks.fault_servers import Behaviour, FaultServer, Received, answer

TOKEN_PATH = "/oauth/token"


def _routes(server: FaultServer, token: Behaviour, puts: list[Behaviour] | None = None) -> Any:
    """Token requests get ``token``; the n-th other request of a run gets ``puts[n]`` (the last repeats)."""
    answers = puts or [answer(200, RECORD)]

    def route(request: Received) -> Behaviour:
        if request.path.startswith(TOKEN_PATH):
            return token
        sent = sum(1 for seen in server.received if not seen.path.startswith(TOKEN_PATH))
        return answers[min(sent - 1, len(answers) - 1)]

    return route


@pytest.mark.parametrize(
    ("token_answer", "outcome", "token_requests"),
    [
        (answer(200, {"token_type": "Bearer", "expires_in": 3600}), "OpportunityAuthenticationError 200", 1),
        (answer(200, {"access_token": "", "expires_in": 3600}), "OpportunityAuthenticationError 200", 1),
        (answer(200, {"access_token": 12345}), "OpportunityAuthenticationError 200", 1),
        (answer(200, {"access_token": None}), "OpportunityAuthenticationError 200", 1),
        (answer(200, ["access_token"]), "OpportunityAuthenticationError 200", 1),
        # A sign-in page, not a token endpoint: asking again would bring the same page.
        (
            answer(200, "<html>Sign in</html>", {"Content-Type": "text/html"}),
            "OpportunityAuthenticationError 200",
            1,
        ),
    ],
    ids=["no access_token", "empty", "a number", "null", "a list", "HTML"],
)
def test_a_token_answer_without_a_usable_token_never_lets_the_put_leave(
    token_answer: Behaviour, outcome: str, token_requests: int, both_clients: BothClients
) -> None:
    with FaultServer([]) as server:
        server.script = _routes(server, token_answer)
        settings = settings_for(server.base_url, token_url=server.base_url + TOKEN_PATH)
        hook, client = both_clients.run(settings, "put", [server])
    assert hook.outcome == outcome
    assert hook.api_requests == client.api_requests == 0
    assert hook.token_requests == client.token_requests == token_requests
    assert "127.0.0.1" in str(hook.error)
    if outcome.startswith("OpportunityAuthenticationError"):
        assert "access_token" in str(hook.error)
        assert "extra.v2_oauth_url" in str(hook.error)


def test_a_token_is_fetched_once_and_sent_as_the_bearer(both_clients: BothClients) -> None:
    with FaultServer([]) as server:
        server.script = _routes(server, answer(200, {"access_token": ISSUED_TOKEN, "expires_in": 3600}))
        settings = settings_for(server.base_url, token_url=server.base_url + TOKEN_PATH)
        hook, client = both_clients.run(settings, "put", [server])
    assert hook.outcome == "put ok"
    for result in (hook, client):
        assert result.token_requests == 1
        (put,) = [request for request in result.received[0] if request.method == "PUT"]
        assert put.headers["authorization"] == f"Bearer {ISSUED_TOKEN}"


def test_a_401_gets_one_new_token_and_one_repeat(both_clients: BothClients) -> None:
    denied = answer(401, {"message": "token revoked"})
    with FaultServer([]) as server:
        server.script = _routes(
            server,
            answer(200, {"access_token": ISSUED_TOKEN, "expires_in": 3600}),
            [denied, answer(200, RECORD)],
        )
        settings = settings_for(server.base_url, token_url=server.base_url + TOKEN_PATH)
        hook = both_clients.run(settings, "put", [server])[0]
        assert hook.outcome == "put ok"
        assert hook.token_requests == 2
        assert hook.api_requests == 2


def test_a_second_401_is_an_authentication_error_after_two_puts(both_clients: BothClients) -> None:
    with FaultServer([]) as server:
        server.script = _routes(
            server,
            answer(200, {"access_token": ISSUED_TOKEN, "expires_in": 3600}),
            [answer(401, {"message": "no"})],
        )
        settings = settings_for(server.base_url, token_url=server.base_url + TOKEN_PATH)
        hook, client = both_clients.run(settings, "put", [server])
    assert hook.outcome == "OpportunityAuthenticationError 401"
    assert hook.api_requests == client.api_requests == 2
    assert hook.token_requests == client.token_requests == 2
