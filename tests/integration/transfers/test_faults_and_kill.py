"""The load under injected faults and after a SIGKILL: every row ends up in the CRM exactly once.

A create whose answer was lost is found again by the reference it carried; one the CRM never
stored is created again only once the grace period says it is not merely slow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_opportunity_provider.mock_crm import FaultConfig, MockCrmServer
from airflow_opportunity_provider.transfers import SqlToOpportunityOperator
from tests.integration.transfers.helpers import (
    STATE_CONN,
    V1_TEST_MAPPING,
    V1_TEST_SQL,
    WAREHOUSE_CONN,
    records_by_ref,
    reject_rows,
    run,
    state_rows,
)

pytestmark = pytest.mark.usefixtures("airflow_db")

Factory = Callable[..., SqlToOpportunityOperator]
REPO = Path(__file__).resolve().parents[3]
LEASE_SECONDS = 2.0


@pytest.mark.slow
@pytest.mark.parametrize("list_ignores_filters", [False, True], ids=["list-filters", "list-ignores-filters"])
def test_2000_rows_through_503s_429s_and_dropped_connections(
    warehouse: Callable[..., Path],
    state_db: Path,
    make_operator: Factory,
    mock_crm: MockCrmServer,
    list_ignores_filters: bool,
) -> None:
    warehouse(2000)
    mock_crm.set_faults(
        FaultConfig(
            errors={503: 0.10, 429: 0.05},
            # A short Retry-After keeps the test quick; every 429 still pauses every worker.
            retry_after=0.02,
            drop_after_commit_rate=0.02,
            seed=5,
            list_ignores_filters=list_ignores_filters,
        )
    )
    # The default thresholds: not one unknown or rejected row allowed.
    summary, failure = run(make_operator(concurrency=16))
    counters = mock_crm.counters.snapshot()
    assert counters["by_status"].get("503", 0) > 100
    assert counters["by_status"].get("429", 0) > 50
    assert counters["dropped_after_commit"] > 10
    assert summary["rate_limit_pauses"] > 0
    assert summary["retries"] > 150

    # Every dropped answer was a create the CRM stored: each found by its reference.
    assert failure is None, (failure, reject_rows(state_db))
    assert summary["rows"] == 2000
    assert (summary["created"], summary["unknown"], summary["rejected"], summary["failed"]) == (2000, 0, 0, 0)
    assert summary["reconciled"] == counters["dropped_after_commit"]

    records = records_by_ref(mock_crm)
    assert all(len(found) == 1 for found in records.values()), "the mock holds a duplicate"
    assert len(records) == 2000
    state = state_rows(state_db)
    for key, row in state.items():
        assert row["outcome"] == "created"
        assert row["crm_id"] == str(records[key][0]["id"])
    # Each record carries its row's reference, once.
    references = mock_crm.store.v1_references()
    assert len(references) == 2000
    assert all(len(ids) == 1 for ids in references.values())

    # The next run, faults gone: nothing is sent.
    mock_crm.set_faults(FaultConfig())
    before = mock_crm.counters.snapshot()["total_requests"]
    again, failure = run(make_operator(concurrency=16))
    assert failure is None
    assert mock_crm.counters.snapshot()["total_requests"] == before
    assert (again["unchanged"], again["unknown"], again["requests_sent"]) == (2000, 0, 0)


_CHILD = """
import sys
from airflow_opportunity_provider.transfers import SqlToOpportunityOperator
operator = SqlToOpportunityOperator(
    task_id="load", sql=sys.argv[1], sql_conn_id=sys.argv[2], key_columns="opportunity_ref",
    mapping=__import__("json").loads(sys.argv[3]), state_conn_id=sys.argv[4], sync_name="test.sync",
    concurrency=int(sys.argv[5]), progress_interval=0, lease_seconds=float(sys.argv[6]),
)
operator.execute({})
"""


@pytest.mark.slow
@pytest.mark.parametrize("list_ignores_filters", [False, True], ids=["list-filters", "list-ignores-filters"])
def test_a_load_killed_part_way_and_run_again_loads_each_row_once(
    warehouse: Callable[..., Path],
    state_db: Path,
    make_operator: Factory,
    mock_crm: MockCrmServer,
    list_ignores_filters: bool,
) -> None:
    rows, concurrency = 600, 8
    warehouse(rows)
    # Slow answers keep creates in flight when the kill lands.
    mock_crm.set_faults(FaultConfig(latency=0.04))
    # The child's log goes to a file: a pipe nobody reads until the end could fill and stall it.
    log_path = state_db.parent / "child-stderr.log"
    log_file = log_path.open("wb")
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CHILD,
            V1_TEST_SQL.format(table="crm_opportunities"),
            WAREHOUSE_CONN,
            json.dumps(V1_TEST_MAPPING),
            STATE_CONN,
            str(concurrency),
            # A short lease: the killed run cannot free it, so the next run waits for it to expire.
            str(LEASE_SECONDS),
        ],
        cwd=REPO,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    log_file.close()
    try:
        deadline = time.monotonic() + 120
        while mock_crm.counters.snapshot()["v1_creates"] < 150:
            assert child.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, "the load never got going"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    time.sleep(0.2)  # let the mock finish the requests the dead client left behind
    stored_at_kill = len(mock_crm.store.v1_records())
    assert stored_at_kill < rows

    interrupted = {key for key, row in state_rows(state_db).items() if row["outcome"] == "in_flight"}
    assert 0 < len(interrupted) <= concurrency

    mock_crm.set_faults(FaultConfig(list_ignores_filters=list_ignores_filters))
    # At once, with the default grace period: the creates the CRM stored are found by their
    # reference; those it did not store may still be on their way, so they stay unknown.
    summary, failure = run(make_operator(max_unknown=concurrency, lease_wait_seconds=LEASE_SECONDS * 5))
    assert failure is None, failure
    assert summary["unknown_from_interrupted_runs"] == len(interrupted)
    stored = {key for key in interrupted if key in records_by_ref(mock_crm)}
    assert summary["reconciled"] == len(stored)
    assert summary["unknown"] == len(interrupted) - len(stored)
    assert summary["created"] + summary["unchanged"] + summary["unknown"] == rows
    # Nothing that finished before the kill, or was found, was sent again.
    assert summary["created"] == rows - summary["unchanged"] - summary["unknown"]
    state = state_rows(state_db)
    assert {key for key, row in state.items() if row["outcome"] == "unknown"} == interrupted - stored

    # Past the grace period (here: none), a create not in the CRM was lost: created again, once.
    summary, failure = run(make_operator(unknown_grace_seconds=0))
    assert failure is None, failure
    assert (summary["unknown"], summary["created"]) == (0, len(interrupted) - len(stored))
    records = records_by_ref(mock_crm)
    assert all(len(found) == 1 for found in records.values()), "the mock holds a duplicate"
    assert set(records) == {f"WH-{number:06d}" for number in range(1, rows + 1)}
    state = state_rows(state_db)
    assert {row["outcome"] for row in state.values()} == {"created"}
    assert all(state[key]["crm_id"] == str(records[key][0]["id"]) for key in state)
