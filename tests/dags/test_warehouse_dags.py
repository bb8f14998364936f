"""The warehouse-to-CRM example DAGs: they import cleanly, and ``dag.test()`` loads the sample
warehouse into the mock CRM, with a second run sending nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.utils.state import DagRunState

from airflow_opportunity_provider import sample_warehouse
from airflow_opportunity_provider.mock_crm import MockCrmServer

DAGS = Path(__file__).resolve().parents[2] / "dags"
WAREHOUSE_DAGS = ("warehouse_to_crm", "warehouse_to_crm_partitioned")


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(DAGS))


@pytest.fixture
def warehouse_conns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opportunity_conn: str) -> Path:
    """The sample warehouse and a sync state of this test's own, both SQLite files in tmp_path."""
    warehouse = sample_warehouse.create_sqlite(tmp_path / "warehouse.db")
    monkeypatch.setenv(
        "AIRFLOW_CONN_WAREHOUSE_DEFAULT", json.dumps({"conn_type": "sqlite", "host": str(warehouse)})
    )
    state = tmp_path / "state.db"
    monkeypatch.setenv("AIRFLOW_CONN_TEST_DAG_STATE", json.dumps({"conn_type": "sqlite", "host": str(state)}))
    # The DAGs read the state connection from this Variable when they run.
    monkeypatch.setenv("AIRFLOW_VAR_OPPORTUNITY_STATE_CONN_ID", "test_dag_state")
    return state


def _summary(run: Any, task_id: str, map_index: int = -1) -> dict[str, Any]:
    ti = run.get_task_instance(task_id, map_index=map_index)
    assert ti is not None, task_id
    value = ti.xcom_pull(task_ids=task_id, map_indexes=map_index, key="return_value")
    assert isinstance(value, dict), value
    return value


def test_warehouse_dags_import_with_their_tasks(dagbag: DagBag) -> None:
    assert not {path: error for path, error in dagbag.import_errors.items() if "warehouse" in path}
    daily = dagbag.get_dag("warehouse_to_crm")
    assert {task.task_id for task in daily.tasks} == {"load_opportunities", "update_nexus_opportunities"}
    assert daily.max_active_runs == 1
    partitioned = dagbag.get_dag("warehouse_to_crm_partitioned")
    (mapped,) = partitioned.tasks
    assert mapped.task_id == "load_partition"
    assert mapped.partial_kwargs["partition_count"] == 4
    assert mapped.expand_input.value["partition_index"] == [0, 1, 2, 3]
    for dag_id in WAREHOUSE_DAGS:
        dag = dagbag.get_dag(dag_id)
        assert dag.tags
        assert dag.doc_md
        assert "reverse-etl" in dag.tags


@pytest.mark.slow
@pytest.mark.usefixtures("airflow_db")
def test_daily_load_runs_against_the_mock_and_a_second_run_sends_nothing(
    dagbag: DagBag, mock_crm: MockCrmServer, warehouse_conns: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    issued: list[str] = []
    issue = mock_crm.tokens.issue
    mock_crm.tokens.issue = lambda ttl: issued.append(issue(ttl)) or issued[-1]  # type: ignore[method-assign]
    dag = dagbag.get_dag("warehouse_to_crm")
    first = dag.test()
    assert first.state == DagRunState.SUCCESS, {ti.task_id: ti.state for ti in first.get_task_instances()}

    v1 = _summary(first, "load_opportunities")
    assert (v1["created"], v1["rejected"], v1["unknown"], v1["rows"]) == (300, 0, 0, 300)
    assert v1["sync_name"] == "warehouse_to_crm.load_opportunities"
    assert v1["state"] == "connection 'test_dag_state'"
    v2 = _summary(first, "update_nexus_opportunities")
    assert (v2["updated"], v2["rows"]) == (200, 200)
    assert not any("token" in key or "secret" in key for key in {**v1, **v2})

    records = mock_crm.store.v1_records()
    assert len(records) == 300
    expected = {row["opportunity_ref"]: row for row in sample_warehouse.v1_rows()}
    names = sorted(record["name"] for record in records)
    assert names == sorted(row["name"] for row in expected.values())
    record = mock_crm.store.v2_record(1, "Pre")
    source = next(sample_warehouse.v2_rows(1))
    assert record is not None
    assert str(record["SalesRevenue"]) == str(source["sales_revenue"])
    counts = mock_crm.counters.snapshot()
    assert (counts["v1_creates"], counts["v2_puts"]) == (300, 200)

    second = dag.test()
    assert second.state == DagRunState.SUCCESS
    again = _summary(second, "load_opportunities")
    assert (again["unchanged"], again["requests_sent"]) == (300, 0)
    assert _summary(second, "update_nexus_opportunities")["requests_sent"] == 0
    assert mock_crm.counters.snapshot()["total_requests"] == counts["total_requests"]

    # dag.test() masks nothing: the task logs and the XCom summaries themselves hold no secret.
    logs = capfd.readouterr()
    assert issued  # v2 ran on client-credential tokens
    secrets = (mock_crm.config.api_secret, mock_crm.config.client_secret, *issued)
    shown = logs.out + logs.err + json.dumps([v1, v2, again])
    assert "Sync 'warehouse_to_crm.load_opportunities'" in logs.out  # the summary is in the log
    assert not [secret for secret in secrets if secret in shown]


@pytest.mark.slow
@pytest.mark.usefixtures("airflow_db")
def test_partitioned_load_spreads_the_keys_over_four_mapped_tasks(
    dagbag: DagBag, mock_crm: MockCrmServer, warehouse_conns: Path
) -> None:
    run = dagbag.get_dag("warehouse_to_crm_partitioned").test()
    assert run.state == DagRunState.SUCCESS, {ti.task_id: ti.state for ti in run.get_task_instances()}
    summaries = [_summary(run, "load_partition", index) for index in range(4)]
    assert [summary["partition_index"] for summary in summaries] == [0, 1, 2, 3]
    assert {summary["sync_name"] for summary in summaries} == {"warehouse_to_crm_partitioned.load_partition"}
    assert sum(summary["created"] for summary in summaries) == 300
    assert len(mock_crm.store.v1_records()) == 300
