"""Each way a row's fate used to go wrong, with the state on SQLite and on PostgreSQL: an unknown
create overwritten by a later problem, keys cut to the day or to 500 characters, unknowns that
leave the query, duplicates behind an unchanged row, NULL and unencodable keys, and two runs of
one partition at once (one fails fast; a run that lost its lease sends no create after)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from airflow_opportunity_provider.mock_crm import FaultConfig, MockCrmServer
from airflow_opportunity_provider.mock_crm.testing import connection_json
from airflow_opportunity_provider.transfers import SqlToOpportunityOperator, engine
from airflow_opportunity_provider.transfers.seen_keys import SeenKeys
from airflow_opportunity_provider.transfers.state import LeaseHeldError
from tests.integration.state.conftest import Database, _postgres_login
from tests.integration.transfers.helpers import run

pytestmark = pytest.mark.usefixtures("airflow_db", "opportunity_conn")

REPO = Path(__file__).resolve().parents[3]
WAREHOUSE = "rows_warehouse"
MAPPING = {
    "name": "name",
    "venueId": "venue_id",
    "contactId": "contact_id",
    "typeId": "type_id",
    "stageId": "stage_id",
    "sourceId": "source_id",
    "description": "ref_text",
}
SQL = "SELECT * FROM rows ORDER BY position"


def _warehouse(path: Path, monkeypatch: pytest.MonkeyPatch, rows: list[tuple[Any, str]]) -> None:
    """A SQLite warehouse table ``rows`` with one row per ``(key, name)``, in that order."""
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE rows (position INTEGER, ref, ref_text TEXT, name TEXT, venue_id INTEGER, "
            "contact_id INTEGER, type_id INTEGER, stage_id INTEGER, source_id INTEGER)"
        )
        connection.executemany(
            "INSERT INTO rows VALUES (?, ?, ?, ?, 107, 918, 18, 69, 25)",
            [
                (position, key, key.hex() if isinstance(key, bytes) else str(key), name)
                for position, (key, name) in enumerate(rows)
            ],
        )
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{WAREHOUSE.upper()}", json.dumps({"conn_type": "sqlite", "host": str(path)})
    )


def _named_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefix: str, count: int) -> list[str]:
    """A warehouse of ``count`` rows keyed ``<prefix>000``... (each named after its key); the keys."""
    width = len(str(count - 1))
    keys = [f"{prefix}{number:0{width}d}" for number in range(count)]
    _warehouse(tmp_path / "w.db", monkeypatch, [(key, f"name {key}") for key in keys])
    return keys


def _operator(database: Database, **options: Any) -> SqlToOpportunityOperator:
    settings: dict[str, Any] = {
        "task_id": "load",
        "sql": SQL,
        "sql_conn_id": WAREHOUSE,
        "key_columns": "ref",
        "mapping": MAPPING,
        "state_conn_id": database.conn_id,
        "state_table": database.table,
        "sync_name": "rows.sync",
        "concurrency": 4,
        "progress_interval": 0,
        # These tests are about the state's own rules for an unknown create; looking creates up
        # in the CRM by their reference is tested where it is switched on.
        "reference": False,
        **options,
    }
    return SqlToOpportunityOperator(**settings)


def _records(server: MockCrmServer) -> dict[str, list[dict[str, Any]]]:
    """The mock's records by the key text they carry in ``description``."""
    found: dict[str, list[dict[str, Any]]] = {}
    for record in server.store.v1_records():
        found.setdefault(str(record.get("description")), []).append(record)
    return found


def _state(database: Database) -> dict[str, tuple[str, str | None]]:
    rows = database.query(f"SELECT source_key, outcome, crm_id FROM {database.table}")
    return {key: (outcome, crm_id) for key, outcome, crm_id in rows}


def _rejects(database: Database) -> list[tuple[str, str, str, str]]:
    return [
        tuple(row)
        for row in database.query(
            f"SELECT sync_run_id, source_key, outcome, error_code FROM {database.table}_rejects"
        )
    ]


