"""Fixtures of the fault matrix: both clients side by side, and a certificate for TLS servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.hooks.both_clients import BothClients
from tests.integration.hooks.fault_servers import Certificate, make_certificate


@pytest.fixture
def both_clients(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> BothClients:
    """Runs one call through the hook and the async client, checking that nothing secret leaks."""
    caplog.set_level("DEBUG")
    return BothClients(caplog, capsys)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, which the connection trusts through extra.verify."""
    directory: Path = tmp_path_factory.mktemp("tls")
    return make_certificate(directory)
