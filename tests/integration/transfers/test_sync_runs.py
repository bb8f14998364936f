"""SqlToOpportunityOperator against the mock CRM over loopback HTTP, with SQLite warehouse and state:
create-once, only-changed rows, dry runs, v2 puts with exact decimals, and bad source rows."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from airflow_opportunity_provider import sample_warehouse
from airflow_opportunity_provider.errors import OpportunityConfigurationError
from airflow_opportunity_provider.mock_crm import FaultConfig, MockCrmServer
from airflow_opportunity_provider.transfers import SqlToOpportunityOperator
from tests.integration.transfers.helpers import records_by_ref, reject_rows, run, state_rows

pytestmark = pytest.mark.usefixtures("airflow_db")

Factory = Callable[..., SqlToOpportunityOperator]


def test_second_run_sends_nothing_and_ten_changed_rows_send_exactly_ten(
    warehouse: Callable[..., Path], state_db: Path, make_operator: Factory, mock_crm: MockCrmServer
) -> None:
    path = warehouse(100)

    first, failure = run(make_operator())
    assert failure is None
    assert (first["created"], first["updated"], first["unchanged"]) == (100, 0, 0)
    assert first["requests_sent"] == 100
    records = records_by_ref(mock_crm)
    assert len(records) == 100
    assert all(len(found) == 1 for found in records.values())
    state = state_rows(state_db)
    assert {key: row["crm_id"] for key, row in state.items()} == {
        ref: str(found[0]["id"]) for ref, found in records.items()
    }
    assert {row["outcome"] for row in state.values()} == {"created"}

    before = mock_crm.counters.snapshot()["total_requests"]
    second, failure = run(make_operator())
    assert failure is None
    assert mock_crm.counters.snapshot()["total_requests"] == before
    assert (second["unchanged"], second["requests_sent"], second["created"], second["updated"]) == (
        100,
        0,
        0,
        0,
    )

    changed = [f"WH-{number:06d}" for number in range(5, 100, 10)]
    with sqlite3.connect(path) as connection:
        connection.executemany(
            "UPDATE crm_opportunities SET description = 'Changed: ' || description WHERE opportunity_ref = ?",
            [(ref,) for ref in changed],
        )
    third, failure = run(make_operator())
    assert failure is None
    assert mock_crm.counters.snapshot()["total_requests"] == before + 10
    assert (third["updated"], third["unchanged"], third["created"], third["requests_sent"]) == (10, 90, 0, 10)
    counts = mock_crm.counters.snapshot()
    assert (counts["v1_creates"], counts["v1_updates"]) == (100, 10)
    after = records_by_ref(mock_crm)
    for ref in changed:
        # Create-once: the change went to the record created on the first run.
        assert after[ref][0]["id"] == records[ref][0]["id"]
        assert after[ref][0]["description"].startswith("Changed: ")


def test_dry_run_reports_what_would_happen_and_sends_and_writes_nothing(
    warehouse: Callable[..., Path], state_db: Path, make_operator: Factory, mock_crm: MockCrmServer
) -> None:
    path = warehouse(50)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE crm_opportunities SET type_id = NULL WHERE opportunity_ref = 'WH-000007'")

    summary, failure = run(make_operator(dry_run=True))
    assert failure is None
    assert (summary["created"], summary["rejected"], summary["requests_sent"]) == (49, 1, 0)
    assert summary["dry_run"] is True
    assert mock_crm.counters.snapshot()["total_requests"] == 0
    assert state_rows(state_db) == {}

    run(make_operator(max_rejected=1))
    with sqlite3.connect(path) as connection:
        connection.execute(
            "UPDATE crm_opportunities SET name = 'Renamed' WHERE opportunity_ref = 'WH-000001'"
        )
    preview, _ = run(make_operator(dry_run=True))
    assert (preview["unchanged"], preview["updated"], preview["rejected"], preview["created"]) == (
        48,
        1,
        1,
        0,
    )


def test_v2_put_sends_exact_decimals_and_keeps_route_out_of_the_body(
    warehouse: Callable[..., Path], state_db: Path, make_operator: Factory, mock_crm: MockCrmServer
) -> None:
    warehouse(10)

    def nexus(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "Id": row["nexus_id"],
            "opportunityType": row["opportunity_type"],
            "LanguageId": row["language_id"],
            "OpportunityName": row["opportunity_name"],
            "CategoryName": row["category_name"],
            "StageName": row["stage_name"],
            "AcctPotential": Decimal(row["acct_potential"]),
            "SalesRevenue": Decimal(row["sales_revenue"]),
            "PendingCloseDate": row["pending_close_date"],
        }

    operator = make_operator(
        sql=sample_warehouse.V2_SQL,
        key_columns=["nexus_id", "opportunity_type"],
        mapping=nexus,
        target="v2",
        sync_name="test.nexus",
    )
    summary, failure = run(operator)
    assert failure is None
    assert (summary["updated"], summary["rows"]) == (200, 200)
    expected = {(row["nexus_id"], row["opportunity_type"]): row for row in sample_warehouse.v2_rows()}
    for (nexus_id, kind), row in expected.items():
        record = mock_crm.store.v2_record(nexus_id, kind)
        assert record is not None
        assert record["AcctPotential"] == row["acct_potential"]
        assert str(record["SalesRevenue"]) == str(row["sales_revenue"])  # digit for digit
        assert record["OpportunityName"] == row["opportunity_name"]
    state = state_rows(state_db)
    assert state['[1,"Pre"]']["crm_id"] == "1/Pre"

    again, _ = run(operator)
    assert (again["unchanged"], again["requests_sent"]) == (200, 0)


def test_bad_rows_are_rejected_with_reasons_and_the_load_goes_on(
    warehouse: Callable[..., Path], state_db: Path, make_operator: Factory, mock_crm: MockCrmServer
) -> None:
    path = warehouse(20)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE crm_opportunities SET stage_id = NULL WHERE opportunity_ref = 'WH-000003'")
        connection.execute(
            "UPDATE crm_opportunities SET closed_date = '2026-02-30' WHERE opportunity_ref = 'WH-000004'"
        )
        # The same key twice: only the first row may be sent, or the record could be created twice.
        connection.execute(
            "CREATE TABLE copy AS SELECT * FROM crm_opportunities WHERE opportunity_ref = 'WH-000010'"
        )
    sql = (
        "SELECT * FROM (SELECT opportunity_ref, name, venue_id, contact_id, company_id, company_lead_contact_id, "
        "type_id, stage_id, source_id, industry_id, channel, closed_date, description FROM crm_opportunities "
        "UNION ALL SELECT opportunity_ref, name || ' again', venue_id, contact_id, company_id, "
        "company_lead_contact_id, type_id, stage_id, source_id, industry_id, channel, closed_date, description "
        "FROM copy) ORDER BY opportunity_ref"
    )

    def mapping(row: dict[str, Any]) -> dict[str, Any]:
        if row["opportunity_ref"] == "WH-000005":
            raise KeyError("no_such_column")
        return {
            field: row[column]
            for field, column in {**sample_warehouse.V1_MAPPING, "utmContent": "opportunity_ref"}.items()
            if row[column] is not None
        }

    summary, failure = run(make_operator(sql=sql, mapping=mapping))
    assert failure is not None
    assert "rejected" in str(failure)
    assert summary["rows"] == 21
    assert (summary["created"], summary["rejected"]) == (17, 4)
    rejects = {row["source_key"]: row for row in reject_rows(state_db)}
    assert set(rejects) == {"WH-000003", "WH-000004", "WH-000005", "WH-000010"}
    assert rejects["WH-000003"]["error_code"] == "schema"
    assert "$.stageId" in rejects["WH-000003"]["error_message"]
    assert "closedDate" in rejects["WH-000004"]["error_message"]
    assert rejects["WH-000005"]["error_code"] == "mapping"
    assert rejects["WH-000010"]["error_code"] == "duplicate_key"
    assert len(records_by_ref(mock_crm)["WH-000010"]) == 1
    assert mock_crm.counters.snapshot()["v1_creates"] == 17


def test_a_missing_column_fails_before_anything_is_sent(
    warehouse: Callable[..., Path], state_db: Path, make_operator: Factory, mock_crm: MockCrmServer
) -> None:
    warehouse(5)
    with pytest.raises(OpportunityConfigurationError, match="no column named 'stage'"):
        make_operator(mapping={**sample_warehouse.V1_MAPPING, "stageId": "stage"}).execute({})
    assert mock_crm.counters.snapshot()["total_requests"] == 0


def test_progress_lines_are_logged_while_the_load_runs(
    warehouse: Callable[..., Path],
    state_db: Path,
    make_operator: Factory,
    mock_crm: MockCrmServer,
    capfd: pytest.CaptureFixture[str],
) -> None:
    warehouse(60)
    mock_crm.set_faults(FaultConfig(latency=0.05))
    summary, failure = run(make_operator(progress_interval=0.25, concurrency=4))
    assert failure is None
    assert summary["created"] == 60
    # The task logger writes to the process's output under Airflow 3, not through caplog.
    output = capfd.readouterr().out
    lines = [line for line in output.splitlines() if "Progress:" in line]
    assert lines, output
    assert "of about 60 rows" in lines[0]
    assert "rows/s" in lines[0]
    assert "left" in lines[0]


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_a_key_found_twice_in_the_query_is_never_created_twice(
    warehouse: Callable[..., Path],
    state_db: Path,
    make_operator: Factory,
    mock_crm: MockCrmServer,
    chunk_size: int,
) -> None:
    warehouse(40)
    columns = (
        "opportunity_ref, name, venue_id, contact_id, company_id, company_lead_contact_id, type_id, "
        "stage_id, source_id, industry_id, channel, closed_date, description"
    )
    # Every key twice, the copies 40 rows apart: in other chunks, often while the first is in flight.
    sql = (
        f"SELECT {columns} FROM (SELECT 0 AS copy, {columns} FROM crm_opportunities "
        f"UNION ALL SELECT 1 AS copy, {columns} FROM crm_opportunities) ORDER BY copy, opportunity_ref"
    )
    summary, failure = run(make_operator(sql=sql, chunk_size=chunk_size, concurrency=4, max_rejected=40))
    assert failure is None
    assert (summary["rows"], summary["created"], summary["rejected"]) == (80, 40, 40), summary
    records = records_by_ref(mock_crm)
    assert len(records) == 40
    assert all(len(found) == 1 for found in records.values())
    # Every second copy is reported, even one read while its first copy's create was in flight.
    rejects = reject_rows(state_db)
    assert len(rejects) == 40
    assert {row["error_code"] for row in rejects} == {"duplicate_key"}
