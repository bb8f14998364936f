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


def test_lookalike_keys_keep_their_own_records_across_runs(
    database: Database, mock_crm: MockCrmServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def operator() -> SqlToOpportunityOperator:
        return SqlToOpportunityOperator(
            task_id="load",
            sql=V1_TEST_SQL.format(table="crm_opportunities"),
            sql_conn_id="state_warehouse",
            key_columns="opportunity_ref",
            mapping=V1_TEST_MAPPING,
            state_conn_id=database.conn_id,
            state_table=database.table,
            sync_name="test.sync",
            concurrency=4,
            progress_interval=0,
        )

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
