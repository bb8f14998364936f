"""Daily warehouse-to-CRM load: the sample warehouse's opportunities into both CRM platforms.

``load_opportunities`` creates each ``crm_opportunities`` row once in the v1 CRM and afterwards
sends only rows that changed; ``update_nexus_opportunities`` puts each ``nexus_opportunities``
row to its v2 record. Both keep their sync state in a local SQLite file under the Airflow home
unless the Variable ``opportunity_state_conn_id`` names a SQL connection. A second run with no
change in the warehouse sends nothing. Connections: ``warehouse_default`` (the warehouse, e.g.
the SQLite file ``python -m airflow_opportunity_provider.sample_warehouse sqlite PATH``
writes) and ``opportunity_default`` (the CRM).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from airflow.sdk import DAG

from airflow_opportunity_provider.transfers import SqlToOpportunityOperator

# The state connection, read when the task runs (never while the file is parsed); empty means
# the local SQLite file, fine while every run happens on one machine.
STATE_CONN_ID = "{{ var.value.get('opportunity_state_conn_id', '') }}"

OPPORTUNITIES_SQL = """
SELECT opportunity_ref, name, venue_id, contact_id, company_id, company_lead_contact_id,
       type_id, stage_id, source_id, industry_id, channel, closed_date, description
FROM crm_opportunities
ORDER BY opportunity_ref
"""

# Payload field -> warehouse column. A NULL column leaves its field out of the payload.
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

NEXUS_SQL = "SELECT * FROM nexus_opportunities ORDER BY nexus_id, opportunity_type"


def nexus_payload(row: dict[str, Any]) -> dict[str, Any]:
    """The v2 put request of one ``nexus_opportunities`` row: route (``Id``, type, language) and body.

    Money comes back from SQLite as text and from PostgreSQL as ``Decimal``; ``Decimal(str(...))``
    takes both without ever passing through a float.
    """
    payload = {
        "Id": row["nexus_id"],
        "opportunityType": row["opportunity_type"],
        "LanguageId": row["language_id"],
        "OpportunityName": row["opportunity_name"],
        "OpportunityID": row["crm_opportunity_id"],
        "CategoryName": row["category_name"],
        "StageName": row["stage_name"],
        "AcctPotential": Decimal(str(row["acct_potential"])),
        "SalesRevenue": Decimal(str(row["sales_revenue"])),
        "PendingCloseDate": row["pending_close_date"],
    }
    return {field: value for field, value in payload.items() if value is not None}


with DAG(
    dag_id="warehouse_to_crm",
    description="Daily load of warehouse opportunities into the CRM: create-once, only changed rows",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    # Two runs of one sync at once could both create the same new row: one run at a time.
    max_active_runs=1,
    tags=["opportunity", "reverse-etl", "example"],
    default_args={"owner": "data-engineering", "retries": 2, "retry_delay": timedelta(minutes=5)},
    doc_md=__doc__,
) as dag:
    load_opportunities = SqlToOpportunityOperator(
        task_id="load_opportunities",
        sql=OPPORTUNITIES_SQL,
        sql_conn_id="warehouse_default",
        key_columns="opportunity_ref",
        mapping=OPPORTUNITY_FIELDS,
        target="v1",
        opportunity_conn_id="opportunity_default",
        state_conn_id=STATE_CONN_ID,
        concurrency=8,
        # A handful of bad rows should not hold up the other thousands; more than 1% should.
        max_rejected=0.01,
    )

    update_nexus_opportunities = SqlToOpportunityOperator(
        task_id="update_nexus_opportunities",
        sql=NEXUS_SQL,
        sql_conn_id="warehouse_default",
        key_columns=["nexus_id", "opportunity_type"],
        mapping=nexus_payload,
        target="v2",
        opportunity_conn_id="opportunity_default",
        state_conn_id=STATE_CONN_ID,
        concurrency=8,
        # The v2 platform publishes 100 requests/s with a burst of 200.
        rate_limit=100,
        burst=200,
    )

    load_opportunities >> update_nexus_opportunities
