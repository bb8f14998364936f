"""The sync state on SQLite: upserts that keep a known id, intents turned unknown, rejects."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from airflow_opportunity_provider.errors import OpportunityConfigurationError
from airflow_opportunity_provider.transfers.state import (
    IN_FLIGHT,
    StateWrite,
    SyncState,
    check_table_name,
    default_state_path,
)


def _state(path: Path, run_id: str = "run-1", **options: object) -> SyncState:
    state = SyncState.local(path, sync_name="dag.task", run_id=run_id, dag_run_id="manual__1", **options)  # type: ignore[arg-type]
    state.open()
    return state


def test_outcomes_are_upserted_and_a_null_id_keeps_the_stored_one(tmp_path: Path) -> None:
    state = _state(tmp_path / "state.db")
    state.apply(
        [StateWrite("A", IN_FLIGHT, payload_hash="h1"), StateWrite("B", "rejected", payload_hash="h2")]
    )
    state.apply([StateWrite("A", "created", payload_hash="h1", crm_id="1001")])
    state.apply(
        [StateWrite("A", "rejected", payload_hash="h3", error_code="24224", error_message="no", reject=True)]
    )
    found = state.lookup(["A", "B", "C"])
    assert set(found) == {"A", "B"}
    assert (found["A"].crm_id, found["A"].payload_hash, found["A"].outcome) == ("1001", "h3", "rejected")
    assert found["A"].run_id == "run-1"
    rejects = state.rejects()
    assert [(row["source_key"], row["error_code"], row["dag_run_id"]) for row in rejects] == [
        ("A", "24224", "manual__1")
    ]
    state.close()


def test_lookup_handles_more_keys_than_one_query_takes(tmp_path: Path) -> None:
    state = _state(tmp_path / "state.db")
    state.apply([StateWrite(f"K{n}", "created", payload_hash="h", crm_id=str(n)) for n in range(1200)])
    assert len(state.lookup([f"K{n}" for n in range(1500)])) == 1200


def test_in_flight_intents_become_unknown_and_keep_their_run(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = _state(path, "run-1")
    first.apply([StateWrite("A", IN_FLIGHT, payload_hash="h"), StateWrite("B", "created", crm_id="7")])
    first.close()
    second = _state(path, "run-2")
    assert second.keys_with_outcome(IN_FLIGHT) == ["A"]
    second.mark_unknown(["A"], "interrupted", "was in flight")
    record = second.lookup(["A"])["A"]
    assert (record.outcome, record.run_id) == ("unknown", "run-1")
    second.resolve("A", 555)
    assert second.lookup(["A"])["A"].crm_id == "555"
    assert second.lookup(["A"])["A"].outcome == "created"


def test_syncs_are_kept_apart_in_one_table(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    one = _state(path)
    one.apply([StateWrite("A", "created", crm_id="1")])
    other = SyncState.local(path, sync_name="other.sync", run_id="r")
    other.open()
    assert other.lookup(["A"]) == {}


def test_state_survives_in_wal_mode_for_other_readers(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    state = _state(path)
    state.apply([StateWrite("A", "created", crm_id="1")])
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("SELECT crm_id FROM opportunity_sync_state").fetchall() == [("1",)]


@pytest.mark.parametrize("name", ["state; DROP TABLE x", "a.b.c", "1table", "", "my-table"])
def test_table_names_that_could_inject_sql_are_refused(name: str) -> None:
    with pytest.raises(OpportunityConfigurationError):
        check_table_name(name)


def test_custom_tables_and_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _state(tmp_path / "state.db", table="my_state")
    assert state.rejects_table == "my_state_rejects"
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    assert default_state_path() == tmp_path / "home" / "opportunity_sync" / "state.db"


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
    from airflow_opportunity_provider.transfers.state import _switch_to_wal

    connection = _RacingConnection(["database is locked", "database is locked"])
    assert _switch_to_wal(connection) == [("wal",)]
    assert connection.calls == 3


def test_other_errors_of_the_wal_switch_are_raised_at_once() -> None:
    from airflow_opportunity_provider.transfers.state import _switch_to_wal

    connection = _RacingConnection(["disk I/O error"])
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        _switch_to_wal(connection)
    assert connection.calls == 1
