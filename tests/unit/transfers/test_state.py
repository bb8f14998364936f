"""The sync state on SQLite: upserts that keep a known id, intents turned unknown, rejects, the
operations of a command line, table names, and the WAL set-up (the same behaviour on PostgreSQL
and MariaDB is in tests/integration/state)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_opportunity_provider.errors import OpportunityConfigurationError
from airflow_opportunity_provider.transfers.keys import key_digest
from airflow_opportunity_provider.transfers.outcomes import Outcome
from airflow_opportunity_provider.transfers.state import (
    StateWrite,
    SyncState,
    UnresolvedCreateError,
    check_table_name,
    default_state_path,
)


def _state(path: Path, run_id: str = "run-1", **options: Any) -> SyncState:
    state = SyncState.local(path, sync_name="dag.task", run_id=run_id, dag_run_id="manual__1", **options)
    state.open()
    return state


def _write(key: str, outcome: Outcome, **fields: Any) -> StateWrite:
    return StateWrite(key, key_digest(key), outcome, **fields)


def test_outcomes_are_upserted_and_a_null_id_keeps_the_stored_one(tmp_path: Path) -> None:
    state = _state(tmp_path / "state.db")
    state.apply(
        [
            _write("A", Outcome.IN_FLIGHT, payload_hash="h1", attempted_at=100.5, create_hint={"name": "A"}),
            _write("B", Outcome.REJECTED, payload_hash="h2"),
        ]
    )
    state.apply([_write("A", Outcome.CREATED, payload_hash="h1", crm_id="1001")])
    state.apply(
        [
            _write(
                "A", Outcome.REJECTED, payload_hash="h3", error_code="24224", error_message="no", reject=True
            )
        ]
    )
    found = state.lookup([key_digest(key) for key in ("A", "B", "C")])
    assert set(found) == {key_digest("A"), key_digest("B")}
    a = found[key_digest("A")]
    assert (a.key, a.crm_id, a.payload_hash, a.outcome, a.error_code) == (
        "A",
        "1001",
        "h3",
        "rejected",
        "24224",
    )
    # attempted_at and the create hint outlive the outcomes written after the intent; the hint
    # is decoded for unresolved creates only, the one kind ever looked up by it.
    assert (a.run_id, a.attempted_at, a.create_hint) == ("run-1", 100.5, None)
    hint = state.connection.execute(f"SELECT create_hint FROM {state.table}").fetchall()
    assert ('{"name":"A"}',) in hint
    assert a.outcome_at.endswith("Z")
    rejects = state.rejects()
    assert [
        (row["source_key"], row["key_digest"], row["error_code"], row["dag_run_id"]) for row in rejects
    ] == [("A", key_digest("A"), "24224", "manual__1")]
    state.close()


def test_two_writes_of_one_key_in_a_group_leave_what_writing_them_in_order_would(tmp_path: Path) -> None:
    state = _state(tmp_path / "state.db")
    state.apply(
        [
            _write("A", Outcome.IN_FLIGHT, payload_hash="h", attempted_at=5.0),
            _write("A", Outcome.CREATED, crm_id="9", reject=True, error_code="x"),
        ]
    )
    record = state.lookup([key_digest("A")])[key_digest("A")]
    assert (record.outcome, record.crm_id, record.payload_hash, record.attempted_at) == (
        "created",
        "9",
        "h",
        5.0,
    )
    assert len(state.rejects()) == 1


def test_lookup_handles_more_keys_than_one_query_takes(tmp_path: Path) -> None:
    state = _state(tmp_path / "state.db")
    state.apply([_write(f"K{n}", Outcome.CREATED, payload_hash="h", crm_id=str(n)) for n in range(1200)])
    found = state.lookup([key_digest(f"K{n}") for n in range(1500)])
    assert len(found) == 1200
    assert found[key_digest("K1199")].crm_id == "1199"


def test_in_flight_intents_become_unknown_and_keep_their_run_and_attempt(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = _state(path, "run-1")
    first.apply(
        [
            _write("A", Outcome.IN_FLIGHT, payload_hash="h", attempted_at=42.0),
            _write("B", Outcome.CREATED, crm_id="7"),
        ]
    )
    first.close()
    second = _state(path, "run-2")
    unresolved = second.unresolved()
    assert [record.key for record in unresolved] == ["A"]
    assert second.mark_unknown(unresolved, "interrupted", "was in flight") == 1
    record = second.lookup([key_digest("A")])[key_digest("A")]
    assert (record.outcome, record.run_id, record.attempted_at, record.error_code) == (
        "unknown",
        "run-1",
        42.0,
        "interrupted",
    )
    # Already unknown: marking again changes nothing.
    assert second.mark_unknown([key_digest("A")], "interrupted", "again") == 0
    second.resolve("A", 555)
    record = second.lookup([key_digest("A")])[key_digest("A")]
    assert (record.crm_id, record.outcome) == ("555", "created")
    second.resolve(key_digest("B"), 8)  # by digest too
    assert second.lookup([key_digest("B")])[key_digest("B")].crm_id == "8"


def test_unresolved_keeps_only_this_partitions_keys(tmp_path: Path) -> None:
    from airflow_opportunity_provider.transfers.keys import partition_of

    path = tmp_path / "state.db"
    keys = [f"WH-{n:06d}" for n in range(1, 41)]
    whole = _state(path)
    whole.apply([_write(key, Outcome.IN_FLIGHT if n % 2 else Outcome.UNKNOWN) for n, key in enumerate(keys)])
    whole.apply([_write("done", Outcome.CREATED, crm_id="1")])
    seen: list[str] = []
    for index in range(3):
        part = _state(path, partition_index=index, partition_count=3)
        mine = [record.key for record in part.unresolved()]
        assert mine
        assert all(partition_of(key, 3) == index for key in mine)
        seen += mine
    assert sorted(seen) == sorted(keys)


def test_resend_forgets_hashes_and_creates_again_only_when_told(tmp_path: Path) -> None:
    state = _state(tmp_path / "state.db")
    state.apply(
        [
            _write("L", Outcome.CREATED, crm_id="1", payload_hash="h"),
            _write("U", Outcome.UNKNOWN, payload_hash="h"),
        ]
    )
    digests = [key_digest("L"), key_digest("U")]
    with pytest.raises(UnresolvedCreateError, match="create_again=True") as refused:
        state.resend(digests)
    assert refused.value.digests == [key_digest("U")]
    assert state.lookup([key_digest("L")])[key_digest("L")].payload_hash == "h"  # nothing changed
    assert state.resend(digests, create_again=True) == 2
    found = state.lookup(digests)
    loaded, unknown = found[key_digest("L")], found[key_digest("U")]
    assert (loaded.payload_hash, loaded.crm_id, loaded.outcome) == (None, "1", "created")
    assert (unknown.payload_hash, unknown.crm_id, unknown.outcome, unknown.error_code) == (
        None,
        None,
        "failed",
        "resend",
    )


def test_retry_code_marks_the_rows_of_one_error_code_and_leaves_unresolved_creates(tmp_path: Path) -> None:
    state = _state(tmp_path / "state.db")
    state.apply(
        [
            _write("R1", Outcome.REJECTED, payload_hash="h", error_code="24224"),
            _write("R2", Outcome.REJECTED, payload_hash="h", error_code="24224"),
            _write("R3", Outcome.REJECTED, payload_hash="h", error_code="schema"),
            _write("U", Outcome.UNKNOWN, payload_hash="h", error_code="24224"),
        ]
    )
    assert state.retry_code("24224") == 2
    found = state.lookup([key_digest(key) for key in ("R1", "R3", "U")])
    assert [found[key_digest(key)].payload_hash for key in ("R1", "R3", "U")] == [None, "h", "h"]


def test_forget_deletes_one_sync_and_list_syncs_counts_every_sync(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    one = _state(path)
    one.apply([_write("A", Outcome.CREATED, crm_id="1"), _write("B", Outcome.REJECTED, reject=True)])
    other = SyncState.local(path, sync_name="other.sync", run_id="r", partition_index=1, partition_count=2)
    other.open()
    other.apply([_write("A", Outcome.UNKNOWN)])
    other.acquire_lease(60)
    overview = {item.sync_name: item for item in one.list_syncs()}
    assert overview["dag.task"].counts == {"created": 1, "rejected": 1}
    assert overview["other.sync"].counts == {"unknown": 1}
    assert overview["other.sync"].partitions == ((1, 2),)
    per_partition = [item for item in one.list_syncs(per_partition=True) if item.partition_index is not None]
    assert sum(item.total for item in per_partition) == 1
    assert one.forget() == 2
    assert one.lookup([key_digest("A")]) == {}
    assert one.rejects() == []
    assert other.lookup([key_digest("A")])[key_digest("A")].outcome == "unknown"


def test_syncs_are_kept_apart_in_one_table(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    one = _state(path)
    one.apply([_write("A", Outcome.CREATED, crm_id="1")])
    other = SyncState.local(path, sync_name="other.sync", run_id="r")
    other.open()
    assert other.lookup([key_digest("A")]) == {}


def test_state_survives_in_wal_mode_for_other_readers(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    state = _state(path)
    state.apply([_write("A", Outcome.CREATED, crm_id="1")])
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("SELECT crm_id FROM opportunity_sync_state").fetchall() == [("1",)]


@pytest.mark.parametrize("name", ["state; DROP TABLE x", "a.b.c", "1table", "", "my-table"])
def test_table_names_that_could_inject_sql_are_refused(name: str) -> None:
    with pytest.raises(OpportunityConfigurationError):
        check_table_name(name)


@pytest.mark.parametrize("name", ["", " sync", "sync ", "x" * 251, "a\t"])
def test_sync_names_that_a_database_could_not_tell_apart_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(OpportunityConfigurationError, match="sync_name"):
        SyncState.local(tmp_path / "state.db", sync_name=name, run_id="r")


def test_custom_tables_and_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _state(tmp_path / "state.db", table="my_state")
    assert (state.rejects_table, state.runs_table, state.leases_table) == (
        "my_state_rejects",
        "my_state_runs",
        "my_state_leases",
    )
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    assert default_state_path() == tmp_path / "home" / "opportunity_sync" / "state.db"


def test_a_create_hint_is_small_json(tmp_path: Path) -> None:
    state = _state(tmp_path / "state.db")
    with pytest.raises(ValueError, match="at most 4000"):
        state.apply([_write("A", Outcome.IN_FLIGHT, create_hint={"name": "x" * 5000})])
    with pytest.raises(ValueError, match="key_digest"):
        StateWrite("A", "A", Outcome.CREATED)
    assert state.lookup([key_digest("A")]) == {}


def test_a_lease_is_renewed_by_lookups_of_a_run_that_only_reads(tmp_path: Path) -> None:
    state = _state(tmp_path / "state.db")
    state.acquire_lease(0.3)
    for _ in range(4):
        time.sleep(0.15)
        state.lookup([key_digest("A")])
    rival = _state(tmp_path / "state.db", "run-2")
    with pytest.raises(Exception, match="run-1"):
        rival.acquire_lease(10)


class _RacingConnection:
    """Answers the WAL switch with the errors SQLite gives while another process switches the file."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        self.calls = 0

    def execute(self, statement: str) -> Any:
        self.calls += 1
        if self.errors:
            raise sqlite3.OperationalError(self.errors.pop(0))
        return sqlite3.connect(":memory:").execute("SELECT 'wal'")


