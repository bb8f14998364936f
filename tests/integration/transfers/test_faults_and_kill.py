"""The load under injected faults and after a SIGKILL: every row ends up in the CRM exactly once,
except the creates whose outcome cannot be known, which are reported as unknown by key and
never created a second time."""

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
def test_2000_rows_through_503s_429s_and_dropped_connections(
    warehouse: Callable[..., Path], state_db: Path, make_operator: Factory, mock_crm: MockCrmServer
) -> None:
    warehouse(2000)
    mock_crm.set_faults(
        FaultConfig(
            errors={503: 0.10, 429: 0.05},
            # A short Retry-After keeps the test quick; every 429 still pauses every worker.
            retry_after=0.02,
            drop_after_commit_rate=0.02,
            seed=5,
        )
    )
    summary, failure = run(make_operator(concurrency=16))
    counters = mock_crm.counters.snapshot()
    assert counters["by_status"].get("503", 0) > 100
    assert counters["by_status"].get("429", 0) > 50
    assert counters["dropped_after_commit"] > 10
    assert summary["rate_limit_pauses"] > 0
    assert summary["retries"] > 150

    assert summary["rows"] == 2000
    outcomes = {name: summary[name] for name in ("created", "updated", "rejected", "unknown", "failed")}
    assert sum(outcomes.values()) == 2000, outcomes
    assert summary["rejected"] == 0
    assert summary["failed"] == 0
    # A dropped answer to a create is an unknown outcome, reported and not resent.
    assert summary["unknown"] == counters["dropped_after_commit"]
    assert failure is not None
    assert "unknown outcome" in str(failure)

    records = records_by_ref(mock_crm)
    assert all(len(found) == 1 for found in records.values()), "the mock holds a duplicate"
    assert len(records) == 2000  # the dropped creates were stored: each exactly once
    state = state_rows(state_db)
    unknown = {key for key, row in state.items() if row["outcome"] == "unknown"}
    assert len(unknown) == summary["unknown"]
    for key, row in state.items():
        if key not in unknown:
            assert row["outcome"] == "created"
            assert row["crm_id"] == str(records[key][0]["id"])
    assert {row["source_key"] for row in reject_rows(state_db)} == unknown

    # The next run, faults gone: nothing is sent, the unknowns stay unknown (not created twice).
    mock_crm.set_faults(FaultConfig())
    before = mock_crm.counters.snapshot()["total_requests"]
    again, failure = run(make_operator(concurrency=16, max_unknown=len(unknown)))
    assert failure is None
    assert mock_crm.counters.snapshot()["total_requests"] == before
    assert (again["unchanged"], again["unknown"], again["requests_sent"]) == (
        2000 - len(unknown),
        len(unknown),
        0,
    )


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
def test_a_load_killed_part_way_and_run_again_loads_each_row_once(
    warehouse: Callable[..., Path], state_db: Path, make_operator: Factory, mock_crm: MockCrmServer
) -> None:
    rows, concurrency = 600, 8
    warehouse(rows)
    # Slow answers keep creates in flight when the kill lands.
    mock_crm.set_faults(FaultConfig(latency=0.04))
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
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while mock_crm.counters.snapshot()["v1_creates"] < 150:
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
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

    mock_crm.set_faults(FaultConfig())
    summary, failure = run(make_operator(max_unknown=concurrency, lease_wait_seconds=LEASE_SECONDS * 5))
    assert failure is None
    assert summary["unknown"] == len(interrupted) <= concurrency
    assert summary["unknown_from_interrupted_runs"] == len(interrupted)
    assert summary["created"] + summary["unchanged"] + summary["unknown"] == rows
    # Nothing that finished before the kill was sent again.
    assert summary["requests_sent"] == summary["created"] == rows - summary["unchanged"] - summary["unknown"]

    records = records_by_ref(mock_crm)
    assert all(len(found) == 1 for found in records.values()), "the mock holds a duplicate"
    missing = {f"WH-{number:06d}" for number in range(1, rows + 1)} - set(records)
    assert missing <= interrupted  # only an in-flight create may be absent, and it is reported
    unknown_rejects = [row for row in reject_rows(state_db) if row["outcome"] == "unknown"]
    assert {row["source_key"] for row in unknown_rejects} == interrupted
    assert {row["error_code"] for row in unknown_rejects} == {"outcome_unknown"}
    state = state_rows(state_db)
    assert {state[key]["outcome"] for key in interrupted} == {"unknown"}
    assert {state[key]["error_code"] for key in interrupted} == {"interrupted"}
