"""A sync state on each real database it supports: a SQLite file, PostgreSQL on 127.0.0.1:5432
and MariaDB on 127.0.0.1:3306, each reached through an Airflow connection, with tables of this
test's own (dropped afterwards). A server that does not answer skips its tests, saying so."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from airflow_opportunity_provider.transfers.state import SyncState

DATABASES = ["sqlite", "postgresql", "mariadb"]
_SKIPS: list[str] = []


def _postgres_login() -> tuple[str | None, str]:
    import psycopg

    reason = ""
    for user in ("postgres", "root"):
        try:
            with psycopg.connect(host="127.0.0.1", port=5432, user=user, dbname="test", connect_timeout=3):
                return user, ""
        except Exception as error:
            reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
    return None, reason


def _mariadb_answers() -> str:
    import mysql.connector

    try:
        connection = mysql.connector.connect(
            host="127.0.0.1", port=3306, user="root", password="", database="test", connection_timeout=3
        )
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    connection.close()
    return ""


@dataclass
class Database:
    """One database holding this test's state tables.

    :param kind: ``sqlite``, ``postgresql`` or ``mariadb``.
    :param conn_id: the Airflow connection that reaches it.
    :param table: this test's state table name (the other three tables follow from it).
    :param raw: opens a plain DB-API connection, for looking at the tables directly.
    """

    kind: str
    conn_id: str
    table: str
    raw: Callable[[], Any]
    opened: list[SyncState] = field(default_factory=list)

    @property
    def placeholder(self) -> str:
        return "?" if self.kind == "sqlite" else "%s"

    def state(self, run_id: str = "run-1", *, open_: bool = True, **options: Any) -> SyncState:
        """A state on this database, opened (and closed after the test)."""
        options.setdefault("sync_name", "test.sync")
        options.setdefault("table", self.table)
        state = SyncState.from_conn_id(self.conn_id, run_id=run_id, **options)
        if open_:
            state.open()
            self.opened.append(state)
        return state

    def query(self, sql: str, parameters: list[Any] | tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on a connection of its own and return its rows (committed)."""
        connection = self.raw()
        try:
            cursor = connection.cursor()
            cursor.execute(sql.replace("?", self.placeholder), parameters)
            rows = list(cursor.fetchall()) if cursor.description else []
            cursor.close()
            connection.commit()
            return rows
        finally:
            connection.close()

    def drop(self) -> None:
        for state in self.opened:
            state.close()
        for suffix in ("", "_rejects", "_runs", "_leases", "__v2", "__v1"):
            self.query(f"DROP TABLE IF EXISTS {self.table}{suffix}")


@pytest.fixture(params=DATABASES)
def database(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Database]:
    """A state database of each kind, as the Airflow connection ``state_test_<kind>``."""
    yield from _database(request.param, tmp_path, monkeypatch)


@pytest.fixture(params=["sqlite", "postgresql"])
def lease_database(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Database]:
    """SQLite and PostgreSQL, where every class of failure is tested."""
    yield from _database(request.param, tmp_path, monkeypatch)


@pytest.fixture
def postgresql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    """PostgreSQL alone (for what its drivers do differently)."""
    yield from _database("postgresql", tmp_path, monkeypatch)


@pytest.fixture
def mariadb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    """MariaDB alone (its default collation is case-insensitive)."""
    yield from _database("mariadb", tmp_path, monkeypatch)


def _database(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    table = f"state_{uuid.uuid4().hex[:10]}"
    conn_id = f"state_test_{kind}"
    if kind == "sqlite":
        import sqlite3

        path = tmp_path / "state.db"
        connection: dict[str, Any] = {"conn_type": "sqlite", "host": str(path)}

        def raw() -> Any:
            return sqlite3.connect(path)

    elif kind == "postgresql":
        import psycopg

        user, reason = _postgres_login()
        if user is None:
            _skip(
                f"PostgreSQL does not answer on 127.0.0.1:5432 (db 'test'; {reason}); its state tests skipped"
            )
        connection = {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": 5432,
            "login": user,
            "schema": "test",
        }

        def raw() -> Any:
            return psycopg.connect(host="127.0.0.1", port=5432, user=user, dbname="test")

    else:
        import mysql.connector

        reason = _mariadb_answers()
        if reason:
            _skip(
                f"MariaDB does not answer on 127.0.0.1:3306 (user root, db 'test'; {reason}); its state tests skipped"
            )
        connection = {
            "conn_type": "mysql",
            "host": "127.0.0.1",
            "port": 3306,
            "login": "root",
            "schema": "test",
            "extra": {"client": "mysql-connector-python"},
        }

        def raw() -> Any:
            return mysql.connector.connect(
                host="127.0.0.1", port=3306, user="root", password="", database="test"
            )

    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
    database = Database(kind, conn_id, table, raw)
    try:
        yield database
    finally:
        database.drop()


def _skip(message: str) -> None:
    _SKIPS.append(message)
    pytest.skip(message)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    # make test runs pytest -q, which hides skip reasons: say plainly which database went untested.
    for message in dict.fromkeys(_SKIPS):
        terminalreporter.write_line(f"NOTE: {message}", yellow=True)
