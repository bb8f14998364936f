"""Create a v1 opportunity, update the same record by the id it came back with, and mirror it to v2.

The v1 id travels through XCom (never hard-coded) into the update and into the Nexus (v2)
record's ``OpportunityID``; the Nexus opportunity to update comes from an upstream task.
Run it against the mock CRM with ``make demo``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, task

from airflow_opportunity_provider.operators.opportunity import (
    AddOrUpdateOpportunityOperator,
    PutOpportunityV2Operator,
)

with DAG(
    dag_id="opportunity_example",
    description="v1 create, v1 update by the returned id, v2 put of a Nexus opportunity",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["opportunity", "example"],
    params={"venue_id": 107, "nexus_opportunity_id": 42},
    default_args={"owner": "data-engineering", "retries": 2, "retry_delay": timedelta(minutes=1)},
    doc_md=__doc__,
) as dag:
    create = AddOrUpdateOpportunityOperator(
        task_id="create_opportunity",
        payload={
            "venueId": "{{ params.venue_id }}",
            "name": "Annual conference {{ ds }}",
            "contactId": 918,
            "typeId": 18,
            "sourceId": 25,
            "stageId": 69,
            "closedDate": "{{ macros.ds_add(ds, 30) }}",
            "description": "Created by the opportunity_example DAG",
        },
    )

    # The returned id reaches the update through a Jinja xcom_pull, which renders a string
    # of digits: the schema accepts it as the integer it stands for.
    update = AddOrUpdateOpportunityOperator(
        task_id="update_opportunity",
        payload={
            "id": "{{ ti.xcom_pull(task_ids='create_opportunity', key='opportunity_id') }}",
            "venueId": "{{ params.venue_id }}",
            "name": "Annual conference {{ ds }} (confirmed)",
        },
    )

    @task
    def choose_nexus_opportunity(params: dict | None = None) -> int:
        """Pick the Nexus opportunity that mirrors the v1 record (from the run's params here)."""
        return int((params or {})["nexus_opportunity_id"])

    nexus_id = choose_nexus_opportunity()

    put_v2 = PutOpportunityV2Operator(
        task_id="put_nexus_opportunity",
        # An XComArg keeps the int type; a Jinja xcom_pull would give "42", also accepted.
        opportunity_id=nexus_id,
        opportunity_type="Pre",
        language_id=1,
        payload={
            "OpportunityName": "Annual conference {{ ds }}",
            "OpportunityID": "V1-{{ ti.xcom_pull(task_ids='create_opportunity') }}",
            "CategoryName": "New Business",
            "StageName": "Qualified",
            "AcctPotential": 200000.00,
            "SalesRevenue": 100000.00,
            "PendingCloseDate": "{{ macros.ds_add(ds, 30) }}",
        },
    )

    create >> update >> put_v2
