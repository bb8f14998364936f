"""Which sync states the Opportunity syncs page reads: the ``[opportunity_crm] state_conn_ids`` option.

The local SQLite state is always read; the option adds SQL connections, comma-separated.
"""

from __future__ import annotations

from airflow_opportunity_provider.plugins.views import LOCAL_STATE_ID

SECTION = "opportunity_crm"
OPTION = "state_conn_ids"


def parse_state_conn_ids(text: str) -> list[str]:
    """The state ids a value of the option names: the local state first, then each connection once.

    :param text: the option's value, e.g. ``"sync_state_pg, warehouse_state"``.
    """
    ids = [LOCAL_STATE_ID]
    for part in text.split(","):
        conn_id = part.strip()
        if conn_id and conn_id not in ids:
            ids.append(conn_id)
    return ids


def configured_state_ids() -> list[str]:
    """The state ids the page reads, from Airflow's configuration as it is now."""
    from airflow.configuration import conf

    return parse_state_conn_ids(conf.get(SECTION, OPTION, fallback="") or "")
