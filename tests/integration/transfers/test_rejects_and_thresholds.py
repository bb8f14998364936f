"""Rows the CRM refuses (24224): the others load, the refused ones land in the rejects table with
code and message, ``max_rejected`` decides the task's colour, and the next run resends only them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_opportunity_provider.mock_crm import FaultConfig, MockCrmServer
from airflow_opportunity_provider.sample_warehouse import v1_rows
from airflow_opportunity_provider.transfers import SqlToOpportunityOperator
from tests.integration.transfers.helpers import records_by_ref, reject_rows, run, state_rows

pytestmark = pytest.mark.usefixtures("airflow_db")

Factory = Callable[..., SqlToOpportunityOperator]
REFUSED = ("WH-000011", "WH-000047", "WH-000083")


def _name(ref: str) -> str:
    row = next(row for row in v1_rows(100) if row["opportunity_ref"] == ref)
    return f"{row['name']} [{ref}]"  # the test warehouse makes names unique this way


@pytest.fixture
def refusing_crm(mock_crm: MockCrmServer) -> MockCrmServer:
    mock_crm.set_faults(FaultConfig(reject_names=frozenset(_name(ref) for ref in REFUSED)))
    return mock_crm


def test_three_refused_rows_of_a_hundred(
    warehouse: Callable[..., Path], state_db: Path, make_operator: Factory, refusing_crm: MockCrmServer
) -> None:
    warehouse(100)

    # Default max_rejected=0: the task fails, but only after every row was processed.
    summary, failure = run(make_operator())
    assert failure is not None
    assert "3 of 100 rows were rejected" in str(failure)
    assert "created 97" in str(failure)
    assert "rejected 3" in str(failure)
    assert (summary["created"], summary["rejected"], summary["requests_sent"]) == (97, 3, 100)
    loaded = records_by_ref(refusing_crm)
    assert len(loaded) == 97
    assert not set(REFUSED) & set(loaded)

    rejects = reject_rows(state_db)
    assert [row["source_key"] for row in rejects] == list(REFUSED)
    for row in rejects:
        assert row["outcome"] == "rejected"
        assert row["error_code"] == "24224"
        assert "invalid" in row["error_message"]
        assert "was refused" in row["error_message"]
        assert row["sync_run_id"] == summary["sync_run_id"]
    state = state_rows(state_db)
    assert {state[ref]["outcome"] for ref in REFUSED} == {"rejected"}

    # A threshold of 3 rows lets the same outcome pass; only the 3 refused rows are sent again.
    before = refusing_crm.counters.snapshot()["total_requests"]
    summary, failure = run(make_operator(max_rejected=3))
    assert failure is None
    assert refusing_crm.counters.snapshot()["total_requests"] == before + 3
    assert (summary["unchanged"], summary["rejected"], summary["requests_sent"]) == (97, 3, 3)

    # As a share: 3 of 100 is more than 2% and no more than 5%.
    _, failure = run(make_operator(max_rejected=0.02))
    assert failure is not None
    assert "max_rejected=0.02" in str(failure)
    _, failure = run(make_operator(max_rejected=0.05))
    assert failure is None

    # Once the CRM accepts them, the next run sends exactly those 3 and creates them.
    refusing_crm.set_faults(FaultConfig())
    before = refusing_crm.counters.snapshot()["total_requests"]
    summary, failure = run(make_operator())
    assert failure is None
    assert refusing_crm.counters.snapshot()["total_requests"] == before + 3
    assert (summary["created"], summary["unchanged"], summary["rejected"]) == (3, 97, 0)
    assert all(len(found) == 1 for found in records_by_ref(refusing_crm).values())
    assert len(records_by_ref(refusing_crm)) == 100


def test_a_run_where_every_row_is_rejected_is_never_green(
    warehouse: Callable[..., Path], state_db: Path, make_operator: Factory, mock_crm: MockCrmServer
) -> None:
    warehouse(4)
    mock_crm.set_faults(FaultConfig(reject_names=frozenset(_name(f"WH-{n:06d}") for n in range(1, 5))))
    summary, failure = run(make_operator(max_rejected=None))
    assert failure is not None
    assert "none of the 4 rows loaded" in str(failure)
    assert summary["rejected"] == 4
    _, failure = run(make_operator(max_rejected=1.0))
    assert failure is not None


# -- rows refused on every attempt of the first pass -------------------------------------------

# The connection's default: 5 retries, so 6 refusals use up one pass over a row.
ONE_PASS = 6


def _unavailable(mock_crm: MockCrmServer, refusals: dict[str, int]) -> None:
    mock_crm.set_faults(
        FaultConfig(
            unavailable_names={_name(ref): times for ref, times in refusals.items()}, retry_after=0.01
        )
    )


def test_a_row_refused_on_every_retry_is_sent_once_more_after_the_others(
    warehouse: Callable[..., Path], state_db: Path, make_operator: Factory, mock_crm: MockCrmServer
) -> None:
    warehouse(100)
    _unavailable(mock_crm, {"WH-000047": ONE_PASS})

    summary, failure = run(make_operator())

    assert failure is None, failure
    assert (summary["created"], summary["failed"], summary["unknown"]) == (100, 0, 0)
    loaded = records_by_ref(mock_crm)
    assert len(loaded) == 100
    assert len(loaded["WH-000047"]) == 1
    assert mock_crm.counters.snapshot()["by_status"]["503"] == ONE_PASS
    assert state_rows(state_db)["WH-000047"]["outcome"] == "created"
    assert summary["first_problems"] == []


def test_a_row_refused_through_both_passes_fails_the_run_with_one_reject_row(
    warehouse: Callable[..., Path], state_db: Path, make_operator: Factory, mock_crm: MockCrmServer
) -> None:
    warehouse(100)
    _unavailable(mock_crm, {"WH-000047": 2 * ONE_PASS})

    summary, failure = run(make_operator())

    assert failure is not None
    assert "1 rows were lost to transient errors" in str(failure)
    assert (summary["created"], summary["failed"]) == (99, 1)
    assert mock_crm.counters.snapshot()["by_status"]["503"] == 2 * ONE_PASS
    assert [row["source_key"] for row in reject_rows(state_db)] == ["WH-000047"]
    assert state_rows(state_db)["WH-000047"]["outcome"] == "failed"

    # Nothing refuses any more: the next run sends only that row.
    mock_crm.set_faults(FaultConfig())
    again, failure = run(make_operator())
    assert failure is None
    assert (again["created"], again["unchanged"], again["requests_sent"]) == (1, 99, 1)
    assert len(records_by_ref(mock_crm)["WH-000047"]) == 1


def test_a_crm_refusing_more_than_one_row_in_twenty_gets_no_second_pass(
    warehouse: Callable[..., Path], state_db: Path, make_operator: Factory, mock_crm: MockCrmServer
) -> None:
    warehouse(20)
    _unavailable(mock_crm, {"WH-000003": ONE_PASS, "WH-000011": ONE_PASS})

    summary, failure = run(make_operator())

    assert failure is not None
    assert (summary["created"], summary["failed"]) == (18, 2)
    # One pass each, no more: a CRM refusing this many rows is taken as down.
    assert mock_crm.counters.snapshot()["by_status"]["503"] == 2 * ONE_PASS
