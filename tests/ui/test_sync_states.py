"""The page's reading and changing of sync states (the shared operations), over state files written
through ``SyncState``, runs recorded in the runs table as the engine records them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from airflow_opportunity_provider.plugins import sync_states
from airflow_opportunity_provider.plugins.views import LOCAL_STATE_ID
from airflow_opportunity_provider.transfers.keys import key_digest
from airflow_opportunity_provider.transfers.state import SyncState
from tests.ui import sample_states as sample

CONN = "ui_unit_state"


@pytest.fixture
def states(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The sample local state under this test's AIRFLOW_HOME, and a connection's state file."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    local = tmp_path / "home" / "opportunity_sync" / "state.db"
    sample.write_local_state(local)
    connection = tmp_path / "connection-state.db"
    sample.write_connection_state(connection)
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN.upper()}", json.dumps({"conn_type": "sqlite", "host": str(connection)})
    )
    return {"local": local, "connection": connection}


def _state_rows(path: Path, sync_name: str) -> dict[str, tuple[str | None, str | None, str]]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT source_key, crm_id, payload_hash, outcome FROM opportunity_sync_state WHERE sync_name = ?",
            [sync_name],
        ).fetchall()
    return {key: (crm_id, payload_hash, outcome) for key, crm_id, payload_hash, outcome in rows}


def test_the_list_counts_every_sync_of_every_state(states: dict[str, Path]) -> None:
    listing = sync_states.list_syncs([LOCAL_STATE_ID, CONN])

    assert listing.unreachable == []
    found = {(row.location.state_id, row.sync_name): row for row in listing.syncs}
    assert set(found) == {
        (LOCAL_STATE_ID, sample.MAIN_SYNC),
        (LOCAL_STATE_ID, sample.HOSTILE_SYNC),
        (LOCAL_STATE_ID, sample.RESOLVE_SYNC),
        (LOCAL_STATE_ID, sample.FORGET_SYNC),
        (CONN, sample.NEXUS_SYNC),
        (CONN, sample.API_SYNC),
    }
    main = found[(LOCAL_STATE_ID, sample.MAIN_SYNC)]
    assert (main.rows_in_state, main.unresolved_unknowns, main.open_rejects) == (16, 1, 3)
    assert main.partition is None
    assert main.last_run is not None
    assert {name: count for name, count in main.last_run.counts.items() if count} == {
        "updated": 3,
        "rejected": 1,
        "unknown": 1,
    }
    nexus = found[(CONN, sample.NEXUS_SYNC)]
    assert (nexus.location.label, nexus.location.description) == (CONN, f"the state in connection {CONN}")
    assert (nexus.rows_in_state, nexus.open_rejects) == (20, 2)
    assert nexus.last_run is not None
    assert (nexus.last_run.counts.updated, nexus.last_run.counts.failed) == (5, 2)


def test_one_sync_has_its_runs_newest_first_and_its_open_problems(states: dict[str, Path]) -> None:
    detail = sync_states.sync_detail(LOCAL_STATE_ID, sample.MAIN_SYNC)

    assert detail.runs_complete is True
    assert len(detail.runs) == 2
    newest, oldest = detail.runs
    assert newest.started_at is not None
    assert oldest.started_at is not None
    assert newest.started_at > oldest.started_at
    # From the runs table: what each run counted, not what it was the last to write.
    assert (oldest.counts.created, oldest.counts.rejected, oldest.counts.unknown) == (12, 2, 0)
    assert (newest.counts.updated, newest.counts.rejected, newest.counts.unknown) == (3, 1, 1)
    assert newest.duration_seconds is not None
    assert newest.duration_seconds >= 0
    assert (newest.requests, newest.retries, newest.rate_limited) == (5, 2, 1)
    assert (newest.verdict, oldest.verdict) == ("failed", "passed")
    assert [(row.source_key, row.outcome, row.code) for row in detail.unknowns] == [
        ("opp-0014", "unknown", "outcome_unknown")
    ]
    assert sorted((row.source_key, row.code) for row in detail.rejects) == [
        ("opp-0012", "24224"),
        ("opp-0013", "24224"),
        ("opp-0015", "schema"),
    ]
    assert {(item.code, item.count) for item in detail.codes} == {
        ("24224", 2),
        ("schema", 1),
        ("outcome_unknown", 1),
    }
    assert detail.codes[0].code == "24224"  # the most frequent first


def test_the_problems_filter_by_code(states: dict[str, Path]) -> None:
    detail = sync_states.sync_detail(LOCAL_STATE_ID, sample.MAIN_SYNC, code="24224")

    assert detail.code == "24224"
    assert [row.source_key for row in detail.unknowns] == []
    assert sorted(row.source_key for row in detail.rejects) == ["opp-0012", "opp-0013"]
    # The counts of the sync itself are not filtered.
    assert detail.sync.open_rejects == 3


def test_an_unknown_sync_or_a_partition_is_not_found(states: dict[str, Path]) -> None:
    with pytest.raises(sync_states.SyncNotFoundError):
        sync_states.sync_detail(LOCAL_STATE_ID, "no.such.sync")
    with pytest.raises(sync_states.SyncNotFoundError, match="no partition 1"):
        sync_states.sync_detail(LOCAL_STATE_ID, sample.MAIN_SYNC, partition=1)
    with pytest.raises(sync_states.SyncNotFoundError, match="partitions"):
        sync_states.forget(LOCAL_STATE_ID, sample.MAIN_SYNC, 0, actor="tester")
    assert len(_state_rows(states["local"], sample.MAIN_SYNC)) == 16


def test_reading_a_missing_local_state_shows_nothing_and_creates_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))

    assert sync_states.list_syncs([LOCAL_STATE_ID]).syncs == []
    with pytest.raises(sync_states.SyncNotFoundError):
        sync_states.sync_detail(LOCAL_STATE_ID, sample.MAIN_SYNC)
    assert not (tmp_path / "opportunity_sync").exists()


def test_a_state_that_cannot_be_read_is_listed_with_a_reason_and_the_others_still_are(
    states: dict[str, Path],
) -> None:
    listing = sync_states.list_syncs([LOCAL_STATE_ID, "no_such_connection"])

    assert {row.location.state_id for row in listing.syncs} == {LOCAL_STATE_ID}
    (unreachable,) = listing.unreachable
    assert unreachable.location.state_id == "no_such_connection"
    assert "no_such_connection" in unreachable.reason


def test_a_driver_error_is_shown_by_its_type_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A file that is not a database: the driver's message is not shown, only its type.
    bad = tmp_path / "not-a-database.db"
    bad.write_bytes(b"secret-looking text that is not SQLite" * 100)
    monkeypatch.setenv("AIRFLOW_CONN_UI_BAD_STATE", json.dumps({"conn_type": "sqlite", "host": str(bad)}))

    (unreachable,) = sync_states.list_syncs(["ui_bad_state"]).unreachable

    assert unreachable.reason.startswith("DatabaseError")
    assert "secret" not in unreachable.reason
    for action in (
        lambda: sync_states.sync_detail("ui_bad_state", "any.sync"),
        lambda: sync_states.forget("ui_bad_state", "any.sync", None, actor="tester", expected_rows=1),
    ):
        with pytest.raises(sync_states.StateUnavailableError, match="DatabaseError") as refused:
            action()
        assert "secret" not in str(refused.value)


def test_resolve_records_the_crm_id_so_the_next_run_updates_instead_of_creating(
    states: dict[str, Path],
) -> None:
    changed = sync_states.resolve(LOCAL_STATE_ID, sample.MAIN_SYNC, None, "opp-0014", "7777", actor="tester")

    assert changed == 1
    state = SyncState.local(states["local"], sync_name=sample.MAIN_SYNC, run_id="next-run")
    state.open()
    try:
        digest = key_digest("opp-0014")
        record = state.lookup([digest])[digest]
    finally:
        state.close()
    # No payload hash: whatever the lost create stored, the next run sends an update of 7777.
    assert (record.crm_id, record.outcome, record.payload_hash) == ("7777", "created", None)
    assert sync_states.sync_detail(LOCAL_STATE_ID, sample.MAIN_SYNC).unknowns == []
    # A row whose outcome is known is left alone.
    assert sync_states.resolve(LOCAL_STATE_ID, sample.MAIN_SYNC, None, "opp-0001", "1", actor="tester") == 0
    assert _state_rows(states["local"], sample.MAIN_SYNC)["opp-0001"][0] == "1001"
    # A key the sync does not hold is an error, and writes nothing.
    with pytest.raises(sync_states.KeyNotFoundError):
        sync_states.resolve(LOCAL_STATE_ID, sample.MAIN_SYNC, None, "opp-9999", "1", actor="tester")
    assert "opp-9999" not in _state_rows(states["local"], sample.MAIN_SYNC)


def test_resend_clears_the_hash_of_known_rows_only(states: dict[str, Path]) -> None:
    result = sync_states.resend(
        LOCAL_STATE_ID,
        sample.MAIN_SYNC,
        None,
        ["opp-0004", "opp-0012", "opp-0014", "nope", "opp-0004"],
        actor="tester",
    )

    assert (result.marked, result.unresolved, result.missing) == (2, ["opp-0014"], ["nope"])
    rows = _state_rows(states["local"], sample.MAIN_SYNC)
    assert rows["opp-0004"] == ("1004", None, "created")
    assert rows["opp-0012"][1] is None
    assert rows["opp-0014"][1] == "h-opp-0014"  # an unknown create is never resent from here
    assert rows["opp-0005"][1] == "h-opp-0005"


def test_retry_code_marks_the_rejects_of_that_code(states: dict[str, Path]) -> None:
    assert sync_states.retry_code(CONN, sample.API_SYNC, None, "24221", actor="tester") == 2
    rows = _state_rows(states["connection"], sample.API_SYNC)
    assert rows["a-3"][1] is None
    assert rows["a-4"][1] is None
    assert rows["a-5"][1] == "h-a-5"  # the unknown (another code, and unresolved) is left alone
    assert sync_states.retry_code(CONN, sample.API_SYNC, None, "no-such-code", actor="tester") == 0


def test_forget_deletes_the_sync_and_its_rejects_once_the_count_is_confirmed(states: dict[str, Path]) -> None:
    with pytest.raises(sync_states.ChangedSinceConfirmedError) as refused:
        sync_states.forget(LOCAL_STATE_ID, sample.MAIN_SYNC, None, actor="tester", expected_rows=15)
    assert refused.value.rows == 16
    assert len(_state_rows(states["local"], sample.MAIN_SYNC)) == 16

    assert sync_states.forget(LOCAL_STATE_ID, sample.MAIN_SYNC, None, actor="tester", expected_rows=16) == 16

    assert _state_rows(states["local"], sample.MAIN_SYNC) == {}
    with sqlite3.connect(states["local"]) as connection:
        (rejects,) = connection.execute(
            "SELECT COUNT(*) FROM opportunity_sync_state_rejects WHERE sync_name = ?", [sample.MAIN_SYNC]
        ).fetchone()
    assert rejects == 0
    assert sample.MAIN_SYNC not in {row.sync_name for row in sync_states.list_syncs([LOCAL_STATE_ID]).syncs}
    # The other syncs of the same state are untouched.
    assert len(_state_rows(states["local"], sample.FORGET_SYNC)) == 7


def test_values_are_bound_not_interpolated(states: dict[str, Path]) -> None:
    hostile = "x' OR '1'='1"
    with pytest.raises(sync_states.SyncNotFoundError):
        sync_states.sync_detail(LOCAL_STATE_ID, hostile)
    with pytest.raises(sync_states.SyncNotFoundError):
        sync_states.resend(LOCAL_STATE_ID, hostile, None, [hostile], actor="tester")
    assert sync_states.resend(LOCAL_STATE_ID, sample.MAIN_SYNC, None, [hostile], actor="tester").marked == 0
    assert sync_states.retry_code(LOCAL_STATE_ID, sample.MAIN_SYNC, None, hostile, actor="tester") == 0
    assert len(_state_rows(states["local"], sample.MAIN_SYNC)) == 16
