"""Helpers of the bulk-load tests: connections, a sample warehouse, running an operator, reading results."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from airflow_opportunity_provider import sample_warehouse
from airflow_opportunity_provider.mock_crm import MockCrmServer
from airflow_opportunity_provider.transfers import SqlToOpportunityOperator
from airflow_opportunity_provider.transfers.summary import OpportunitySyncError

WAREHOUSE_CONN = "test_warehouse"
STATE_CONN = "test_state"
POSTGRES_CONN = "test_postgres"

# The test SQL selects the key into utmContent as well, so the mock's records can be matched
# to source rows one to one (names repeat in the sample data).
V1_TEST_SQL = (
    "SELECT opportunity_ref, name, venue_id, contact_id, company_id, company_lead_contact_id, type_id, "
    "stage_id, source_id, industry_id, channel, closed_date, description FROM {table} ORDER BY opportunity_ref"
)
V1_TEST_MAPPING = {**sample_warehouse.V1_MAPPING, "utmContent": "opportunity_ref"}

_POSTGRES_SKIPS: list[str] = []


def sqlite_conn_json(path: Path) -> str:
    return json.dumps({"conn_type": "sqlite", "host": str(path)})


def make_warehouse(path: Path, rows: int, *, unique_names: bool = True) -> Path:
    """A sample warehouse file; names made unique so a name can be told to fail on the mock."""
    sample_warehouse.create_sqlite(path, v1_count=rows)
    if unique_names:
        with sqlite3.connect(path) as connection:
            connection.execute("UPDATE crm_opportunities SET name = name || ' [' || opportunity_ref || ']'")
    return path


def run(operator: SqlToOpportunityOperator) -> tuple[dict[str, Any], OpportunitySyncError | None]:
    """Execute and return ``(summary, the failure or None)``: a failed task still has a summary."""
    try:
        return operator.execute({}), None
    except OpportunitySyncError as error:
        return error.summary, error


def records_by_ref(server: MockCrmServer) -> dict[str, list[dict[str, Any]]]:
    """The mock's v1 records grouped by the source key they carry in utmContent."""
    found: dict[str, list[dict[str, Any]]] = {}
    for record in server.store.v1_records():
        found.setdefault(str(record.get("utmContent")), []).append(record)
    return found


def state_rows(path: Path, table: str = "opportunity_sync_state") -> dict[str, dict[str, Any]]:
    with sqlite3.connect(path) as connection:
        connection.row_factory = sqlite3.Row
        return {row["source_key"]: dict(row) for row in connection.execute(f"SELECT * FROM {table}")}


def reject_rows(path: Path, table: str = "opportunity_sync_state_rejects") -> list[dict[str, Any]]:
    with sqlite3.connect(path) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute(f"SELECT * FROM {table} ORDER BY source_key")]
