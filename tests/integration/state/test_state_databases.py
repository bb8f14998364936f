"""The sync state on SQLite, PostgreSQL and MariaDB alike: exact keys whatever the collation,
the lease (held, waited for, taken over, lost by a zombie in another process), atomic group
commits, the migration of a first-release table, the runs table and unresolved creates."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_opportunity_provider.transfers.group_commit import StateThread
from airflow_opportunity_provider.transfers.keys import key_digest, partition_of
from airflow_opportunity_provider.transfers.outcomes import Outcome
from airflow_opportunity_provider.transfers.state import (
    LeaseHeldError,
    LeaseLostError,
    RunRecord,
    StateWrite,
    SyncState,
)
from tests.integration.state.conftest import Database
from tests.unit.transfers.test_group_commit import _applying_threads, _with_state_thread

REPO = Path(__file__).resolve().parents[3]
# Keys a case-insensitive or PAD SPACE collation would call equal; each must stay its own row.
LOOKALIKES = ["ABC", "abc", "a", "a ", "é", "e", "ß", "ss"]


def _write(key: str, outcome: Outcome, **fields: Any) -> StateWrite:
    return StateWrite(key, key_digest(key), outcome, **fields)


def _count(database: Database, where: str = "", parameters: tuple[Any, ...] = ()) -> int:
    return int(database.query(f"SELECT COUNT(*) FROM {database.table} {where}", parameters)[0][0])


def test_keys_that_collations_confuse_and_10000_character_keys_are_rows_of_their_own(
    database: Database,
) -> None:
    state = database.state()
    long_keys = ["x" * 10_000, "x" * 9_999 + "y", "x" * 500 + "z"]
    keys = LOOKALIKES + long_keys
    state.apply(
        [_write(key, Outcome.CREATED, crm_id=f"id-{n}", payload_hash="h") for n, key in enumerate(keys)]
    )
    found = state.lookup([key_digest(key) for key in keys])
    assert {record.key: record.crm_id for record in found.values()} == {
        key: f"id-{n}" for n, key in enumerate(keys)
    }
    assert _count(database) == len(keys)
    stored = {row[0] for row in database.query(f"SELECT source_key FROM {database.table}")}
    assert stored == set(keys)  # every key kept whole, trailing space included
    # A second run writes each again: still one row per key, each with its own id.
    again = database.state("run-2")
    again.apply([_write(key, Outcome.UPDATED, payload_hash="h2") for key in keys])
    found = again.lookup([key_digest(key) for key in keys])
    assert {record.key: (record.crm_id, record.outcome) for record in found.values()} == {
        key: (f"id-{n}", "updated") for n, key in enumerate(keys)
    }
    assert _count(database) == len(keys)


def test_sync_names_that_differ_only_in_case_are_two_syncs(database: Database) -> None:
    upper = database.state(sync_name="Nightly")
    lower = database.state(sync_name="nightly")
    upper.apply([_write("A", Outcome.CREATED, crm_id="1")])
    assert lower.lookup([key_digest("A")]) == {}
    assert [item.sync_name for item in lower.list_syncs()] == ["Nightly"]


def test_a_second_run_of_a_partition_fails_fast_naming_the_holder(database: Database) -> None:
    first = database.state("run-1", dag_run_id="scheduled__2026-01-01")
    assert first.acquire_lease(60) == 1
    second = database.state("run-2")
    started = time.monotonic()
    with pytest.raises(LeaseHeldError, match=r"run-1.*scheduled__2026-01-01.*host .*expires at") as held:
        second.acquire_lease(60)
    assert time.monotonic() - started < 2
    assert held.value.holder_run_id == "run-1"
    assert held.value.expires_at is not None
    # Another partition of the same sync is free; a live lease with another partition count is not.
    other_partition = database.state("run-3", partition_index=1, partition_count=2)
    with pytest.raises(LeaseHeldError, match="run-1"):
        other_partition.acquire_lease(60)
    assert first.release_lease()
    assert other_partition.acquire_lease(60) == 1
    sibling = database.state("run-4", partition_index=0, partition_count=2)
    assert sibling.acquire_lease(60) == 2


def test_a_run_waits_for_a_lease_to_expire_when_asked_to(database: Database) -> None:
    first = database.state("run-1")
    first.acquire_lease(0.8)
    second = database.state("run-2")
    started = time.monotonic()
    assert second.acquire_lease(60, wait_seconds=10) == 2
    assert 0.5 < time.monotonic() - started < 5
    with pytest.raises(LeaseHeldError):
        first.acquire_lease(60, wait_seconds=0.6)


def test_after_expiry_a_takeover_bumps_the_generation_and_the_old_holder_writes_nothing(
    database: Database,
) -> None:
    zombie = database.state("run-1")
    assert zombie.acquire_lease(0.4) == 1
    zombie.apply([_write("A", Outcome.IN_FLIGHT, payload_hash="h")])
    time.sleep(0.6)
    heir = database.state("run-2")
    assert heir.acquire_lease(60) == 2
    before = database.query(f"SELECT key_digest, outcome, run_id FROM {database.table}")
    with pytest.raises(LeaseLostError, match="run-1 no longer holds the lease of generation 1"):
        zombie.apply([_write("B", Outcome.IN_FLIGHT), _write("A", Outcome.CREATED, crm_id="9", reject=True)])
    assert database.query(f"SELECT key_digest, outcome, run_id FROM {database.table}") == before
    assert database.query(f"SELECT COUNT(*) FROM {database.table}_rejects")[0][0] == 0
    # Every later write of the zombie is refused too (a lost lease stays lost); recording its run is not.
    with pytest.raises(LeaseLostError):
        zombie.apply([_write("C", Outcome.IN_FLIGHT)])
    with pytest.raises(LeaseLostError):
        zombie.mark_unknown([key_digest("A")], "interrupted", "x")
    with pytest.raises(LeaseLostError):
        zombie.renew_lease()
    assert not zombie.release_lease()
    zombie.record_run(RunRecord("run-1", verdict="failed", failure_reason="lease lost"))
    assert [run.sync_run_id for run in heir.runs()] == ["run-1"]
    # The heir sees the zombie's committed intent and carries on.
    assert [record.key for record in heir.unresolved()] == ["A"]
    heir.apply([_write("B", Outcome.IN_FLIGHT)])
    heir.renew_lease()
    assert heir.release_lease()


def test_of_several_runs_racing_for_an_expired_lease_exactly_one_wins(database: Database) -> None:
    first = database.state("run-0")
    first.acquire_lease(0.2)
    time.sleep(0.4)
    racers = [database.state(f"run-{n}") for n in range(1, 5)]
    won: list[int] = []
    lost: list[BaseException] = []
    barrier = threading.Barrier(len(racers))

    def race(state: Any) -> None:
        barrier.wait()
        try:
            won.append(state.acquire_lease(60))
        except LeaseHeldError as error:
            lost.append(error)

    # Each racer has its own connection, opened on this thread: DB-API connections may be used
    # from another thread as long as only one uses them at a time (sqlite3 needs check_same_thread off).
    for state in racers:
        if database.kind == "sqlite":
            state.close()
            state._connect = _any_thread_sqlite(state._connect)
            state.open()
    threads = [threading.Thread(target=race, args=(state,)) for state in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert won == [2]
    assert len(lost) == 3


def _any_thread_sqlite(connect: Any) -> Any:
    import sqlite3

    def reconnect() -> Any:
        connection = connect()
        path = connection.execute("PRAGMA database_list").fetchone()[2]
        connection.close()
        return sqlite3.connect(path, timeout=60.0, check_same_thread=False)

    return reconnect


_ZOMBIE = """
import os, sys
from airflow_opportunity_provider.transfers.keys import key_digest
from airflow_opportunity_provider.transfers.outcomes import Outcome
from airflow_opportunity_provider.transfers.state import LeaseLostError, StateWrite, SyncState
state = SyncState.from_conn_id(sys.argv[1], sync_name="test.sync", run_id="zombie", table=sys.argv[2])
state.open()
print(state.acquire_lease(float(sys.argv[3])), flush=True)
state.apply([StateWrite("A", key_digest("A"), Outcome.IN_FLIGHT, payload_hash="h")])
print("intent", flush=True)
sys.stdin.readline()  # until the test has taken the lease over
try:
    state.apply([StateWrite("B", key_digest("B"), Outcome.IN_FLIGHT, payload_hash="h")])
    print("wrote", flush=True)
