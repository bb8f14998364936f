"""The Airflow UI with the Opportunity syncs page, on the demo's Airflow home and sync state.

``make ui`` runs it after ``make demo`` has written a sync state. It starts the mock CRM and
``airflow api-server``, prints the address and a login, and stops both on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import suppress
from pathlib import Path
from types import FrameType

from airflow_opportunity_provider.mock_crm.testing import connection_dict

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEMO = REPO / "demo-output"
USER = "admin"


def _start(args: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen[str]:
    # Each in its own process group: Ctrl-C reaches only this script, which stops them in order.
    return subprocess.Popen(
        args,
        env=env,
        stdout=log.open("w") if log else subprocess.PIPE,
        stderr=subprocess.STDOUT if log else None,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen[str], timeout: float = 20.0) -> None:
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def _password(home: Path) -> tuple[Path, str]:
    """The login's passwords file, made once with a random password and kept for the next start."""
    file = home / "ui-passwords.json"
    if file.exists():
        with suppress(ValueError, KeyError):
            return file, str(json.loads(file.read_text())[USER])
    password = secrets.token_urlsafe(9)
    file.write_text(json.dumps({USER: password}))
    file.chmod(0o600)
    return file, password


def _wait_until_ready(url: str, server: subprocess.Popen[str], log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"airflow api-server exited {server.returncode}; its log is {log}")
        try:
            with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=3):
                return
        except (OSError, urllib.error.URLError):
            time.sleep(0.5)
    raise SystemExit(f"airflow api-server did not answer in {timeout:.0f} s; its log is {log}")


def main() -> None:
    """Start both servers and wait for Ctrl-C."""
    host = os.environ.get("UI_HOST", "127.0.0.1")
    port = os.environ.get("UI_PORT", "8080")
    home = Path(os.environ["AIRFLOW_HOME"])
    state = DEMO / "sync-state.db"
    if not state.exists():
        raise SystemExit(
            "No demo sync state yet: run `make demo` first (it writes demo-output/sync-state.db)."
        )
    passwords, password = _password(home)
    url = f"http://{host}:{port}"

    env = dict(os.environ)
    mock = _start(
        [sys.executable, "-m", "airflow_opportunity_provider.mock_crm", "--host", "127.0.0.1", "--port", "0"],
        env,
    )
    server: subprocess.Popen[str] | None = None

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # Set, not assumed: a shell that starts this in the background ignores SIGINT for it.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        assert mock.stdout is not None
        found = re.search(r"http://\S+", mock.stdout.readline())
        if not found:
            raise SystemExit("the mock CRM server did not start")
        env.update(
            {
                "AIRFLOW_CONN_OPPORTUNITY_DEFAULT": json.dumps(connection_dict(found.group(0))),
                "AIRFLOW_CONN_DEMO_SYNC_STATE": json.dumps({"conn_type": "sqlite", "host": str(state)}),
                "AIRFLOW_CONN_WAREHOUSE_DEFAULT": json.dumps(
                    {"conn_type": "sqlite", "host": str(DEMO / "warehouse.db")}
                ),
                "AIRFLOW_VAR_OPPORTUNITY_STATE_CONN_ID": "demo_sync_state",
                "AIRFLOW__OPPORTUNITY_CRM__STATE_CONN_IDS": "demo_sync_state",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                "AIRFLOW__API__BASE_URL": f"{url}/",
                "AIRFLOW__API__WORKERS": "1",
                # New for every start: the sessions of the last one end with it.
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            }
        )
        log = DEMO / "api-server.log"
        server = _start([str(BIN / "airflow"), "api-server", "--host", host, "--port", port], env, log)
        _wait_until_ready(url, server, log)
        print(f"Mock CRM server on {found.group(0)}")
        print(f"Airflow UI on {url}/  (log in as {USER!r}, password {password!r})")
        print(
            f"Opportunity syncs page: {url}/plugin/opportunity-syncs  (API server log: {log.relative_to(REPO)})"
        )
        print("Ctrl-C stops both.", flush=True)
        while server.poll() is None and mock.poll() is None:
            time.sleep(0.5)
        raise SystemExit("a server stopped by itself; see its log")
    except KeyboardInterrupt:
        print("\nStopping the API server and the mock CRM server ...")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        if server is not None:
            _stop(server)
        _stop(mock)


if __name__ == "__main__":
    main()
