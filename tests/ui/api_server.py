"""A real ``airflow api-server`` for the page's tests: its own home, SQLite database, users and port.

It uses the simple auth manager with users and passwords given through its own options
(``[core] simple_auth_manager_users`` and a passwords file written beforehand), runs in its own
process group with a marker variable, and is stopped with everything it started.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import requests

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
# Every process of one server carries this variable, so that a leftover can be found by it.
RUN_MARKER = "OPPORTUNITY_UI_TEST_RUN"


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 80) -> str:
    """The last lines of a log file, for a failure message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"<{path}: {error}>"


@dataclass(frozen=True)
class User:
    """A user of the simple auth manager.

    :param name: the user name.
    :param role: ``viewer``, ``user``, ``op`` or ``admin``.
    :param password: the password the login page takes.
    """

    name: str
    role: str
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))


@dataclass
class ApiServer:
    """One API server; use :meth:`running` to start it and stop it.

    :param home: its ``AIRFLOW_HOME`` (the database, passwords file and log go there).
    :param users: the users the login page accepts.
    :param environment: more variables (``AIRFLOW_CONN_*``, ``AIRFLOW__OPPORTUNITY_CRM__*``).
    """

    home: Path
    users: list[User]
    environment: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path = self.home / "api-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's base URL, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Variables of every ``airflow`` command of this server; nothing of the caller's Airflow set-up."""
        env = {name: value for name, value in os.environ.items() if not name.startswith("AIRFLOW")}
        dags = self.home / "dags"
        dags.mkdir(exist_ok=True)
        env.update(
            {
                RUN_MARKER: self.run_id,
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
                    f"{u.name}:{u.role}" for u in self.users
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__BASE_URL": f"{self.url}/",
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                "AIRFLOW__OPENLINEAGE__DISABLED": "True",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            }
        )
        env.update(self.environment)
        return env

    @contextmanager
    def running(self) -> Iterator[ApiServer]:
        """Migrate the database, start the server and wait until it answers; stop it on exit."""
        # The simple auth manager only generates passwords for users missing from this file.
        (self.home / "passwords.json").write_text(json.dumps({u.name: u.password for u in self.users}))
        env = self.env()
        try:
            began = time.monotonic()
            migrate = subprocess.run(
                [AIRFLOW, "db", "migrate"],
                env=env,
                cwd=self.home,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if migrate.returncode != 0:
                raise RuntimeError(
                    f"airflow db migrate failed:\n{migrate.stdout[-3000:]}\n{migrate.stderr[-3000:]}"
                )
            self.timings["migrate"] = time.monotonic() - began
            began = time.monotonic()
            with self.log_path.open("wb") as log:
                self.process = subprocess.Popen(
                    [
                        AIRFLOW,
                        "api-server",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(self.port),
                        "--workers",
                        "1",
                    ],
                    env=env,
                    cwd=self.home,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # its own process group, stopped as a whole
                )
            self.wait_until_ready()
            self.timings["start"] = time.monotonic() - began
            yield self
        finally:
            began = time.monotonic()
            self.stop()
            self.timings["stop"] = time.monotonic() - began

    def wait_until_ready(self, timeout: float = 180.0) -> None:
        """Wait until the server answers, and the plugin's app with it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"airflow api-server exited {self.process.returncode}:\n{tail(self.log_path)}"
                )
            with suppress(requests.RequestException):
                health = requests.get(f"{self.url}/api/v2/monitor/health", timeout=3)
                page = requests.get(f"{self.url}/opportunity-syncs/", timeout=3)
                # 401: the plugin's app is mounted and refuses a request without a session.
                if health.status_code == 200 and page.status_code == 401:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"airflow api-server did not answer in {timeout:.0f} s:\n{tail(self.log_path)}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``timeout``, and any marked leftover."""
        process = self.process
        if process is not None:
            if process.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                with suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=timeout)
            # Children left in the group (uvicorn's worker) go too.
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        for pid in self.leftover_processes():
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def leftover_processes(self) -> list[int]:
        """Processes still carrying this server's marker."""
        marker = f"{RUN_MARKER}={self.run_id}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def token(self, user: User) -> str:
        """A JWT for ``user`` from the simple auth manager's token endpoint (what the login page gets)."""
        answer = requests.post(
            f"{self.url}/auth/token", json={"username": user.name, "password": user.password}, timeout=10
        )
        answer.raise_for_status()
        return str(answer.json()["access_token"])