def test_the_wal_switch_is_tried_again_while_another_partition_holds_the_file() -> None:
    from airflow_opportunity_provider.transfers.sqlite_state import _switch_to_wal

    connection = _RacingConnection(["database is locked", "database is locked"])
    assert _switch_to_wal(connection) == [("wal",)]
    assert connection.calls == 3


def test_other_errors_of_the_wal_switch_are_raised_at_once() -> None:
    from airflow_opportunity_provider.transfers.sqlite_state import _switch_to_wal

    connection = _RacingConnection(["disk I/O error"])
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        _switch_to_wal(connection)
    assert connection.calls == 1


def test_the_unresolved_creates_are_read_through_their_index_not_by_a_scan(tmp_path: Path) -> None:
    """Every run reads them three times: a scan of the sync's rows would cost as much as its lookups."""
    state = _state(tmp_path / "state.db")
    state.apply([_write("A", Outcome.IN_FLIGHT, payload_hash="h1"), _write("B", Outcome.CREATED, crm_id="7")])
    statements: list[str] = []
    state.connection.set_trace_callback(statements.append)
    assert [record.key for record in state.unresolved()] == ["A"]
    state.connection.set_trace_callback(None)
    (query,) = [text for text in statements if text.lstrip().upper().startswith("SELECT")]
    plan = state.connection.execute(f"EXPLAIN QUERY PLAN {query}").fetchall()
    assert any("_unresolved_idx" in str(step[-1]) for step in plan), plan
    state.close()
