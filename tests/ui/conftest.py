"""Fixtures of the page's tests: sample sync states, a real API server with the plugin, and Chromium.

The API server starts once per test session and the browser once per module; each browser test
gets a fresh context, logged in through the real login page once and reused from its saved cookies.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.ui import sample_states
from tests.ui.api_server import ApiServer, User

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("OPPORTUNITY_CHROMIUM", "/usr/bin/chromium"))
# Without the flags after --disable-gpu Chromium keeps trying to reach Google's services, and on
# a machine without that network it hangs on them.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
STATE_CONN = "ui_test_state"
ADMIN = User("admin", "admin")
VIEWER = User("viewer", "viewer")
_TIMINGS: dict[str, float] = {}
_SAVED_SCREENSHOTS: list[Path] = []


@dataclass
class Deployment:
    """The running server, its users and the state files it reads, with what each sync holds."""

    server: ApiServer
    admin: User
    viewer: User
    local_state: Path
    connection_state: Path
    expected: dict[tuple[str, str], sample_states.Expected]


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """An API server with the plugin, reading a local state and a connection's state."""
    root = tmp_path_factory.mktemp("ui-server")
    home = root / "home"
    local_state = home / "opportunity_sync" / "state.db"
    connection_state = root / "connection-state.db"
    expected = {
        ("~local", name): figures for name, figures in sample_states.write_local_state(local_state).items()
    }
    expected.update(
        {
            (STATE_CONN, name): figures
            for name, figures in sample_states.write_connection_state(connection_state).items()
        }
    )
    server = ApiServer(
        home,
        [ADMIN, VIEWER],
        environment={
            f"AIRFLOW_CONN_{STATE_CONN.upper()}": json.dumps(
                {"conn_type": "sqlite", "host": str(connection_state)}
            ),
            "AIRFLOW__OPPORTUNITY_CRM__STATE_CONN_IDS": STATE_CONN,
        },
    )
    with server.running():
        _TIMINGS.update({f"api-server {name}": seconds for name, seconds in server.timings.items()})
        yield Deployment(server, ADMIN, VIEWER, local_state, connection_state, expected)
    _TIMINGS["api-server stop"] = server.timings.get("stop", 0.0)
    leftovers = server.leftover_processes()
    assert leftovers == [], f"processes of the API server still running: {leftovers}"


def _chromium_missing_reason() -> str | None:
    if not CHROMIUM.exists():
        return (
            f"no Chromium at {CHROMIUM}: `make test` installs Debian's package as root; otherwise run "
            "`sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium`"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed: run `make install`"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright.

    Module-scoped on purpose: Playwright's sync API keeps an asyncio loop running on this thread
    while it is open, and the later tests that call ``asyncio.run`` must not see it.
    """
    reason = _chromium_missing_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    began = time.monotonic()
    with ExitStack() as stack:
        playwright = stack.enter_context(sync_playwright())
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        stack.callback(chromium.close)
        _TIMINGS["chromium launch"] = time.monotonic() - began
        yield chromium


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """The folder the browser tests save their screenshots to (printed at the end of the run)."""
    if SCREENSHOTS.exists():
        shutil.rmtree(SCREENSHOTS)
    SCREENSHOTS.mkdir(parents=True)
    _SAVED_SCREENSHOTS.append(SCREENSHOTS)
    return SCREENSHOTS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where the screenshots are, and how long the server and the browser took."""
    if _SAVED_SCREENSHOTS and any(SCREENSHOTS.iterdir()):
        terminalreporter.write_line(f"Opportunity syncs page screenshots: {SCREENSHOTS}")
    if _TIMINGS:
        figures = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in _TIMINGS.items())
        terminalreporter.write_line(f"Opportunity syncs page timings: {figures}")
