"""The two operators against the mock CRM over real HTTP, run by ``dag.test()`` on the SQLite metadata db."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG, task
from airflow.utils.state import DagRunState, TaskInstanceState

from airflow_opportunity_provider.errors import PayloadValidationError
from airflow_opportunity_provider.mock_crm import FaultConfig, MockCrmServer
from airflow_opportunity_provider.mock_crm.testing import connection_json
from airflow_opportunity_provider.operators.opportunity import (
    AddOrUpdateOpportunityOperator,
    PutOpportunityV2Operator,
)
from tests.helpers import run_dag_test

NEW = {"venueId": 107, "name": "Lead By API", "contactId": 918, "typeId": 18, "sourceId": 25, "stageId": 69}

pytestmark = pytest.mark.usefixtures("airflow_db", "opportunity_conn")


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False)


def _states(run: Any) -> dict[str, Any]:
    return {
        ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]": ti.state
        for ti in run.get_task_instances()
    }


def test_create_update_and_put_push_ids_through_xcom(mock_crm: MockCrmServer) -> None:
    with _dag("test_ops_xcom") as dag:
        create = AddOrUpdateOpportunityOperator(task_id="create", payload=NEW)
        update = AddOrUpdateOpportunityOperator(
            task_id="update",
            payload={
                "id": "{{ ti.xcom_pull(task_ids='create', key='opportunity_id') }}",
                "venueId": 107,
                "name": "Renamed",
            },
        )
        put = PutOpportunityV2Operator(
            task_id="put",
            opportunity_id="{{ ti.xcom_pull(task_ids='pick') }}",
            opportunity_type="Post",
            payload={"StageName": "Proposal", "OpportunityID": "V1-{{ ti.xcom_pull(task_ids='create') }}"},
        )

        @task
        def pick() -> int:
            return 17

        create >> update >> pick() >> put
    run = run_dag_test(dag)
    assert run.state == DagRunState.SUCCESS, _states(run)
    create_ti = run.get_task_instance("create")
    created_id = create_ti.xcom_pull(task_ids="create")
    assert isinstance(created_id, int)
    assert create_ti.xcom_pull(task_ids="create", key="opportunity_id") == created_id
    assert create_ti.xcom_pull(task_ids="update") == created_id
    assert create_ti.xcom_pull(task_ids="put") == 17
    record = create_ti.xcom_pull(task_ids="put", key="opportunity")
    assert record["ID"] == 17
    assert record["OpportunityID"] == f"V1-{created_id}"
    stored = mock_crm.store.v1_records()
    assert [(r["id"], r["name"]) for r in stored] == [(created_id, "Renamed")]
    assert mock_crm.store.v2_record(17, "Post")["OpportunityID"] == f"V1-{created_id}"


def test_dynamic_task_mapping_creates_one_record_per_payload(mock_crm: MockCrmServer) -> None:
    with _dag("test_ops_mapping") as dag:
        AddOrUpdateOpportunityOperator.partial(task_id="create_many").expand(
            payload=[{**NEW, "name": f"Mapped {number}"} for number in range(3)]
        )
    run = run_dag_test(dag)
    assert run.state == DagRunState.SUCCESS, _states(run)
    assert sorted(r["name"] for r in mock_crm.store.v1_records()) == ["Mapped 0", "Mapped 1", "Mapped 2"]
    ids = run.get_task_instances()[0].xcom_pull(task_ids="create_many", map_indexes=[0, 1, 2])
    assert sorted(ids) == sorted(r["id"] for r in mock_crm.store.v1_records())


@pytest.mark.parametrize(
    ("payload", "problems"),
    [
        ({"name": "x", "contactId": 1, "typeId": 1, "sourceId": 1, "stageId": 1}, ["$.venueId"]),
        ({**NEW, "typeId": "eighteen"}, ["$.typeId"]),
        ({**NEW, "closedDate": "2024-02-30"}, ["$.closedDate"]),
        ({**NEW, "stageID": 3}, ["$.stageID"]),
    ],
)
def test_a_plain_bad_payload_fails_when_the_dag_is_parsed(
    payload: dict[str, Any], problems: list[str]
) -> None:
    with pytest.raises(PayloadValidationError) as caught:
        AddOrUpdateOpportunityOperator(task_id="bad", payload=payload)
    assert [path for path, _ in caught.value.problems] == problems


def test_a_plain_bad_v2_request_fails_when_the_dag_is_parsed() -> None:
    with pytest.raises(PayloadValidationError) as caught:
        PutOpportunityV2Operator(
            task_id="bad", opportunity_id=0, opportunity_type="During", payload={"StageName": "x"}
        )
    message = str(caught.value)
    assert "$.Id" in message
    assert "must be 'Pre' or 'Post', got 'During'" in message


def test_templated_payload_is_validated_after_rendering_and_nothing_is_sent(
    mock_crm: MockCrmServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with _dag("test_ops_render_invalid") as dag:
        # Valid as written (the template hides the value), invalid once rendered.
        AddOrUpdateOpportunityOperator(task_id="v1", payload={**NEW, "closedDate": "{{ '2024-13-01' }}"})
        PutOpportunityV2Operator(
            task_id="v2",
            opportunity_id="{{ 5 }}",
            opportunity_type="{{ 'pre' }}",
            payload={"StageNmae": "Qualified"},
        )
    run = run_dag_test(dag)
    output = capsys.readouterr().out
    assert run.state == DagRunState.FAILED
    assert _states(run) == {"v1": TaskInstanceState.FAILED, "v2": TaskInstanceState.FAILED}
    assert "$.closedDate: must be a real date" in output
    assert "$.opportunityType: must be 'Pre' or 'Post', got 'pre'" in output
    assert "$.StageNmae: unknown field; did you mean `StageName`?" in output
    assert mock_crm.counters["total_requests"] == 0


def test_dry_run_validates_logs_and_sends_nothing(
    mock_crm: MockCrmServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with _dag("test_ops_dry_run") as dag:
        AddOrUpdateOpportunityOperator(task_id="v1", payload=NEW, dry_run=True)
        PutOpportunityV2Operator(
            task_id="v2",
            opportunity_id=9,
            opportunity_type="Pre",
            payload={"StageName": "Qualified"},
            dry_run=True,
        )
    run = run_dag_test(dag)
    output = capsys.readouterr().out
    assert run.state == DagRunState.SUCCESS
    assert (
        f"Dry run: would send POST {mock_crm.base_url}/api/1.0/venue?action=addOrUpdateOpportunity" in output
    )
    assert re.search(r"would send PUT \S+/api/v2/opportunities/9\?opportunityType=Pre", output)
    assert mock_crm.counters["total_requests"] == 0
    assert mock_crm.config.api_secret not in output


def test_example_dag_file_is_in_the_dags_folder() -> None:
    assert (Path(__file__).parents[3] / "dags" / "opportunity_example.py").exists()


def test_a_create_whose_answer_is_lost_is_found_by_its_reference(mock_crm: MockCrmServer) -> None:
    # Every answer to a write is lost after the server stored it.
    mock_crm.set_faults(FaultConfig(drop_after_commit_rate=1.0))
    with _dag("test_ops_reference") as dag:
        AddOrUpdateOpportunityOperator(
            task_id="found", payload=NEW, reference="orders:{{ dag_run.dag_id }}:1", retries=0
        )
        AddOrUpdateOpportunityOperator(
            task_id="without_reference", payload={**NEW, "name": "Other"}, retries=0
        )
    run = run_dag_test(dag)
    states = _states(run)
    assert states["found"] == TaskInstanceState.SUCCESS, states
    # Without a reference the CRM cannot be asked: the task fails, and is not retried.
    assert states["without_reference"] == TaskInstanceState.FAILED, states
    found_id = run.get_task_instance("found").xcom_pull(task_ids="found")
    records = {record["id"]: record for record in mock_crm.store.v1_records()}
    assert len(records) == 2  # both were stored once; neither was sent twice
    assert mock_crm.counters.snapshot()["v1_creates"] == 2
    assert [entry["ref"] for entry in records[found_id]["externalUrls"]] == ["orders:test_ops_reference:1"]


def test_a_lost_create_that_no_record_carries_still_fails_unknown(
    mock_crm: MockCrmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The create is answered 500 and not stored; the lookup cannot prove otherwise (its one
    # attempt is answered 500 too), so the outcome stays unknown.
    monkeypatch.setenv("AIRFLOW_CONN_OPPORTUNITY_DEFAULT", connection_json(mock_crm, max_retries=0))
    mock_crm.set_faults(FaultConfig(errors={500: 1.0}))
    with _dag("test_ops_reference_missing") as dag:
        AddOrUpdateOpportunityOperator(task_id="create", payload=NEW, reference="orders:2", retries=0)
    run = run_dag_test(dag)
    assert _states(run)["create"] == TaskInstanceState.FAILED
    assert mock_crm.store.v1_records() == []
    assert mock_crm.counters.snapshot()["by_endpoint"].get("v1_list", 0) >= 1  # it did ask the CRM