except LeaseLostError as error:
    print("lost", error, flush=True)
"""


def test_a_zombie_in_another_process_cannot_commit_an_intent_after_a_takeover(
    lease_database: Database,
) -> None:
    database = lease_database
    state = database.state()  # creates the tables
    child = subprocess.Popen(
        [sys.executable, "-c", _ZOMBIE, database.conn_id, database.table, "0.5"],
        cwd=REPO,
        env=os.environ.copy(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        assert child.stdout.readline().strip() == "1", child.stderr.read() if child.stderr else ""
        assert child.stdout.readline().strip() == "intent"
        time.sleep(0.7)
        assert state.acquire_lease(60) == 2
        child.stdin.write("go\n")
        child.stdin.flush()
        answer = child.stdout.readline()
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert answer.startswith("lost"), answer
    assert {record.key for record in state.lookup([key_digest("A"), key_digest("B")]).values()} == {"A"}


def test_a_group_that_fails_part_way_writes_nothing(lease_database: Database) -> None:
    database = lease_database
    state = database.state()
    state.acquire_lease(60)
    state.apply([_write("A", Outcome.CREATED, crm_id="1")])
    database.query(f"DROP TABLE {database.table}_rejects")
    with pytest.raises(Exception, match=r"(?i)rejects|no such table|does not exist"):
        state.apply(
            [_write("A", Outcome.UPDATED, payload_hash="h2"), _write("B", Outcome.REJECTED, reject=True)]
        )
    record = state.lookup([key_digest("A")])[key_digest("A")]
    assert (record.outcome, record.payload_hash) == ("created", None)
    assert _count(database) == 1


@pytest.mark.postgres
def test_a_state_connection_killed_by_the_server_fails_the_group_and_writes_nothing(
    lease_database: Database,
) -> None:
    database = lease_database
    if database.kind != "postgresql":
        pytest.skip("only a server can end a connection")
    state = database.state()
    state.apply([_write("A", Outcome.CREATED, crm_id="1")])
    pid = state.connection.info.backend_pid
    database.query("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(Exception, match=r"(?i)terminat|closed|connection"):
        state.apply([_write("B", Outcome.IN_FLIGHT)])
    assert _count(database) == 1


# The first release's DDL, verbatim: an upgraded deployment has tables like these.
_FIRST_RELEASE = [
    "CREATE TABLE {table} (sync_name VARCHAR(250) NOT NULL, source_key VARCHAR(500) NOT NULL, "
    "crm_id VARCHAR(100), payload_hash VARCHAR(64), outcome VARCHAR(16) NOT NULL, "
    "outcome_at VARCHAR(32) NOT NULL, run_id VARCHAR(64), error_code VARCHAR(64), error_message TEXT, "
    "PRIMARY KEY (sync_name, source_key))",
    "CREATE TABLE {table}_rejects (sync_name VARCHAR(250) NOT NULL, sync_run_id VARCHAR(64) NOT NULL, "
    "dag_run_id VARCHAR(250), source_key VARCHAR(500) NOT NULL, outcome VARCHAR(16) NOT NULL, "
    "error_code VARCHAR(64), error_message TEXT, recorded_at VARCHAR(32) NOT NULL)",
]


def test_a_state_table_of_the_first_release_is_migrated_in_place(database: Database) -> None:
    for statement in _FIRST_RELEASE:
        database.query(statement.format(table=database.table))
    rows = [
        (
            "test.sync",
            "WH-000001",
            "101",
            "h1",
            "created",
            "2026-01-01T00:00:00.000000Z",
            "old-run",
            None,
            None,
        ),
        (
            "test.sync",
            "WH-000002",
            None,
            "h2",
            "in_flight",
            "2026-01-01T00:00:00.000000Z",
            "old-run",
            None,
            None,
        ),
        (
            "test.sync",
            '[1,"Pre"]',
            "1/Pre",
            "h3",
            "updated",
            "2026-01-01T00:00:00.000000Z",
            "old-run",
            None,
            None,
        ),
        (
            "test.sync",
            "k" * 500,
            None,
            None,
            "rejected",
            "2026-01-01T00:00:00.000000Z",
            "old-run",
            "key",
            "long",
        ),
        ("other.sync", "WH-000001", "999", "h9", "created", "2026-01-01T00:00:00.000000Z", "r", None, None),
    ]
    rows += [
        ("test.sync", f"bulk-{n:05d}", str(n), "h", "created", "2026-01-01", "old-run", None, None)
        for n in range(2500)
    ]
    marks = ", ".join("?" * 9)
    connection = database.raw()
    cursor = connection.cursor()
    cursor.executemany(
        f"INSERT INTO {database.table} VALUES ({marks})".replace("?", database.placeholder), rows
    )
    cursor.execute(
        f"INSERT INTO {database.table}_rejects VALUES ({', '.join('?' * 8)})".replace(
            "?", database.placeholder
        ),
        ("test.sync", "old-run", None, "WH-000003", "rejected", "24224", "no", "2026-01-01T00:00:00Z"),
    )
    connection.commit()
    connection.close()

    # Two partitions open the old state at once: one migrates, the other finds it done.
    states = [database.state(f"run-{n}", open_=False) for n in range(2)]
    errors: list[BaseException] = []

    def open_(state: Any) -> None:
        try:
            state.open()
        except BaseException as error:
            errors.append(error)
        finally:
            state.close()  # on the thread that opened it

    threads = [threading.Thread(target=open_, args=(state,)) for state in states]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    state = database.state()
    found = state.lookup([key_digest(key) for key in ("WH-000001", "WH-000002", '[1,"Pre"]', "k" * 500)])
    assert {
        record.key: (record.crm_id, record.payload_hash, record.outcome) for record in found.values()
    } == {
        "WH-000001": ("101", "h1", "created"),
        "WH-000002": (None, "h2", "in_flight"),
        '[1,"Pre"]': ("1/Pre", "h3", "updated"),
        "k" * 500: (None, None, "rejected"),
    }
    assert len(state.lookup([key_digest(f"bulk-{n:05d}") for n in range(2500)])) == 2500
    assert [record.key for record in state.unresolved()] == ["WH-000002"]
    other = database.state(sync_name="other.sync")
    assert other.lookup([key_digest("WH-000001")])[key_digest("WH-000001")].crm_id == "999"
    # The old rejects stay; new ones may carry keys of any length.
    state.apply([_write("y" * 2000, Outcome.REJECTED, reject=True, error_code="24224")])
    assert [row["source_key"] for row in state.rejects()] == ["WH-000003", "y" * 2000]
    assert _count(database) == len(rows) + 1


def test_runs_are_recorded_and_read_back(database: Database) -> None:
    state = database.state("run-1", partition_index=1, partition_count=3, dag_run_id="manual__1")
    run = RunRecord(
        "run-1",
        dag_id="warehouse",
        task_id="load",
        dag_run_id="manual__1",
        started_at="2026-01-01T00:00:00.000000Z",
        finished_at="2026-01-01T00:01:00.500000Z",
        duration_seconds=60.5,
        verdict="failed",
        failure_reason="3 of 10 rows were rejected",
        rows_read=30,
        rows=10,
        created=5,
        updated=1,
        unchanged=1,
        rejected=3,
        requests_sent=9,
        retries=2,
        rate_limited_answers=1,
        max_rejected=0,
        max_unknown=0.05,
        summary={"sync_name": "test.sync", "first_problems": [["A", "rejected 24224", "no"]]},
    )
    state.record_run(run)
    later = RunRecord("run-2", started_at="2026-01-02T00:00:00.000000Z", verdict="success", max_rejected=None)
    state.record_run(later)
    state.record_run(run)  # written again: still one row
    runs = state.runs()
    assert [item.sync_run_id for item in runs] == ["run-2", "run-1"]
    expected = RunRecord(
        **{**run.__dict__, "sync_name": "test.sync", "partition_index": 1, "partition_count": 3}
    )
    assert runs[1] == expected
    assert isinstance(runs[1].max_rejected, int)
    assert isinstance(runs[1].max_unknown, float)
    assert runs[0].max_rejected is None
    assert state.runs(limit=1) == [runs[0]]


def test_unresolved_returns_only_this_partitions_unknown_and_in_flight_creates(database: Database) -> None:
    keys = [f"WH-{n:06d}" for n in range(60)]
    whole = database.state()
    outcomes = [Outcome.IN_FLIGHT, Outcome.UNKNOWN, Outcome.CREATED]
    whole.apply([_write(key, outcomes[n % 3], attempted_at=float(n)) for n, key in enumerate(keys)])
    expected = {key for n, key in enumerate(keys) if n % 3 != 2}
    assert {record.key for record in whole.unresolved()} == expected
    seen: set[str] = set()
    for index in range(4):
        part = database.state(f"part-{index}", partition_index=index, partition_count=4)
        mine = {record.key for record in part.unresolved()}
        assert all(partition_of(key, 4) == index for key in mine)
        assert not mine & seen
        seen |= mine
    assert seen == expected
    record = next(record for record in whole.unresolved() if record.key == "WH-000001")
    assert (record.outcome, record.attempted_at) == ("unknown", 1.0)


@pytest.mark.postgres
def test_outcome_groups_relax_durability_for_their_own_transaction_only(lease_database: Database) -> None:
    from airflow_opportunity_provider.transfers import postgres_state

    database = lease_database
    if database.kind != "postgresql":
        pytest.skip("synchronous_commit is PostgreSQL's")
    state = database.state()
    state.apply([_write("A", Outcome.CREATED, crm_id="1")])  # an outcome group: asynchronous commit
    cursor = state.connection.cursor()
    cursor.execute("SHOW synchronous_commit")
    assert cursor.fetchone()[0] == "on"  # the session keeps the server's setting
    cursor.close()
    relaxed = postgres_state.group_statement(state, True, False, False, durable=False)
    assert "set_config('synchronous_commit', 'off', true)" in relaxed
    assert "synchronous_commit" not in postgres_state.group_statement(state, True, False, False, durable=True)


def test_on_postgresql_group_commits_are_made_on_the_event_loop_in_the_order_asked(
    postgresql: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The state thread would commit through the thread's connection (SyncState.apply); with
    # psycopg 3 every group goes through the event loop's asynchronous connection instead, and
    # the calls between them still run on the thread, in the order they were asked for.
    thread_applies = _applying_threads(monkeypatch)

    async def body(thread: StateThread, state: SyncState) -> tuple[dict[str, Any], dict[str, Any]]:
        assert not thread.commits_locally  # a server: every commit is a round trip
        first = asyncio.ensure_future(thread.write(_write("A", Outcome.IN_FLIGHT, payload_hash="h")))
        thread.submit(_write("B", Outcome.REJECTED, error_code="schema", reject=True))
        # A call asked after the writes sees them; a write asked after the call is not seen.
        seen = asyncio.ensure_future(thread.call(state.lookup, [key_digest("A"), key_digest("B")]))
        later = asyncio.ensure_future(
            thread.write(_write("A", Outcome.CREATED, payload_hash="h", crm_id="9"))
        )
        await asyncio.gather(first, later)
        before = {record.key: record.outcome for record in (await seen).values()}
        after = {
            record.key: record.outcome
            for record in (await thread.call(state.lookup, [key_digest("A")])).values()
        }
        assert thread.commits == thread.loop_commits > 0
        return before, after

    before, after = _with_state_thread(postgresql.state(open_=False), body)
    assert before == {"A": Outcome.IN_FLIGHT, "B": Outcome.REJECTED}
    assert after == {"A": Outcome.CREATED}
    assert not thread_applies
    assert postgresql.query(f"SELECT COUNT(*) FROM {postgresql.table}_rejects")[0][0] == 1
