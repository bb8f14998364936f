"""Both clients choose a proxy the same way (``proxies.proxy_for``): ``HTTPS_PROXY`` and
``HTTP_PROXY`` send them through a recording proxy, ``NO_PROXY`` naming the host sends them
direct, and the connection's ``extra.proxies`` applies even without the environment.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.hooks.both_clients import RETRIES, V1_OK, BothClients, settings_for
from tests.integration.hooks.fault_servers import (
    Certificate,
    FaultServer,
    RecordingProxy,
    answer,
    closed_port,
)

PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY")


@pytest.fixture
def clean_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variable in either spelling, whatever the machine running the tests sets."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    with RecordingProxy() as running:
        yield running


def test_http_proxy_carries_both_clients_plain_requests(
    clean_proxy_environment: pytest.MonkeyPatch, proxy: RecordingProxy, both_clients: BothClients
) -> None:
    with FaultServer([answer(200, V1_OK)]) as server:
        clean_proxy_environment.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        hook, client = both_clients.run(settings_for(server.base_url), "create", [server])
    assert hook.outcome == "created id 755"
    assert hook.api_requests == client.api_requests == 1
    # One absolute-form request from each client: the proxy, not the server, was their peer.
    assert [request.target for request in proxy.received] == [
        f"{server.base_url}/api/1.0/venue?action=addOrUpdateOpportunity"
    ] * 2


def test_https_proxy_tunnels_both_clients_tls_requests(
    clean_proxy_environment: pytest.MonkeyPatch,
    proxy: RecordingProxy,
    both_clients: BothClients,
    certificate: Certificate,
) -> None:
    with FaultServer([answer(200, V1_OK)], tls=certificate.server_context()) as server:
        clean_proxy_environment.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        settings = settings_for(server.base_url, verify=str(certificate.cert_path))
        hook, _client = both_clients.run(settings, "create", [server])
    assert hook.outcome == "created id 755"
    tunnels = [request for request in proxy.received if request.method == "CONNECT"]
    assert [request.target for request in tunnels] == [f"127.0.0.1:{server.port}"] * 2
    assert len(proxy.received) == 2


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "*"])
def test_no_proxy_naming_the_host_sends_both_clients_direct(
    no_proxy: str,
    clean_proxy_environment: pytest.MonkeyPatch,
    proxy: RecordingProxy,
    both_clients: BothClients,
) -> None:
    with FaultServer([answer(200, V1_OK)]) as server:
        clean_proxy_environment.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        clean_proxy_environment.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        clean_proxy_environment.setenv("NO_PROXY", no_proxy)
        hook, client = both_clients.run(settings_for(server.base_url), "create", [server])
    assert hook.outcome == "created id 755"
    assert hook.api_requests == client.api_requests == 1
    assert proxy.received == []


def test_trust_env_false_ignores_the_environment_for_both_clients(
    clean_proxy_environment: pytest.MonkeyPatch, proxy: RecordingProxy, both_clients: BothClients
) -> None:
    with FaultServer([answer(200, V1_OK)]) as server:
        clean_proxy_environment.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        hook, _ = both_clients.run(settings_for(server.base_url, trust_env=False), "create", [server])
    assert hook.outcome == "created id 755"
    assert proxy.received == []


def test_the_connections_proxies_extra_applies_to_both_clients(
    clean_proxy_environment: pytest.MonkeyPatch, proxy: RecordingProxy, both_clients: BothClients
) -> None:
    with FaultServer([answer(200, V1_OK)]) as server:
        settings = settings_for(server.base_url, proxies={"http": f"http://127.0.0.1:{proxy.port}"})
        hook, _ = both_clients.run(settings, "create", [server])
    assert hook.outcome == "created id 755"
    assert len(proxy.received) == 2
    assert all(request.target.startswith(server.base_url) for request in proxy.received)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_proxy_that_refuses_connections_means_nothing_was_sent_for_both_clients(
    scheme: str,
    clean_proxy_environment: pytest.MonkeyPatch,
    both_clients: BothClients,
    certificate: Certificate,
) -> None:
    tls = certificate.server_context() if scheme == "https" else None
    with FaultServer([answer(200, V1_OK)], tls=tls) as server:
        clean_proxy_environment.setenv(f"{scheme.upper()}_PROXY", f"http://127.0.0.1:{closed_port()}")
        settings = settings_for(server.base_url, verify=str(certificate.cert_path))
        hook, client = both_clients.run(settings, "create", [server])
    # Never reached the proxy, so a create is safely retried, and fails after every attempt.
    assert hook.outcome == "OpportunityConnectionError sent=False"
    assert hook.api_requests == 0
    assert "through the proxy" in str(hook.error)
    assert "through the proxy" in str(client.error)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_proxy_that_asks_for_credentials_is_one_refusal_for_both_clients(
    scheme: str,
    clean_proxy_environment: pytest.MonkeyPatch,
    both_clients: BothClients,
    certificate: Certificate,
) -> None:
    tls = certificate.server_context() if scheme == "https" else None
    with FaultServer([answer(200, V1_OK)], tls=tls) as server, FaultServer([answer(407, b"")]) as proxy:
        clean_proxy_environment.setenv(f"{scheme.upper()}_PROXY", proxy.base_url)
        settings = settings_for(server.base_url, verify=str(certificate.cert_path))
        hook, client = both_clients.run(settings, "create", [proxy, server])
    assert hook.received[1] == client.received[1] == ()
    if scheme == "http":
        # The proxy's own answer to the request it was given: a definite refusal, not repeated.
        assert hook.outcome == "OpportunityRequestFailedError 407"
        assert hook.api_requests == 1
    else:
        # The tunnel was refused before a byte of the request left: nothing was sent.
        assert hook.outcome == "OpportunityConnectionError sent=False"
        assert hook.api_requests == RETRIES + 1
        assert "through the proxy" in str(hook.error)
        assert "through the proxy" in str(client.error)
