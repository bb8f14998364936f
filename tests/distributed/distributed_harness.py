"""A throwaway multi-process Airflow deployment on this machine's PostgreSQL and Redis.

It runs the locked install (this interpreter's environment): a metadata database of its own on
PostgreSQL, the CeleryExecutor with a Redis database of its own, and ``api-server``,
``scheduler``, ``dag-processor`` and Celery workers as separate processes, each with its own
``AIRFLOW_HOME``. Every process logs to a file; everything it starts it also stops, and it drops
what it created, on failure too.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
from cryptography.fernet import Fernet

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
BIN = Path(sys.executable).parent
AIRFLOW = str(BIN / "airflow")
# Every process of one deployment carries this variable, so that a leftover can be found by it.
RUN_MARKER = "OPPORTUNITY_DISTRIBUTED_RUN"
_REDIS_LOCK_KEY = "opportunity-distributed-run"

# Makes each worker report its own name as the task instances' hostname, so that two workers on
# one machine can be told apart in the metadata database.
_HOSTNAME_MODULE = '''"""Task instance hostname of one worker of a distributed test run."""
import os


def hostname() -> str:
    return os.environ["OPPORTUNITY_WORKER_NAME"]
'''


def unavailable_reason() -> str | None:
    """Why the deployment cannot start here (PostgreSQL or Redis not answering), or ``None``."""
    try:
        with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=3):
            pass
    except Exception as error:
        return f"PostgreSQL on {PG_HOST}:{PG_PORT} does not answer ({type(error).__name__}: {error})"
    try:
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=3).ping()
    except Exception as error:
        return f"Redis on {REDIS_HOST}:{REDIS_PORT} does not answer ({type(error).__name__}: {error})"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _admin_connection(dbname: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, autocommit=True)


def create_database(name: str) -> None:
    with _admin_connection() as connection:
        connection.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    with _admin_connection() as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_connection_json(database: str) -> str:
    """An ``AIRFLOW_CONN_*`` value (JSON) for a database on the local PostgreSQL server."""
    import json

    return json.dumps(
        {"conn_type": "postgres", "host": PG_HOST, "port": PG_PORT, "login": PG_USER, "schema": database}
    )


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"<{path}: {error}>"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ManagedProcess:
    """One long-running Airflow process, in its own process group, logging to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it has not gone after ``timeout``."""
        if self.popen.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        # Children left in the group (Celery's pool, uvicorn's workers) go too.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


@dataclass
class AirflowDeployment:
    """The deployment's settings and processes; use :meth:`running` to start and stop it.

    :param root: a scratch directory for the homes and logs.
    :param dags_folder: the DAG files every process reads.
    :param environment: variables for every process (``AIRFLOW_CONN_*`` connections, ...).
    :param workers: how many Celery workers.
    :param worker_concurrency: task slots per worker.
    """

    root: Path
    dags_folder: Path
    environment: Mapping[str, str] = field(default_factory=dict)
    workers: int = 2
    worker_concurrency: int = 2
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    processes: list[ManagedProcess] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.database = f"airflow_dist_{self.run_id}"
        self.api_port = free_port()
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.python_path = self.root / "python"
        self.python_path.mkdir(exist_ok=True)
        (self.python_path / "opportunity_worker_identity.py").write_text(_HOSTNAME_MODULE)
        self.redis_db: int | None = None
        self._env: dict[str, str] = {}
        self.worker_names = [f"dist-worker-{number}" for number in range(1, self.workers + 1)]

    # -- environment ---------------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        """Variables shared by every process: one database, one broker, one set of secrets."""
        assert self.redis_db is not None
        database_url = f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.database}"
        # Nothing of the calling process's Airflow set-up (home, DAG folder, connections) leaks in.
        env = {name: value for name, value in os.environ.items() if not name.startswith("AIRFLOW")}
        env.pop("PYTHONPATH", None)
        env.update(
            {
                RUN_MARKER: self.run_id,
                "PYTHONPATH": str(self.python_path),
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
                "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.redis_db}",
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.database}",
                "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
                "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.api_port}/",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__WORKERS": "1",
                # Generated once here: every process must sign and verify with the same keys.
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
                "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__OPENLINEAGE__DISABLED": "True",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            }
        )
        env.update(self.environment)
        return env

    def _env_for(self, name: str, **extra: str) -> dict[str, str]:
        env = {**self._env, "AIRFLOW_HOME": str(self.root / "homes" / name), **extra}
        Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
        return env

    # -- life cycle ----------------------------------------------------------------------------

    @contextmanager
    def running(self) -> Iterator[AirflowDeployment]:
        """Create the database and broker, migrate, start every process; undo all of it on exit."""
        started = time.monotonic()
        try:
            self._claim_redis_db()
            create_database(self.database)
            self._env = self.base_env()
            self._timed("migrate", lambda: self.airflow("db", "migrate", timeout=240))
            self.start(
                "api-server", [AIRFLOW, "api-server", "--port", str(self.api_port), "--host", "127.0.0.1"]
            )
            self.start("scheduler", [AIRFLOW, "scheduler"])
            self.start("dag-processor", [AIRFLOW, "dag-processor"])
            for name in self.worker_names:
                self.start(
                    name,
                    [
                        AIRFLOW,
                        "celery",
                        "worker",
                        "-H",
                        name,
                        "--concurrency",
                        str(self.worker_concurrency),
                        "--skip-serve-logs",
                        "--without-mingle",
                        "--without-gossip",
                    ],
                    AIRFLOW__CORE__HOSTNAME_CALLABLE="opportunity_worker_identity.hostname",
                    OPPORTUNITY_WORKER_NAME=name,
                )
            self._timed("api-server ready", self.wait_for_api_server)
            self._timed("workers ready", self.wait_for_workers)
            self.timings["start"] = time.monotonic() - started
            yield self
        finally:
            self.stop()

    def _timed(self, what: str, action: Callable[[], Any]) -> None:
        began = time.monotonic()
        action()
        self.timings[what] = time.monotonic() - began

    def _claim_redis_db(self) -> None:
        """Take an empty Redis database for the broker, marked as this run's so no other run takes it."""
        for number in range(15, 0, -1):
            candidate = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number)
            if candidate.dbsize() == 0 and candidate.set(_REDIS_LOCK_KEY, self.run_id, nx=True):
                self.redis_db = number
                return
        raise RuntimeError("No empty Redis database (1-15) for the Celery broker")

    def start(self, name: str, args: Sequence[str], **extra_env: str) -> ManagedProcess:
        log_path = self.logs / f"{name}.log"
        log = log_path.open("wb")
        popen = subprocess.Popen(
            list(args),
            env=self._env_for(name, **extra_env),
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, stopped as a whole
        )
        log.close()
        process = ManagedProcess(name, popen, log_path)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """Stop every process (workers first), then drop the database and empty the Redis db."""
        for process in sorted(self.processes, key=lambda p: not p.name.startswith("dist-worker")):
            process.stop()
        self._kill_leftovers()
        with suppress(Exception):
            drop_database(self.database)
        if self.redis_db is not None:
            with suppress(Exception):
                redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=self.redis_db).flushdb()

    def _kill_leftovers(self) -> None:
        """Kill any process still carrying this run's marker (a task process in its own group)."""
        marker = f"{RUN_MARKER}={self.run_id}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                with suppress(ProcessLookupError, PermissionError):
                    os.kill(int(entry.name), signal.SIGKILL)

    def database_exists(self) -> bool:
        """Whether the metadata database is still there (it is dropped on stop)."""
        with _admin_connection() as connection:
            found = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [self.database])
            return found.fetchone() is not None

    def leftover_processes(self) -> list[int]:
        marker = f"{RUN_MARKER}={self.run_id}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if marker in (entry / "environ").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    # -- using it ------------------------------------------------------------------------------

    def airflow(self, *args: str, timeout: float = 120) -> str:
        """Run one ``airflow`` command against the deployment; its output, or an error with it."""
        env = self._env_for("cli")
        result = subprocess.run(
            [AIRFLOW, *args], env=env, cwd=self.root, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result.stdout

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows from the metadata database."""
        with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=self.database) as connection:
            return list(connection.execute(sql, params).fetchall())

    def _check_processes(self) -> None:
        dead = [process.name for process in self.processes if not process.running()]
        if dead:
            raise RuntimeError(f"Airflow process(es) exited early: {', '.join(dead)}")

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float, interval: float = 1.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_processes()
            with suppress(Exception):
                if ready():
                    return
            time.sleep(interval)
        raise TimeoutError(f"Timed out after {timeout:.0f} s waiting for {what}")

    def wait_for_api_server(self, timeout: float = 120) -> None:
        import requests

        def ready() -> bool:
            answer = requests.get(f"http://127.0.0.1:{self.api_port}/api/v2/version", timeout=3)
            return answer.status_code == 200

        self._wait("the API server", ready, timeout)

    def wait_for_workers(self, timeout: float = 120) -> None:
        def ready() -> bool:
            return all(
                f"{name} ready." in (self.logs / f"{name}.log").read_text(errors="replace")
                for name in self.worker_names
            )

        self._wait("the Celery workers", ready, timeout)

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        def ready() -> bool:
            return bool(self.query("SELECT 1 FROM serialized_dag WHERE dag_id = %s", [dag_id]))

        self._timed(f"{dag_id} parsed", lambda: self._wait(f"DAG {dag_id} to be parsed", ready, timeout, 2.0))
        errors = self.query("SELECT filename, stacktrace FROM import_error")
        if errors:
            raise RuntimeError(f"DAG import errors: {errors}")

    def trigger(self, dag_id: str, run_id: str) -> None:
        self.airflow("dags", "trigger", dag_id, "--run-id", run_id)

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        """The run's final state (``success`` or ``failed``), or a timeout error.

        A task that fails or waits for a retry ends the wait at once: the DAGs' retry delays are
        minutes, and the logs of the first failure say more than a timeout.
        """
        final: list[str] = []
        failing: list[Any] = []

        def finished() -> bool:
            rows = self.query("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", [dag_id, run_id])
            if rows and rows[0][0] in ("success", "failed"):
                final.append(rows[0][0])
                return True
            failing.extend(
                self.query(
                    "SELECT task_id, map_index, state, hostname FROM task_instance WHERE dag_id = %s "
                    "AND run_id = %s AND state IN ('failed', 'up_for_retry', 'upstream_failed')",
                    [dag_id, run_id],
                )
            )
            return bool(failing)

        self._timed("run", lambda: self._wait(f"run {run_id} of {dag_id}", finished, timeout, 2.0))
        if failing:
            raise RuntimeError(f"Task(s) of run {run_id} failed: {failing}")
        return final[0]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT task_id, map_index, state, hostname, try_number FROM task_instance "
            "WHERE dag_id = %s AND run_id = %s ORDER BY task_id, map_index",
            [dag_id, run_id],
        )
        keys = ("task_id", "map_index", "state", "hostname", "try_number")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def report(self, lines: int = 60, task_logs: int = 8) -> str:
        """Tails of every process log and of the latest task logs, to print when something failed."""
        parts = []
        for process in self.processes:
            status = "running" if process.running() else f"exited {process.popen.returncode}"
            parts.append(
                f"===== {process.name} ({status}): {process.log_path}\n{tail(process.log_path, lines)}"
            )
        logs = sorted(
            (self.root / "homes").glob("*/logs/dag_id=*/**/*.log"), key=lambda p: p.stat().st_mtime
        )[-task_logs:]
        for path in logs:
            parts.append(f"===== task log {path.relative_to(self.root)}\n{tail(path, lines)}")
        return "\n".join(parts)
