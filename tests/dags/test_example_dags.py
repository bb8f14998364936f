"""Every example DAG imports cleanly; opportunity_example runs end to end against the mock CRM."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.utils.state import DagRunState

from airflow_opportunity_provider.mock_crm import MockCrmServer

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(DAGS))


def test_every_dag_file_imports_without_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    files = {Path(dag.fileloc).name for dag in dagbag.dags.values()}
    assert files == {path.name for path in DAGS.glob("*.py")}


def test_every_dag_has_an_owner_tags_retries_and_a_docstring(dagbag: DagBag) -> None:
    assert dagbag.dags
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md, f"{dag_id} has no docstring"
        for task in dag.tasks:
            assert task.owner not in ("", "airflow"), f"{dag_id}.{task.task_id} has no owner"
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"


@pytest.mark.usefixtures("airflow_db", "opportunity_conn")
def test_opportunity_example_creates_updates_and_mirrors_to_v2(
    dagbag: DagBag, mock_crm: MockCrmServer
) -> None:
    dag = dagbag.get_dag("opportunity_example")
    run = dag.test()
    assert run.state == DagRunState.SUCCESS, {ti.task_id: ti.state for ti in run.get_task_instances()}

    ti = run.get_task_instance("create_opportunity")
    created = ti.xcom_pull(task_ids="create_opportunity", key="opportunity_id")
    assert isinstance(created, int)
    assert ti.xcom_pull(task_ids="update_opportunity") == created
    assert ti.xcom_pull(task_ids="choose_nexus_opportunity") == 42
    assert ti.xcom_pull(task_ids="put_nexus_opportunity") == 42
    record = ti.xcom_pull(task_ids="put_nexus_opportunity", key="opportunity")
    assert record["OpportunityID"] == f"V1-{created}"

    v1 = mock_crm.store.v1_records()
    assert len(v1) == 1
    assert v1[0]["id"] == created
    assert v1[0]["name"].endswith("(confirmed)")
    assert str(v1[0]["contactId"]) == "918"
    v2 = mock_crm.store.v2_record(42, "Pre")
    assert v2 is not None
    assert v2["OpportunityID"] == f"V1-{created}"
    counts = mock_crm.counters.snapshot()
    assert (counts["v1_creates"], counts["v1_updates"], counts["v2_puts"]) == (1, 1, 1)
