"""SqlToOpportunityOperator with its state on SQLite, PostgreSQL and MariaDB: keys that a
case-insensitive or PAD SPACE collation would merge (``ABC``/``abc``, ``a``/``a ``) are
separate records, each keeping its own id from one run to the next."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from airflow_opportunity_provider import sample_warehouse
from airflow_opportunity_provider.mock_crm import MockCrmServer
from airflow_opportunity_provider.transfers import SqlToOpportunityOperator
from airflow_opportunity_provider.transfers.keys import key_digest
from tests.integration.state.conftest import Database
from tests.integration.transfers.helpers import V1_TEST_MAPPING, V1_TEST_SQL, records_by_ref, run

pytestmark = pytest.mark.usefixtures("airflow_db", "opportunity_conn")

KEYS = ["ABC", "abc", "a", "a ", "Straße", "STRASSE"]


def _warehouse(path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    sample_warehouse.create_sqlite(path, v1_count=len(KEYS))
    with sqlite3.connect(path) as connection:
        refs = [
            row[0] for row in connection.execute("SELECT opportunity_ref FROM crm_opportunities ORDER BY 1")
        ]
        for ref, key in zip(refs, KEYS, strict=True):
            connection.execute(
                "UPDATE crm_opportunities SET opportunity_ref = ?, name = ? WHERE opportunity_ref = ?",
                (key, f"{key!r} {suffix}", ref),
            )
    monkeypatch.setenv("AIRFLOW_CONN_STATE_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(path)}))


def _operator(
    database: Database, sql: str, mapping: dict[str, str] = V1_TEST_MAPPING
) -> SqlToOpportunityOperator:
    """The load of ``sql`` from the test warehouse, with its state on ``database``."""
    return SqlToOpportunityOperator(
        task_id="load",
        sql=sql,
        sql_conn_id="state_warehouse",
        key_columns="opportunity_ref",
        mapping=mapping,
        state_conn_id=database.conn_id,
        state_table=database.table,
        sync_name="test.sync",
        concurrency=4,
        progress_interval=0,
    )


def test_lookalike_keys_keep_their_own_records_across_runs(
    database: Database, mock_crm: MockCrmServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def operator() -> SqlToOpportunityOperator:
        return _operator(database, V1_TEST_SQL.format(table="crm_opportunities"))

    _warehouse(tmp_path / "warehouse.db", monkeypatch, "first")
    summary, failure = run(operator())
    assert failure is None
    assert summary["created"] == len(KEYS)
    records = records_by_ref(mock_crm)
    assert sorted(records) == sorted(KEYS)
    ids = {key: found[0]["id"] for key, found in records.items()}
    assert len(set(ids.values())) == len(KEYS)

    # Every name changes: each row is an update of its own record, none a create.
    _warehouse(tmp_path / "warehouse2.db", monkeypatch, "second")
    summary, failure = run(operator())
    assert failure is None
    assert (summary["created"], summary["updated"]) == (0, len(KEYS))
    records = records_by_ref(mock_crm)
    assert all(len(found) == 1 for found in records.values())
    assert {key: found[0]["id"] for key, found in records.items()} == ids
    assert {key: found[0]["name"] for key, found in records.items()} == {
        key: f"{key!r} second" for key in KEYS
    }
    stored = {row[0]: row[1] for row in database.query(f"SELECT source_key, crm_id FROM {database.table}")}
    assert stored == {key: str(ids[key]) for key in KEYS}


def test_fingerprints_settle_unchanged_rows_and_never_hide_a_change(
    database: Database, mock_crm: MockCrmServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A no-change run is settled by fingerprints; a change of a column that is not mapped sends
    nothing; a change of the mapping, or a row marked to be sent again, sends it."""
    sql = (
        "SELECT opportunity_ref, name, venue_id, contact_id, company_id, company_lead_contact_id, type_id, "
        "stage_id, source_id, industry_id, channel, closed_date, description, note FROM crm_opportunities "
        "ORDER BY opportunity_ref"
    )

    def operator(mapping: dict[str, str] = V1_TEST_MAPPING) -> SqlToOpportunityOperator:
        return _operator(database, sql, mapping)

    warehouse = tmp_path / "warehouse.db"
    _warehouse(warehouse, monkeypatch, "first")
    with sqlite3.connect(warehouse) as connection:
        connection.execute("ALTER TABLE crm_opportunities ADD COLUMN note TEXT DEFAULT 'a'")

    def fingerprints() -> dict[str, str]:
        return {
            str(row[0]): row[1]
            for row in database.query(f"SELECT source_key, source_hash FROM {database.table}")
        }

    summary, failure = run(operator())
    assert failure is None
    assert summary["created"] == len(KEYS)
    first = fingerprints()
    assert len(set(first.values())) == len(KEYS)
    assert all(value and len(value) == 32 for value in first.values())

    summary, _ = run(operator())
    assert (summary["unchanged"], summary["requests_sent"]) == (len(KEYS), 0)
    assert fingerprints() == first

    # A column that is not mapped: the payload is the same, nothing is sent, and the new
    # fingerprint is stored so that the next run settles the row without mapping it.
    with sqlite3.connect(warehouse) as connection:
        connection.execute("UPDATE crm_opportunities SET note = 'b'")
    summary, _ = run(operator())
    assert (summary["unchanged"], summary["requests_sent"]) == (len(KEYS), 0)
    refreshed = fingerprints()
    assert all(refreshed[key] != first[key] for key in KEYS)
    assert {row[0] for row in database.query(f"SELECT outcome FROM {database.table}")} == {"created"}

    # A row marked to be sent again is sent, though its values are the ones fingerprinted.
    state = database.state("run-x")
    assert state.resend([key_digest("abc")]) == 1
    summary, _ = run(operator())
    assert (summary["updated"], summary["unchanged"], summary["requests_sent"]) == (1, len(KEYS) - 1, 1)

    # Another mapping of the same values is another payload: every row is sent.
    summary, _ = run(operator({**V1_TEST_MAPPING, "utmSource": "note"}))
    assert (summary["updated"], summary["requests_sent"]) == (len(KEYS), len(KEYS))
    assert all(record[0].get("utmSource") == "b" for record in records_by_ref(mock_crm).values())
