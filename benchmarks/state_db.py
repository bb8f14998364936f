"""Sync-state benchmark: group commits and lookups on SQLite, PostgreSQL and MariaDB, side by side.

Run with ``python -m benchmarks.state_db`` (``--seconds``, ``--rows``). Each database gets tables
of its own, dropped afterwards; a server that does not answer gets a dash. Figures:
- group commits per second for groups of 1, 4 and 16 writes (half of them create intents),
  each commit checking and renewing the lease, one after another on one connection as the
  state thread makes them;
- the same on PostgreSQL the way the first release committed (``executemany`` then ``COMMIT``,
  no lease), for comparison;
- lookups of ``--rows`` digests in batches of 500, as the planner asks for them (rows/s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "ERROR"
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

GROUPS = (1, 4, 16)
LOOKUP_BATCH = 500


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _connections(folder: Path) -> dict[str, str]:
    """Airflow connection ids for each database that answers, set as environment variables."""
    found: dict[str, str] = {}
    os.environ["AIRFLOW_CONN_BENCH_STATE_SQLITE"] = json.dumps(
        {"conn_type": "sqlite", "host": str(folder / "state.db")}
    )
    found["SQLite"] = "bench_state_sqlite"
    try:
        import psycopg

        for user in ("postgres", "root"):
            try:
                psycopg.connect(
                    host="127.0.0.1", port=5432, user=user, dbname="test", connect_timeout=3
                ).close()
            except Exception:
                continue
            os.environ["AIRFLOW_CONN_BENCH_STATE_PG"] = json.dumps(
                {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": user, "schema": "test"}
            )
            found["PostgreSQL"] = "bench_state_pg"
            break
    except ImportError:
        pass
    try:
        import mysql.connector

        mysql.connector.connect(
            host="127.0.0.1", port=3306, user="root", password="", database="test", connection_timeout=3
        ).close()
        os.environ["AIRFLOW_CONN_BENCH_STATE_MARIADB"] = json.dumps(
            {
                "conn_type": "mysql",
                "host": "127.0.0.1",
                "port": 3306,
                "login": "root",
                "schema": "test",
                "extra": {"client": "mysql-connector-python"},
            }
        )
        found["MariaDB"] = "bench_state_mariadb"
    except Exception:
        pass
    return found


def _rate(seconds: float, body: Callable[[int], None]) -> float:
    """Calls of ``body(n)`` per second over about ``seconds``."""
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        body(done)
        done += 1
    return done / (time.perf_counter() - started)


def measure(conn_id: str, seconds: float, rows: int) -> dict[str, float]:
    """Group commits per second per group size, and lookup rows per second, on one database."""
    from airflow_opportunity_provider.transfers.keys import key_digest
    from airflow_opportunity_provider.transfers.outcomes import Outcome
    from airflow_opportunity_provider.transfers.state import StateWrite, SyncState

    table = f"bench_state_{uuid.uuid4().hex[:8]}"
    state = SyncState.from_conn_id(conn_id, sync_name="bench", run_id="bench-run", table=table)
    state.open()
    figures: dict[str, float] = {}
    try:
        state.acquire_lease(600)
        for size in GROUPS:

            def commit(n: int, size: int = size) -> None:
                writes = []
                for i in range(size):
                    key = f"G{size}-{n}-{i}"
                    # Half intents, half outcomes, as the workers pair them (on PostgreSQL a
                    # group with an intent waits for the disk, one of outcomes only does not).
                    outcome = Outcome.IN_FLIGHT if (n + i) % 2 else Outcome.CREATED
                    writes.append(
                        StateWrite(key, key_digest(key), outcome, payload_hash="h" * 32, crm_id=str(n))
                    )
                state.apply(writes)

            figures[f"commits/{size}"] = _rate(seconds, commit)
        keys = [f"WH-{n:07d}" for n in range(rows)]
        for start in range(0, rows, 1000):
            chunk = keys[start : start + 1000]
            state.apply(
                [
                    StateWrite(key, key_digest(key), Outcome.CREATED, payload_hash="h" * 32, crm_id="1")
                    for key in chunk
                ]
            )
        digests = [key_digest(key) for key in keys]
        started = time.perf_counter()
        found = 0
        for start in range(0, rows, LOOKUP_BATCH):
            found += len(state.lookup(digests[start : start + LOOKUP_BATCH]))
        figures["lookup"] = rows / (time.perf_counter() - started)
        assert found == rows, found
        if state.dialect.name == "postgresql":
            figures.update(_first_release_commits(state, seconds))
    finally:
        cursor = state.connection.cursor()
        for suffix in ("", "_rejects", "_runs", "_leases", "_v1"):
            cursor.execute(f"DROP TABLE IF EXISTS {table}{suffix}")
        cursor.close()
        state.close()
    return figures


def _first_release_commits(state: Any, seconds: float) -> dict[str, float]:
    """PostgreSQL group commits as the first release made them: executemany, then COMMIT."""
    connection = state.connection
    table = state.table + "_v1"
    connection.autocommit = True
    connection.execute(
        f"CREATE TABLE {table} (sync_name VARCHAR(250) NOT NULL, source_key VARCHAR(500) NOT NULL, "
        "crm_id VARCHAR(100), payload_hash VARCHAR(64), outcome VARCHAR(16) NOT NULL, "
        "outcome_at VARCHAR(32) NOT NULL, run_id VARCHAR(64), error_code VARCHAR(64), error_message TEXT, "
        "PRIMARY KEY (sync_name, source_key))"
    )
    connection.autocommit = False
    statement = (
        f"INSERT INTO {table} (sync_name, source_key, crm_id, payload_hash, outcome, outcome_at, run_id, "
        "error_code, error_message) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
        f"ON CONFLICT (sync_name, source_key) DO UPDATE SET crm_id = COALESCE(excluded.crm_id, {table}.crm_id), "
        f"payload_hash = COALESCE(excluded.payload_hash, {table}.payload_hash), outcome = excluded.outcome, "
        "outcome_at = excluded.outcome_at, run_id = excluded.run_id, error_code = excluded.error_code, "
        "error_message = excluded.error_message"
    )
    figures = {}
    for size in GROUPS:

        def commit(n: int, size: int = size) -> None:
            cursor = connection.cursor()
            cursor.executemany(
                statement,
                [
                    ("bench", f"G{size}-{n}-{i}", str(n), "h" * 32, "created", "t", "r", None, None)
                    for i in range(size)
                ],
            )
            cursor.close()
            connection.commit()

        figures[f"v1 commits/{size}"] = _rate(seconds, commit)
    connection.autocommit = True
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per commit figure")
    parser.add_argument("--rows", type=int, default=100_000, help="digests looked up")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        databases = _connections(Path(folder))
        results: dict[str, dict[str, float]] = {}
        for name, conn_id in databases.items():
            _log(f"{name} ...")
            results[name] = measure(conn_id, args.seconds, args.rows)
    names = ["SQLite", "PostgreSQL", "MariaDB"]
    rows = [(f"group commits/s, {size} write(s) each, lease checked", f"commits/{size}") for size in GROUPS]
    rows += [(f"  PostgreSQL as the first release: {size} write(s)", f"v1 commits/{size}") for size in GROUPS]
    rows.append((f"lookups of {args.rows:,} digests in batches of {LOOKUP_BATCH} (rows/s)", "lookup"))
    print(f"| Figure | {' | '.join(names)} |")
    print(f"|---|{'---|' * len(names)}")
    for label, key in rows:
        cells = []
        for name in names:
            value = results.get(name, {}).get(key)
            cells.append("-" if value is None else f"{value:,.0f}")
        print(f"| {label} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
