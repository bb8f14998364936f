"""The warehouse-to-CRM load spread over four Airflow workers: one mapped task per key partition.

Each mapped task reads the query and keeps the rows whose key hashes to its partition, so no
two tasks ever send the same key. Their shared sync state must live on a database every worker
reaches: the connection named by the Variable ``opportunity_state_conn_id``, else by the
environment variable ``OPPORTUNITY_STATE_CONN_ID`` of the machine that parses this file, else
``opportunity_state`` (e.g. ``AIRFLOW_CONN_OPPORTUNITY_STATE=postgresql://...``). A local SQLite
file per worker would let a retry on another machine create records twice.
This DAG and ``warehouse_to_crm`` are two ways of running the same load: schedule one of them.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_opportunity_provider.transfers import SqlToOpportunityOperator

PARTITIONS = 4
# Only the environment is read while parsing; the Variable is read when a task runs.
_STATE_CONN_DEFAULT = os.environ.get("OPPORTUNITY_STATE_CONN_ID", "opportunity_state")
STATE_CONN_ID = "{{ var.value.get('opportunity_state_conn_id', '" + _STATE_CONN_DEFAULT + "') }}"

OPPORTUNITIES_SQL = """
SELECT opportunity_ref, name, venue_id, contact_id, company_id, company_lead_contact_id,
       type_id, stage_id, source_id, industry_id, channel, closed_date, description
FROM crm_opportunities
"""

OPPORTUNITY_FIELDS = {
    "name": "name",
    "venueId": "venue_id",
    "contactId": "contact_id",
    "companyId": "company_id",
    "companyLeadContactId": "company_lead_contact_id",
    "typeId": "type_id",
    "stageId": "stage_id",
    "sourceId": "source_id",
    "industryId": "industry_id",
    "channelId": "channel",
    "closedDate": "closed_date",
    "description": "description",
}

with DAG(
    dag_id="warehouse_to_crm_partitioned",
    description="The warehouse-to-CRM load in 4 key partitions, one mapped task (worker) each",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["opportunity", "reverse-etl", "example", "partitioned"],
    default_args={"owner": "data-engineering", "retries": 2, "retry_delay": timedelta(minutes=5)},
    doc_md=__doc__,
) as dag:
    # One sync (its name defaults to "<dag_id>.<task_id>", the same for every partition) whose
    # keys are shared out by a stable hash: partition i loads the keys with hash % 4 == i.
    SqlToOpportunityOperator.partial(
        task_id="load_partition",
        sql=OPPORTUNITIES_SQL,
        sql_conn_id="warehouse_default",
        key_columns="opportunity_ref",
        mapping=OPPORTUNITY_FIELDS,
        target="v1",
        opportunity_conn_id="opportunity_default",
        state_conn_id=STATE_CONN_ID,
        partition_count=PARTITIONS,
        concurrency=8,
        # The platform's limit is for the whole account: each of the 4 partitions takes a quarter.
        rate_limit=25,
        max_rejected=0.01,
    ).expand(partition_index=list(range(PARTITIONS)))
