"""Partitioned loads (every key in exactly one partition) and the load with the warehouse and the
sync state on PostgreSQL, two partitions writing one state table at the same time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from airflow_opportunity_provider import sample_warehouse
from airflow_opportunity_provider.mock_crm import FaultConfig, MockCrmServer
from airflow_opportunity_provider.transfers import SqlToOpportunityOperator
from airflow_opportunity_provider.transfers.source import partition_of
from tests.integration.transfers.helpers import POSTGRES_CONN, V1_TEST_SQL, records_by_ref, run, state_rows

pytestmark = pytest.mark.usefixtures("airflow_db")

Factory = Callable[..., SqlToOpportunityOperator]


def test_four_partitions_load_every_key_once_and_only_their_own(
    warehouse: Callable[..., Path], state_db: Path, make_operator: Factory, mock_crm: MockCrmServer
) -> None:
    warehouse(200)
    summaries = []
    for index in range(4):
        summary, failure = run(make_operator(partition_index=index, partition_count=4))
        assert failure is None
        summaries.append(summary)
        assert summary["rows_read"] == 200
    assert sum(summary["created"] for summary in summaries) == 200
    assert all(summary["created"] > 20 for summary in summaries)  # the hash spreads the keys
    records = records_by_ref(mock_crm)
    assert len(records) == 200
    assert all(len(found) == 1 for found in records.values())
    state = state_rows(state_db)
    assert len(state) == 200
    # A whole-table run afterwards finds every key already loaded: partitions share one sync.
    whole, _ = run(make_operator())
    assert (whole["unchanged"], whole["requests_sent"]) == (200, 0)


def _pg_count(connection: Any, query: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(query)
        row = cursor.fetchone()
    connection.commit()
    return int(row[0])


@pytest.mark.postgres
def test_warehouse_and_state_on_postgres_with_two_partitions_at_once(
    postgres_schema: str, postgres_connection: Any, make_operator: Factory, mock_crm: MockCrmServer
) -> None:
    rows = 400
    sample_warehouse.create_postgres(postgres_connection, schema=postgres_schema, v1_count=rows)
    with postgres_connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {postgres_schema}.crm_opportunities SET name = name || ' [' || opportunity_ref || ']'"
        )
    postgres_connection.commit()
    # Answers take a little while, so that both partitions are surely sending at the same time.
    mock_crm.set_faults(FaultConfig(latency=0.005))
    state_table = f"{postgres_schema}.sync_state"

    def operator(index: int) -> SqlToOpportunityOperator:
        return make_operator(
            sql=V1_TEST_SQL.format(table=f"{postgres_schema}.crm_opportunities"),
            sql_conn_id=POSTGRES_CONN,
            state_conn_id=POSTGRES_CONN,
            state_table=state_table,
            partition_index=index,
            partition_count=2,
            chunk_size=50,
        )

    results: dict[int, tuple[dict[str, Any], Any]] = {}
    start = threading.Barrier(2)

    def load(index: int) -> None:
        start.wait()
        results[index] = run(operator(index))

    threads = [threading.Thread(target=load, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert set(results) == {0, 1}
    assert all(failure is None for _, failure in results.values()), results
    assert sum(summary["created"] for summary, _ in results.values()) == rows

    records = records_by_ref(mock_crm)
    assert len(records) == rows
    assert all(len(found) == 1 for found in records.values())
    with postgres_connection.cursor() as cursor:
        cursor.execute(f"SELECT source_key, crm_id, outcome FROM {state_table} WHERE sync_name = 'test.sync'")
        state = {key: (crm_id, outcome) for key, crm_id, outcome in cursor.fetchall()}
    postgres_connection.commit()
    # No state write was lost, and each key sits in the partition its hash names.
    assert len(state) == rows
    assert {outcome for _, outcome in state.values()} == {"created"}
    assert all(crm_id == str(records[key][0]["id"]) for key, (crm_id, _) in state.items())
    for index, (summary, _) in results.items():
        mine = [key for key in state if partition_of(key, 2) == index]
        assert summary["created"] == len(mine)

    # The next runs of both partitions send nothing.
    for index in range(2):
        again, failure = run(operator(index))
        assert failure is None
        assert again["requests_sent"] == 0
    assert _pg_count(postgres_connection, f"SELECT COUNT(*) FROM {state_table}_rejects") == 0


@pytest.mark.postgres
def test_v2_from_postgres_numeric_columns_sends_exact_decimals(
    postgres_schema: str, postgres_connection: Any, make_operator: Factory, mock_crm: MockCrmServer
) -> None:
    sample_warehouse.create_postgres(postgres_connection, schema=postgres_schema, v1_count=1, v2_ids=20)

    def nexus(row: dict[str, Any]) -> dict[str, Any]:
        assert isinstance(row["acct_potential"], Decimal)  # NUMERIC comes back as Decimal
        return {
            "Id": row["nexus_id"],
            "opportunityType": row["opportunity_type"],
            "AcctPotential": row["acct_potential"],
            "SalesRevenue": row["sales_revenue"],
            "PendingCloseDate": row["pending_close_date"],  # a date: sent as yyyy-MM-dd
        }

    summary, failure = run(
        make_operator(
            sql=f"SELECT * FROM {postgres_schema}.nexus_opportunities",
            sql_conn_id=POSTGRES_CONN,
            state_conn_id=POSTGRES_CONN,
            state_table=f"{postgres_schema}.nexus_state",
            key_columns=["nexus_id", "opportunity_type"],
            mapping=nexus,
            target="v2",
        )
    )
    assert failure is None
    assert summary["updated"] == 40
    for row in sample_warehouse.v2_rows(20):
        record = mock_crm.store.v2_record(row["nexus_id"], row["opportunity_type"])
        assert record is not None
        assert str(record["SalesRevenue"]) == str(row["sales_revenue"])
        assert record["PendingCloseDate"] == row["pending_close_date"].isoformat()
