"""Redirects are refused by both clients: the redirect target receives nothing (no signature, no
bearer token, no client secret), and the error names the status and the target's host, never
its query.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.hooks.both_clients import (
    API_KEY,
    CALLS,
    CLIENT_SECRET,
    RECORD,
    STATIC_TOKEN,
    TOKEN_PATH,
    BothClients,
    settings_for,
)
from tests.integration.hooks.fault_servers import Behaviour, FaultServer, Received, answer

REDIRECTS = (301, 302, 303, 307, 308)
QUERY = "sig=redirect-query-secret&token=redirect-query-token"


def _redirect(status: int, target: FaultServer) -> Behaviour:
    # "localhost" tells the target's host apart from the answering server's 127.0.0.1.
    location = f"http://localhost:{target.port}/take?{QUERY}"
    return answer(status, b"", {"Location": location})


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("status", REDIRECTS)
def test_a_redirect_is_refused_and_its_target_receives_nothing(
    status: int, call: str, both_clients: BothClients
) -> None:
    with FaultServer([answer(200, RECORD)]) as target, FaultServer([]) as redirecting:
        redirecting.script = [_redirect(status, target)]
        hook, client = both_clients.run(settings_for(redirecting.base_url), call, [redirecting, target])
    assert hook.outcome == ("unknown" if call == "create" else f"OpportunityRedirectError {status}")
    # Never sent again: a repeat would be redirected again.
    assert hook.api_requests == 1
    assert hook.received[1] == client.received[1] == ()
    for result in (hook, client):
        message = str(result.error)
        assert f"HTTP {status}" in message
        assert "localhost" in message
        assert "redirect-query" not in message
        assert "redirect-query" not in repr(result.error)


@pytest.mark.parametrize("status", REDIRECTS)
def test_a_redirected_token_request_sends_nothing_to_the_target_and_no_put(
    status: int, both_clients: BothClients
) -> None:
    with FaultServer([answer(200, RECORD)]) as target, FaultServer([]) as redirecting:
        redirect = _redirect(status, target)

        def route(request: Received) -> Behaviour:
            return redirect if request.path.startswith(TOKEN_PATH) else answer(200, RECORD)

        redirecting.script = route
        settings = settings_for(redirecting.base_url, token_url=redirecting.base_url + TOKEN_PATH)
        hook, client = both_clients.run(settings, "put", [redirecting, target])
    assert hook.outcome == f"OpportunityRedirectError {status}"
    assert hook.api_requests == client.api_requests == 0
    assert hook.token_requests == client.token_requests == 1
    assert hook.received[1] == client.received[1] == ()
    assert "localhost" in str(hook.error)
    assert "redirect-query" not in str(hook.error)


def test_no_request_carries_a_secret_to_any_host_but_its_own(both_clients: BothClients) -> None:
    # The one host that may see the client secret is the token endpoint; the API secret is never sent.
    with FaultServer([answer(200, RECORD)]) as api, FaultServer([]) as tokens:
        tokens.script = [answer(200, {"access_token": "matrix-issued-token-2206", "expires_in": 3600})]
        settings = settings_for(api.base_url, token_url=tokens.base_url + TOKEN_PATH)
        hook, client = both_clients.run(settings, "put", [api, tokens])
        for result in (hook, client):
            assert result.outcome == "put ok"
            assert all(CLIENT_SECRET not in request.raw for request in result.received[0])
            assert all(CLIENT_SECRET in request.raw for request in result.received[1])
        hook, client = both_clients.run(settings, "create", [api, tokens])
    for result in (hook, client):
        assert result.received[1] == ()
        (request,) = result.received[0]
        assert request.headers["x-api-authorization"].startswith(f"IWS {API_KEY}:")
        assert "matrix-api-secret" not in request.raw
        assert "authorization" not in request.headers


@pytest.mark.parametrize("call", CALLS)
def test_a_netrc_entry_for_the_host_never_changes_what_is_sent(
    call: str, both_clients: BothClients, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # requests reads ~/.netrc (or $NETRC) for a session that trusts the environment, and its Basic
    # credentials would replace the bearer token, or go along with a signed v1 request.
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-password\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with FaultServer([answer(200, RECORD if call == "put" else {"success": True, "id": 755})]) as server:
        hook, client = both_clients.run(settings_for(server.base_url), call, [server])
    for result in (hook, client):
        (request,) = result.received[0]
        authorization = request.headers.get("authorization")
        assert authorization == (f"Bearer {STATIC_TOKEN}" if call == "put" else None), result.outcome
