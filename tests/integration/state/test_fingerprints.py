"""Source-row fingerprints in the state, on SQLite, PostgreSQL and MariaDB: the settled keys of a
batch are left out of its lookup, an older table gains the column, and every way of marking a
row to be sent again forgets its fingerprint along with its hash."""

from __future__ import annotations

import json
import os
from typing import Any

from airflow_opportunity_provider.transfers.keys import key_digest
from airflow_opportunity_provider.transfers.outcomes import Outcome
from airflow_opportunity_provider.transfers.state import StateWrite, SyncState
from tests.integration.state.conftest import Database


def _write(key: str, outcome: Outcome, **fields: Any) -> StateWrite:
    return StateWrite(key, key_digest(key), outcome, **fields)


def test_only_keys_loaded_with_the_very_fingerprint_are_left_out_of_a_lookup(database: Database) -> None:
    state = database.state()
    state.apply(
        [
            _write("created", Outcome.CREATED, crm_id="1", payload_hash="h", source_hash="f" * 32),
            _write("updated", Outcome.UPDATED, crm_id="2", payload_hash="h", source_hash="f" * 32),
            _write("other", Outcome.CREATED, crm_id="3", payload_hash="h", source_hash="e" * 32),
            _write("no-print", Outcome.CREATED, crm_id="4", payload_hash="h"),
            _write("rejected", Outcome.REJECTED, crm_id="5", payload_hash="h", source_hash="f" * 32),
            _write("unknown", Outcome.UNKNOWN, payload_hash="h", source_hash="f" * 32),
        ]
    )
    keys = ["created", "updated", "other", "no-print", "rejected", "unknown", "absent"]
    asked = [(key_digest(key), "f" * 32) for key in keys] + [(key_digest("created-again"), None)]
    found = state.lookup_unsettled(asked)
    # Another fingerprint, none stored, an outcome that is not loaded, no state: all looked up.
    unsettled = {
        key_digest(key): key
        for key in ("other", "no-print", "rejected", "unknown", "absent", "created-again")
    }
    if database.kind in ("sqlite", "postgresql"):
        assert set(found) == set(unsettled)
    else:  # every key comes back, and the planner settles them
        assert set(found) == set(unsettled) | {key_digest("created"), key_digest("updated")}
    assert found[key_digest("absent")] is None
    assert found[key_digest("created-again")] is None
    other = found[key_digest("other")]
    assert other is not None
    assert (other.key, other.crm_id, other.outcome, other.source_hash) == ("other", "3", "created", "e" * 32)
    # A NULL fingerprint settles nothing, not even a stored NULL.
    none_asked = state.lookup_unsettled([(key_digest("no-print"), None)])
    assert set(none_asked) == {key_digest("no-print")}
    assert state.lookup_unsettled([]) == {}


def test_a_state_table_without_the_fingerprint_column_gains_it(database: Database) -> None:
    state = database.state()
    state.apply([_write("A", Outcome.CREATED, crm_id="1", payload_hash="h", source_hash="f" * 32)])
    state.close()
    database.opened.remove(state)
    database.query(f"ALTER TABLE {database.table} DROP COLUMN source_hash")
    reopened = database.state("run-2")
    record = reopened.lookup([key_digest("A")])[key_digest("A")]
    assert (record.crm_id, record.payload_hash, record.source_hash) == ("1", "h", None)
    reopened.apply([_write("A", Outcome.UPDATED, payload_hash="h2", source_hash="f" * 32)])
    assert reopened.lookup_unsettled([(key_digest("A"), "f" * 32)]).keys() <= {key_digest("A")}
    assert reopened.lookup([key_digest("A")])[key_digest("A")].source_hash == "f" * 32


def test_marking_rows_to_be_sent_again_forgets_their_fingerprints(database: Database) -> None:
    """A fingerprint left behind would settle the row again, and the resend would never happen."""
    state = database.state()
    state.apply(
        [
            _write("resent", Outcome.CREATED, crm_id="1", payload_hash="h", source_hash="f" * 32),
            _write("code", Outcome.UPDATED, crm_id="2", payload_hash="h", source_hash="f" * 32),
            _write("kept", Outcome.CREATED, crm_id="3", payload_hash="h", source_hash="f" * 32),
        ]
    )
    # An update refused with a code, then loaded again from the same values: the code stays.
    database.query(
        f"UPDATE {database.table} SET error_code = '24224' WHERE key_digest = ?", (key_digest("code"),)
    )
    assert state.resend([key_digest("resent")]) == 1
    assert state.retry_code("24224") == 1
    found = state.lookup_unsettled([(key_digest(key), "f" * 32) for key in ("resent", "code", "kept")])
    assert {key_digest("resent"), key_digest("code")} <= set(found)
    for key in ("resent", "code"):
        record = found[key_digest(key)]
        assert record is not None
        assert (record.payload_hash, record.source_hash) == (None, None)
    # The row a resolve() points at another record is looked up again too.
    state.resolve("kept", "99")
    assert key_digest("kept") in state.lookup_unsettled([(key_digest("kept"), "f" * 32)])


def test_group_commits_and_lookups_are_the_same_through_psycopg2(postgresql: Database) -> None:
    """psycopg 3 binds the arrays in binary; psycopg2, which cannot, binds them as text."""
    import psycopg2

    state = postgresql.state()
    state.apply([_write("A", Outcome.CREATED, crm_id="1", payload_hash="h", source_hash="f" * 32)])
    login = json.loads(os.environ[f"AIRFLOW_CONN_{postgresql.conn_id.upper()}"])["login"]

    def psycopg2_state(run_id: str) -> SyncState:
        return SyncState(
            lambda: psycopg2.connect(host="127.0.0.1", port=5432, user=login, dbname="test"),
            "postgresql",
            sync_name="test.sync",
            run_id=run_id,
            table=postgresql.table,
        )

    writer = psycopg2_state("run-3")
    writer.open()
    try:
        assert writer.acquire_lease(60) >= 1
        writer.apply(
            [
                _write("C", Outcome.IN_FLIGHT, payload_hash="h", attempted_at=1.5, create_hint={"name": "C"}),
                _write("D", Outcome.REJECTED, error_code="schema", error_message="no", reject=True),
            ]
        )
        found = writer.lookup([key_digest("C"), key_digest("D")])
        assert (found[key_digest("C")].outcome, found[key_digest("C")].create_hint) == (
            "in_flight",
            {"name": "C"},
        )
        assert [row["source_key"] for row in writer.rejects()] == ["D"]
        writer.release_lease()
    finally:
        writer.close()
    other = psycopg2_state("run-2")
    other.open_reader()
    try:
        asked = [(key_digest("A"), "f" * 32), (key_digest("A"), "e" * 32), (key_digest("B"), "f" * 32)]
        found = other.lookup_unsettled(asked)
        assert set(found) == {key_digest("A"), key_digest("B")}
        assert found[key_digest("B")] is None
        assert other.lookup_unsettled(asked[:1]) == {}
    finally:
        other.close()