def test_an_unknown_create_stays_unknown_whatever_the_row_brings_later(
    lease_database: Database, mock_crm: MockCrmServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_a, long_b = "k" * 600 + "A", "k" * 600 + "B"  # one 500-character prefix, two keys
    _warehouse(tmp_path / "w.db", monkeypatch, [("R1", "one"), ("R2", "two"), (long_a, "la"), (long_b, "lb")])
    # Every answer to a create is lost after the server stored it: all four are unknown. Without
    # a reference the CRM cannot be asked (with one, each is found: the chaos tests show it).
    mock_crm.set_faults(FaultConfig(drop_after_commit_rate=1.0))
    summary, failure = run(_operator(lease_database, reference=False))
    assert failure is not None
    assert summary["unknown"] == 4
    assert len(mock_crm.store.v1_records()) == 4

    # Next run: the faults are gone, R1's mapping now raises. Nothing is rejected, nothing sent.
    mock_crm.set_faults(FaultConfig())

    def mapping(row: dict[str, Any]) -> dict[str, Any]:
        if row["ref"] == "R1":
            raise KeyError("venue_id")
        return {field: row[column] for field, column in MAPPING.items()}

    summary, failure = run(_operator(lease_database, mapping=mapping, max_unknown=4, reference=False))
    assert failure is not None  # no row loaded: never green
    assert (summary["unknown"], summary["rejected"], summary["requests_sent"]) == (4, 0, 0)
    assert {outcome for outcome, _ in _state(lease_database).values()} == {"unknown"}

    # And the run after that creates none of them again.
    summary, _ = run(_operator(lease_database, max_unknown=4, reference=False))
    assert summary["requests_sent"] == 0
    records = _records(mock_crm)
    assert sorted(records) == sorted(["R1", "R2", long_a, long_b])
    assert all(len(found) == 1 for found in records.values())


def test_with_a_reference_the_same_lost_answers_are_found_for_each_long_key(
    lease_database: Database, mock_crm: MockCrmServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_a, long_b = "k" * 600 + "A", "k" * 600 + "B"
    _warehouse(tmp_path / "w.db", monkeypatch, [("R1", "one"), (long_a, "la"), (long_b, "lb")])
    mock_crm.set_faults(FaultConfig(drop_after_commit_rate=1.0))
    summary, failure = run(_operator(lease_database, reference=True))
    assert failure is None, failure
    assert (summary["created"], summary["unknown"], summary["reconciled"]) == (3, 0, 3)
    records = _records(mock_crm)
    state = _state(lease_database)
    assert {key: crm_id for key, (_, crm_id) in state.items()} == {
        key: str(found[0]["id"]) for key, found in records.items()
    }


def test_long_keys_are_never_cut_onto_a_neighbour(
    lease_database: Database, mock_crm: MockCrmServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = ["x" * 500, "x" * 500 + "1", "x" * 500 + "2", "y" * 5000]
    _warehouse(tmp_path / "w.db", monkeypatch, [(key, f"name {index}") for index, key in enumerate(keys)])
    summary, failure = run(_operator(lease_database))
    assert failure is None
    assert summary["created"] == 4
    _warehouse(tmp_path / "w.db", monkeypatch, [(key, f"renamed {index}") for index, key in enumerate(keys)])
    summary, failure = run(_operator(lease_database))
    assert failure is None
    assert (summary["created"], summary["updated"]) == (0, 4)
    records = _records(mock_crm)
    assert sorted(records) == sorted(keys)
    assert {key: found[0]["name"] for key, found in records.items()} == {
        key: f"renamed {index}" for index, key in enumerate(keys)
    }
    assert set(_state(lease_database)) == set(keys)


def test_an_unknown_whose_row_left_the_query_is_still_counted_and_named(
    lease_database: Database, mock_crm: MockCrmServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _warehouse(tmp_path / "w.db", monkeypatch, [("R1", "one")])
    mock_crm.set_faults(FaultConfig(drop_after_commit_rate=1.0))
    summary, _ = run(_operator(lease_database))
    assert summary["unknown"] == 1
    mock_crm.set_faults(FaultConfig())
    # An incremental query that no longer returns the row: the create is still unresolved.
    summary, failure = run(_operator(lease_database, sql="SELECT * FROM rows WHERE ref = 'none'"))
    assert failure is not None
    assert "unknown outcome" in str(failure)
    assert (summary["rows"], summary["unknown"]) == (0, 1)
    assert summary["first_problems"][0][0] == "R1"
    this_run = [row for row in _rejects(lease_database) if row[0] == summary["sync_run_id"]]
    assert [(key, outcome) for _, key, outcome, _ in this_run] == [("R1", "unknown")]


def test_a_duplicate_key_behind_an_unchanged_row_is_caught_and_the_record_never_flips(
    lease_database: Database, mock_crm: MockCrmServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _warehouse(tmp_path / "w.db", monkeypatch, [("R1", "first"), ("R2", "other"), ("R1", "second")])
    for attempt in range(3):
        summary, failure = run(_operator(lease_database, max_rejected=1))
        assert failure is None, attempt
        assert summary["rejected"] == 1, attempt
        assert summary["requests_sent"] == (2 if attempt == 0 else 0), attempt
        assert summary["first_problems"][0][:2] == ["R1", "rejected duplicate_key"]
    records = _records(mock_crm)
    assert [record["name"] for record in records["R1"]] == ["first"]


class _SmallSeenKeys(SeenKeys):
    """Keys seen that move to disk past four, and say when they did."""

    spills: list[int] = []

    def __init__(self) -> None:
        super().__init__(memory_keys=4)

    def _spill(self) -> sqlite3.Connection:
        _SmallSeenKeys.spills.append(self.count)
        return super()._spill()


def test_duplicates_are_caught_once_the_keys_seen_are_on_disk(
    lease_database: Database, mock_crm: MockCrmServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "SeenKeys", _SmallSeenKeys)
    monkeypatch.setattr(_SmallSeenKeys, "spills", [])
    rows = [(f"R{number:02d}", f"name {number}") for number in range(20)]
    rows += [("R03", "again"), ("R15", "again"), ("R03", "third"), ("R20", "new")]
    _warehouse(tmp_path / "w.db", monkeypatch, rows)
    for attempt in range(2):
        # Batches of 5 rows: the later rows of R03 and R15 come in batches after their first.
        summary, failure = run(_operator(lease_database, max_rejected=3, chunk_size=5))
        assert failure is None, attempt
        assert summary["rejected"] == 3, attempt
        assert summary["requests_sent"] == (21 if attempt == 0 else 0), attempt
        assert summary["unchanged"] == (0 if attempt == 0 else 21), attempt
        problems = [row[:2] for row in summary["first_problems"]]
        assert [key for key, _ in problems] == ["R03", "R15", "R03"], attempt
        assert {problem for _, problem in problems} == {"rejected duplicate_key"}, attempt
    # The digests did move to disk: in each run, except on SQLite, where the second run marks
    # the keys its state held at the start by rowid (sqlite_state.SqliteKeyLookup), not by digest.
    assert len(_SmallSeenKeys.spills) == (1 if lease_database.kind == "sqlite" else 2)
    records = _records(mock_crm)
    assert [record["name"] for record in records["R03"]] == ["name 3"]
    assert [record["name"] for record in records["R15"]] == ["name 15"]


def test_a_null_key_is_in_the_rejects_table_and_a_binary_key_loads(
    lease_database: Database, mock_crm: MockCrmServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _warehouse(
        tmp_path / "w.db",
        monkeypatch,
        [("R1", "one"), (None, "no key"), (b"\x00\xffbin", "binary"), (b"\x00\xffBIN", "binary 2")],
    )
    summary, failure = run(_operator(lease_database, max_rejected=1))
    assert failure is None
    assert (summary["created"], summary["rejected"]) == (3, 1)
    rejects = _rejects(lease_database)
    assert [(key, outcome, code) for _, key, outcome, code in rejects] == [("", "rejected", "key")]
    message = lease_database.query(f"SELECT error_message FROM {lease_database.table}_rejects")[0][0]
    assert "'ref' is NULL" in message
    assert "row 2 of the query" in message
    assert set(_state(lease_database)) == {"R1", "0x00ff62696e", "0x00ff42494e"}


def test_datetime_and_decimal_keys_keep_every_digit(
    lease_database: Database,
    mock_crm: MockCrmServer,
    postgres_warehouse: tuple[str, str],
) -> None:
    conn_id, schema = postgres_warehouse

    def operator() -> SqlToOpportunityOperator:
        return _operator(
            lease_database,
            sql_conn_id=conn_id,
            sql=f"SELECT * FROM {schema}.rows ORDER BY position",
            key_columns=["at", "amount"],
            max_rejected=1,
        )

    summary, failure = run(operator())
    assert failure is None
    # Three rows on one day, one of them only a microsecond later, and 1.5 vs 1.50 vs 1.51.
    assert summary["created"] == 3
    assert summary["rejected"] == 1  # 1.50 is the key 1.5 again: a duplicate, never an update of it
    summary, failure = run(operator())
    assert failure is None
    assert (summary["unchanged"], summary["created"], summary["updated"]) == (3, 0, 0)
    assert len(mock_crm.store.v1_records()) == 3


@pytest.fixture
def postgres_warehouse(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A PostgreSQL warehouse schema whose key columns are a timestamptz and a numeric."""
    import uuid

    import psycopg

    postgres_user, reason = _postgres_login()
    if postgres_user is None:
        pytest.skip(f"PostgreSQL does not answer on 127.0.0.1:5432 ({reason}); the warehouse test skipped")

    schema = f"rows_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(
        host="127.0.0.1", port=5432, user=postgres_user, dbname="test", autocommit=True
    ) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE TABLE {schema}.rows (position int, at timestamptz, amount numeric, ref_text text, "
            "name text, venue_id int, contact_id int, type_id int, stage_id int, source_id int)"
        )
        for position, (at, amount) in enumerate(
            [
                ("2026-11-30 09:00:00+00", "1.5"),
                ("2026-11-30 09:00:00.000001+00", "1.5"),
                ("2026-11-30 17:30:00+00", "1.51"),
                ("2026-11-30 09:00:00+00", "1.50"),
            ]
        ):
            conn.execute(
                f"INSERT INTO {schema}.rows VALUES (%s, %s, %s, %s, %s, 107, 918, 18, 69, 25)",
                (position, at, amount, f"{at}|{amount}", f"name {position}"),
            )
    conn_id = "rows_postgres"
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": 5432,
                "login": postgres_user,
                "schema": "test",
            }
        ),
    )
    try:
        yield conn_id, schema
    finally:
        with psycopg.connect(
            host="127.0.0.1", port=5432, user=postgres_user, dbname="test", autocommit=True
        ) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# -- two runs of one partition ------------------------------------------------------------------

_CHILD = """
import json, sys
from airflow_opportunity_provider.transfers import SqlToOpportunityOperator
options = json.loads(sys.argv[1])
SqlToOpportunityOperator(task_id="load", progress_interval=0, **options).execute({})
"""


def _stderr(child: subprocess.Popen[bytes]) -> str:
    """What a child wrote to its stderr file so far."""
    return Path(_STDERR[child.pid]).read_text(errors="replace")


_STDERR: dict[int, str] = {}


@pytest.fixture(autouse=True)
def _remove_child_logs() -> Iterator[None]:
    """Delete the stderr files of the test's children once it is over (they live in the temp dir)."""
    yield
    while _STDERR:
        Path(_STDERR.popitem()[1]).unlink(missing_ok=True)


def _start_child(
    database: Database, server: MockCrmServer | None = None, **options: Any
) -> subprocess.Popen[bytes]:
    settings = {
        "sql": SQL,
        "sql_conn_id": WAREHOUSE,
        "key_columns": "ref",
        "mapping": MAPPING,
        "state_conn_id": database.conn_id,
        "state_table": database.table,
        "sync_name": "rows.sync",
        "concurrency": 4,
        **options,
    }
    env = os.environ.copy()
    if server is not None:
        # A short read timeout: a request that was on the wire while the child was stopped ends
        # (as an unknown outcome) soon after it wakes, rather than after the default minute.
        env["AIRFLOW_CONN_OPPORTUNITY_DEFAULT"] = connection_json(server, timeout=5, max_retries=1)
    # A file, not a pipe: a child that logs more than a pipe holds would block on a write
    # nobody reads until it exits, and look like a hang.
    with tempfile.NamedTemporaryFile(prefix="child-stderr-", suffix=".log", delete=False) as stderr:
        stderr_path = stderr.name
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(settings)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    _STDERR[child.pid] = stderr_path
    return child


def _wait_for(condition: Callable[[], bool], child: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert child.poll() is None, _stderr(child) or what
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_second_run_of_a_partition_fails_fast_naming_the_first_and_no_key_is_created_twice(
    lease_database: Database, mock_crm: MockCrmServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _warehouse(tmp_path / "w.db", monkeypatch, [(f"R{number:03d}", f"name {number}") for number in range(24)])
    mock_crm.set_faults(FaultConfig(latency=0.15))
    child = _start_child(lease_database)
    try:
        _wait_for(lambda: mock_crm.counters.snapshot()["v1_creates"] >= 1, child, "the first run never sent")
        started = time.monotonic()
        with pytest.raises(LeaseHeldError) as held:
            _operator(lease_database).execute({})
        assert time.monotonic() - started < 5
        assert "being loaded by sync run" in str(held.value)
        assert "lease expires" in str(held.value)
        assert held.value.host
        assert child.wait(timeout=60) == 0, _stderr(child)
    finally:
        if child.poll() is None:
            child.kill()
    records = _records(mock_crm)
    assert len(records) == 24
    assert all(len(found) == 1 for found in records.values())


def _stall_outside_a_transaction(process: subprocess.Popen[bytes], database: Database) -> None:
    """SIGSTOP the process at a moment it holds no write lock on the state.

    A process frozen inside a transaction blocks every writer of the state (SQLite's file lock,
    PostgreSQL's row lock on the lease) until it wakes: the next run then waits instead of
    loading, which is safe but not what this test is about.
    """
    for _ in range(200):
        process.send_signal(signal.SIGSTOP)
        time.sleep(0.05)
        connection = database.raw()
        try:
            cursor = connection.cursor()
            if database.kind == "sqlite":
                connection.isolation_level = None
                cursor.execute("PRAGMA busy_timeout=0")
                cursor.execute("BEGIN IMMEDIATE")
            else:
                cursor.execute(f"SELECT 1 FROM {database.table}_leases FOR UPDATE NOWAIT")
            connection.rollback()
            return
        except Exception:
            connection.rollback()
        finally:
            connection.close()
        process.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError("the process never paused outside a write transaction")


def test_a_run_that_lost_its_lease_while_stalled_sends_no_create_after(
    lease_database: Database, mock_crm: MockCrmServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = _named_rows(tmp_path, monkeypatch, "R", 60)
    mock_crm.set_faults(FaultConfig(latency=0.05))
    zombie = _start_child(lease_database, mock_crm, lease_seconds=1.0)
    try:
        _wait_for(lambda: mock_crm.counters.snapshot()["v1_creates"] >= 5, zombie, "the first run never sent")
        _stall_outside_a_transaction(zombie, lease_database)  # it stalls; its lease runs out
        time.sleep(1.5)
        _, failure = run(_operator(lease_database, max_unknown=len(keys)))
        assert failure is None, failure
        stored_at_takeover = set(_records(mock_crm))
        in_flight_at_takeover = {
            key for key, (outcome, _) in _state(lease_database).items() if outcome == "unknown"
        }
        zombie.send_signal(signal.SIGCONT)
        zombie.wait(timeout=60)
        assert zombie.returncode != 0
        assert "LeaseLostError" in _stderr(zombie)
        # The zombie wakes up to find its lease gone: it commits no create intent, so the only
        # create that may still reach the CRM is one already on the wire when it stalled (its
        # intent committed under the lease, and reported unknown by the run that took over).
        late = set(_records(mock_crm)) - stored_at_takeover
        assert late <= in_flight_at_takeover, late
    finally:
        if zombie.poll() is None:
            zombie.send_signal(signal.SIGCONT)
            zombie.kill()
    records = _records(mock_crm)
    assert all(len(found) == 1 for found in records.values()), "a key was created twice"
    missing = set(keys) - set(records)
    state = _state(lease_database)
    # A create that was in flight when the zombie stalled is unknown, never resent.
    assert {key for key, (outcome, _) in state.items() if outcome == "unknown"} >= missing


def test_requests_in_flight_never_exceed_concurrency_on_any_state(
    database: Database, mock_crm: MockCrmServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a state server, three workers share each request slot (they commit their create's
    # mark while they wait for it): the CRM still never sees more than ``concurrency`` at once.
    keys = _named_rows(tmp_path, monkeypatch, "S", 120)
    mock_crm.set_faults(FaultConfig(latency=0.02))
    summary, failure = run(_operator(database, concurrency=4))
    assert failure is None, failure
    assert summary["created"] == len(keys)
    assert mock_crm.counters.snapshot()["peak_in_flight"] == 4


def test_a_create_that_waited_for_a_slot_commits_its_mark_again_before_it_leaves(
    postgresql: Database, mock_crm: MockCrmServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One slot, three workers: the second and third commit their marks, then wait one and two
    # answers for the slot. A mark older than a quarter of the lease (here 0.25 s) is committed
    # again (the lease checked and renewed) just before its create leaves, so no create leaves
    # on a lease check older than that: its stored attempt time is that late mark's.
    latency = 0.5
    keys = _named_rows(tmp_path, monkeypatch, "W", 6)
    mock_crm.set_faults(FaultConfig(latency=latency))
    summary, failure = run(_operator(postgresql, concurrency=1, lease_seconds=1.0))
    assert failure is None, failure
    assert summary["created"] == len(keys)
    rows = postgresql.query(f"SELECT source_key, attempted_at, outcome_at FROM {postgresql.table}")
    assert len(rows) == len(keys)
    for key, attempted_at, outcome_at in rows:
        answered = datetime.fromisoformat(outcome_at).timestamp()
        # Without the second commit the third worker's mark would be two answers older (1.5 s).
        assert answered - attempted_at < latency + 0.25 + 0.35, (key, answered - attempted_at)


def test_a_load_killed_on_a_state_server_leaves_at_most_three_creates_per_slot_unresolved(
    postgresql: Database, mock_crm: MockCrmServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    concurrency = 4
    keys = _named_rows(tmp_path, monkeypatch, "K", 300)
    mock_crm.set_faults(FaultConfig(latency=0.05))
    child = _start_child(postgresql, mock_crm, concurrency=concurrency, lease_seconds=1.0)
    try:
        _wait_for(lambda: mock_crm.counters.snapshot()["v1_creates"] >= 40, child, "the run never sent")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    time.sleep(0.3)  # let the mock finish the requests the dead client left behind
    interrupted = {key for key, (outcome, _) in _state(postgresql).items() if outcome == "in_flight"}
    # Up to one request in flight per slot, and two more marks committed per slot while waiting.
    assert 0 < len(interrupted) <= 3 * concurrency, interrupted
    summary, failure = run(
        _operator(postgresql, concurrency=concurrency, max_unknown=len(interrupted), lease_wait_seconds=5.0)
    )
    assert failure is None, failure
    assert summary["unknown"] == len(interrupted)
    records = _records(mock_crm)
    assert all(len(found) == 1 for found in records.values()), "a key was created twice"
    state = _state(postgresql)
    assert {key for key, (outcome, _) in state.items() if outcome == "unknown"} == interrupted
    assert {key for key, (outcome, _) in state.items() if outcome == "created"} == set(keys) - interrupted


def test_creates_whose_marks_are_committed_are_sent_when_another_row_stops_the_load(
    postgresql: Database, mock_crm: MockCrmServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A refused credential stops the load while other workers hold committed marks and wait for
    # a slot: they still send (and record) their creates, so none is left in flight to be
    # reported unknown by the next run.
    keys = _named_rows(tmp_path, monkeypatch, "A", 200)
    mock_crm.set_faults(FaultConfig(latency=0.02, error_rate=0.03, error_status=401, seed=7))
    _, failure = run(_operator(postgresql, concurrency=4))
    assert failure is not None
    assert (
        mock_crm.counters.snapshot()["auth_failures"] + mock_crm.counters.snapshot()["rejected_by_fault"] > 0
    )
    state = _state(postgresql)
    assert len(state) < len(keys), "the load did not stop"
    assert not {key for key, (outcome, _) in state.items() if outcome == "in_flight"}
    records = _records(mock_crm)
    assert all(len(found) == 1 for found in records.values())
    assert set(records) == {key for key, (outcome, _) in state.items() if outcome == "created"}
