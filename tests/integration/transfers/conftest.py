"""Fixtures of the bulk-load tests: a sample warehouse and a sync state per test, real databases
reached through Airflow connections given as ``AIRFLOW_CONN_*`` variables, and PostgreSQL when
it answers on 127.0.0.1:5432."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_opportunity_provider.transfers import SqlToOpportunityOperator
from tests.integration.transfers.helpers import (
    POSTGRES_CONN,
    STATE_CONN,
    V1_TEST_MAPPING,
    V1_TEST_SQL,
    WAREHOUSE_CONN,
    make_warehouse,
    sqlite_conn_json,
)


@pytest.fixture
def warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """``warehouse(rows)`` writes a sample warehouse and points ``test_warehouse`` at it."""

    def create(rows: int = 100, **options: Any) -> Path:
        path = make_warehouse(tmp_path / "warehouse.db", rows, **options)
        monkeypatch.setenv(f"AIRFLOW_CONN_{WAREHOUSE_CONN.upper()}", sqlite_conn_json(path))
        return path

    return create


@pytest.fixture
def state_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A SQLite sync-state file of this test's own, as the connection ``test_state``."""
    path = tmp_path / "state.db"
    monkeypatch.setenv(f"AIRFLOW_CONN_{STATE_CONN.upper()}", sqlite_conn_json(path))
    return path


@pytest.fixture
def make_operator(opportunity_conn: str) -> Callable[..., SqlToOpportunityOperator]:
    """Build an operator for the v1 sample table, the test state and the mock CRM."""

    def build(**overrides: Any) -> SqlToOpportunityOperator:
        options: dict[str, Any] = {
            "task_id": f"load_{uuid.uuid4().hex[:6]}",
            "sql": V1_TEST_SQL.format(table="crm_opportunities"),
            "sql_conn_id": WAREHOUSE_CONN,
            "key_columns": "opportunity_ref",
            "mapping": V1_TEST_MAPPING,
            "state_conn_id": STATE_CONN,
            "sync_name": "test.sync",
            "concurrency": 8,
            "progress_interval": 0,
        }
        options.update(overrides)
        return SqlToOpportunityOperator(**options)

    return build


# -- PostgreSQL ------------------------------------------------------------------------------

_POSTGRES_SKIPS: list[str] = []


def _postgres_login() -> tuple[str | None, str]:
    """The user that PostgreSQL on 127.0.0.1:5432 lets in (trust auth), or why none did."""
    import psycopg

    reason = ""
    for user in ("postgres", "root"):
        try:
            with psycopg.connect(host="127.0.0.1", port=5432, user=user, dbname="test", connect_timeout=3):
                return user, ""
        except Exception as error:
            reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
    return None, reason


@pytest.fixture(scope="session")
def postgres_user() -> str:
    user, reason = _postgres_login()
    if user is None:
        message = (
            f"PostgreSQL does not answer on 127.0.0.1:5432 (db 'test'; {reason}); PostgreSQL tests skipped"
        )
        _POSTGRES_SKIPS.append(message)
        pytest.skip(message)
    return user


@pytest.fixture
def postgres_schema(postgres_user: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A schema of this test's own on PostgreSQL, as the connection ``test_postgres``; dropped after."""
    import psycopg

    schema = f"opportunity_test_{uuid.uuid4().hex[:10]}"
    connection = {
        "conn_type": "postgres",
        "host": "127.0.0.1",
        "port": 5432,
        "login": postgres_user,
        "schema": "test",
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{POSTGRES_CONN.upper()}", json.dumps(connection))
    with psycopg.connect(
        host="127.0.0.1", port=5432, user=postgres_user, dbname="test", autocommit=True
    ) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema
    finally:
        with psycopg.connect(
            host="127.0.0.1", port=5432, user=postgres_user, dbname="test", autocommit=True
        ) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def postgres_connection(postgres_user: str) -> Iterator[Any]:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=5432, user=postgres_user, dbname="test") as connection:
        yield connection


def pytest_terminal_summary(terminalreporter: Any) -> None:
    # make test runs pytest -q, which hides skip reasons: say plainly that PostgreSQL was not tested.
    for message in dict.fromkeys(_POSTGRES_SKIPS):
        terminalreporter.write_line(f"NOTE: {message}", yellow=True)
