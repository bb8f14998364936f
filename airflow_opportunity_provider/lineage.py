"""Lineage of a warehouse-to-CRM sync: the source table as input, the CRM opportunities as output.

OpenLineage facets come from the optional ``apache-airflow-providers-openlineage`` extra, imported
only when they are asked for, so the provider works without it; the Airflow ``Asset`` of a sync
lets downstream DAGs be scheduled on a finished load.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from airflow.providers.common.compat.sdk import Asset

from airflow_opportunity_provider.connection import DEFAULT_CONN_ID

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

log = logging.getLogger(__name__)

ASSET_SCHEME = "opportunity-crm"
"""URI scheme of a sync's Asset. Custom schemes need no registration in Airflow 3."""

ASSET_GROUP = "opportunity-crm"

CRM_DATASET_NAMES = {
    "v1": "api/1.0/venue/opportunities",
    "v2": "api/v2/opportunities",
}
"""OpenLineage dataset name of the opportunities on each platform, below the CRM's namespace."""

# DB-API placeholders the SQL parser cannot read; a literal in their place keeps the tables parseable.
_PLACEHOLDER = re.compile(r"%\(\w+\)s|%s|\?")


def sync_asset(sync_name: str, *, conn_id: str = DEFAULT_CONN_ID, base_url: str | None = None) -> Asset:
    """The Asset a finished sync updates, for an operator's ``outlets`` and a downstream ``schedule``.

    The URI is ``opportunity-crm://<authority>/opportunities/<sync_name>``. The authority is the
    CRM's ``host[:port]`` when ``base_url`` is given, else the connection id: the connection's
    host is not read while a DAG file is parsed. A producer and its consumers must build the
    Asset the same way, best by both calling this function.

    :param sync_name: the sync's name (the state key of the bulk load), any text.
    :param conn_id: the CRM connection id, the authority when ``base_url`` is not given.
    :param base_url: the CRM base URL; user info in it is dropped.
    """
    if not sync_name or not sync_name.strip():
        raise ValueError("sync_asset() needs a non-empty sync_name: it names the Asset.")
    if base_url:
        authority = _authority(base_url)
        if not authority:
            raise ValueError(
                f"sync_asset(): base_url {base_url!r} has no host; pass e.g. https://crm.example.com"
            )
    else:
        if not conn_id or not conn_id.strip():
            raise ValueError("sync_asset() needs a conn_id or a base_url to name the CRM.")
        authority = quote(conn_id.strip(), safe="")
    uri = f"{ASSET_SCHEME}://{authority}/opportunities/{quote(sync_name.strip(), safe='')}"
    return Asset(uri=uri, name=uri, group=ASSET_GROUP)


def crm_namespace(base_url: str) -> str:
    """OpenLineage namespace of a CRM platform: ``scheme://host[:port]`` of its base URL.

    :param base_url: the platform's base URL; user info and path are left out.
    """
    parts = urlsplit(base_url if "://" in base_url else f"https://{base_url}")
    authority = _authority(base_url)
    if not authority:
        raise ValueError(f"crm_namespace(): base_url {base_url!r} has no host")
    return f"{parts.scheme.lower()}://{authority}"


def crm_dataset_name(platform: str) -> str:
    """OpenLineage dataset name of the opportunities on ``platform`` (``"v1"`` or ``"v2"``).

    :param platform: ``"v1"`` or ``"v2"``.
    """
    try:
        return CRM_DATASET_NAMES[platform]
    except KeyError:
        raise ValueError(f"platform must be 'v1' or 'v2', got {platform!r}") from None


def sync_lineage(
    *,
    platform: str,
    crm_base_url: str | None = None,
    opportunity_conn_id: str = DEFAULT_CONN_ID,
    source_conn_id: str | None = None,
    sql: str | Sequence[str] | None = None,
    source_table: str | Sequence[str] | None = None,
    source_hook: Any = None,
    rows_loaded: int | None = None,
) -> OperatorLineage | None:
    """OpenLineage facets of a sync, for a bulk operator's ``get_openlineage_facets_on_complete``.

    Inputs are the source tables, named as the openlineage provider names them for the source
    connection (``postgres://host:5432`` and ``database.schema.table``, for example): the
    explicit ``source_table`` when given, else the tables the SQL parser finds in ``sql``. The
    output is the CRM's opportunities (namespace from the CRM base URL, name from
    :data:`CRM_DATASET_NAMES` after the base URL's path, if any). Returns ``None`` when the
    openlineage provider is not installed; a source or target that cannot be described is left
    out, with a warning, rather than failing the task.

    :param platform: ``"v1"`` or ``"v2"``, the platform the rows were loaded to.
    :param crm_base_url: the platform's base URL; read from ``opportunity_conn_id`` when omitted.
    :param opportunity_conn_id: the CRM connection, used when ``crm_base_url`` is omitted.
    :param source_conn_id: the warehouse connection the rows were read from.
    :param sql: the query the rows were read with.
    :param source_table: the source table(s), ``table``, ``schema.table`` or ``db.schema.table``.
    :param source_hook: the warehouse's ``DbApiHook``, to avoid building a second one.
    :param rows_loaded: rows sent to the CRM, reported as the output's row count.
    """
    try:
        from airflow.providers.openlineage.extractors import OperatorLineage
        from openlineage.client.event_v2 import Dataset, OutputDataset
        from openlineage.client.facet_v2 import output_statistics_output_dataset, sql_job
    except ImportError:
        log.debug("apache-airflow-providers-openlineage is not installed; no lineage facets")
        return None

    dataset_name = crm_dataset_name(platform)
    outputs: list[OutputDataset] = []
    try:
        if crm_base_url is None:
            crm_base_url = _crm_base_url(opportunity_conn_id, platform)
        namespace = crm_namespace(crm_base_url)
    except Exception as error:  # lineage must never fail a load that succeeded
        log.warning("Could not name the sync's CRM target for lineage: %s", error)
    else:
        # A base URL with a path (a proxy, a tenant) keeps it, in front of the endpoint's name.
        base_path = urlsplit(crm_base_url if "://" in crm_base_url else f"https://{crm_base_url}").path
        output_facets: dict[str, Any] = {}
        if rows_loaded is not None:
            output_facets["outputStatistics"] = (
                output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=rows_loaded)
            )
        outputs.append(
            OutputDataset(
                namespace=namespace,
                name="/".join(part for part in (base_path.strip("/"), dataset_name) if part),
                outputFacets=output_facets,
            )
        )

    inputs: list[Dataset] = []
    if source_conn_id is not None or source_hook is not None:
        try:
            inputs = [
                Dataset(namespace=namespace, name=name)
                for namespace, name in _source_tables(source_conn_id, source_hook, sql, source_table)
            ]
        except Exception as error:  # lineage must never fail a load that succeeded
            log.warning("Could not describe the sync's source for lineage: %s", error)
    job_facets: dict[str, Any] = {}
    queries = [sql] if isinstance(sql, str) else list(sql or [])
    if queries:
        job_facets["sql"] = sql_job.SQLJobFacet(query=";\n".join(q.strip().rstrip(";") for q in queries))
    return OperatorLineage(inputs=inputs, outputs=outputs, job_facets=job_facets)


def _authority(url: str) -> str:
    """``host[:port]`` of a URL, lowercased, without user info; ``""`` when it has no host."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    host = (parts.hostname or "").lower()
    if not host:
        return ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port else host


def _crm_base_url(conn_id: str, platform: str) -> str:
    from airflow_opportunity_provider.hooks.opportunity import OpportunityHook

    settings = OpportunityHook(conn_id).settings
    base_url = settings.v1_base_url if platform == "v1" else settings.v2_base_url
    if not base_url:
        raise ValueError(f"Connection {conn_id!r} has no {platform} base URL to name the lineage output.")
    return base_url


def _source_tables(
    conn_id: str | None,
    hook: Any,
    sql: str | Sequence[str] | None,
    source_table: str | Sequence[str] | None,
) -> list[tuple[str, str]]:
    """``(namespace, name)`` of every source table, named for the source connection's database."""
    from airflow.providers.common.compat.sdk import BaseHook
    from airflow.providers.openlineage.sqlparser import SQLParser

    if hook is None:
        hook = BaseHook.get_connection(conn_id).get_hook() if conn_id else None
    hook_conn_id = conn_id or getattr(hook, "get_conn_id", lambda: None)()
    connection = hook.get_connection(hook_conn_id) if hook_conn_id else None

    database_info = None
    if connection is not None and hasattr(hook, "get_openlineage_database_info"):
        database_info = hook.get_openlineage_database_info(connection)
    if database_info is not None:
        namespace = SQLParser.create_namespace(database_info)
        database = database_info.database
        normalize = database_info.normalize_name_method
        uppercase = database_info.is_uppercase_names
        dialect = hook.get_openlineage_database_dialect(connection)

        def default_schema() -> str | None:
            # Postgres asks the server for it: only ask when a table name leaves it out.
            schema: str | None = hook.get_openlineage_default_schema()
            return schema
    else:
        # A database the openlineage provider does not describe (SQLite, for one): name it by
        # its connection, and leave unqualified tables unqualified.
        namespace = _fallback_namespace(connection)
        database, dialect, uppercase = None, None, False

        def default_schema() -> str | None:
            return None

        def normalize(name: str) -> str:
            return name

    tables: list[tuple[str | None, str | None, str]] = []
    if source_table:
        for table in [source_table] if isinstance(source_table, str) else source_table:
            parts = [part.strip().strip('"`[]') for part in table.split(".")]
            if not 1 <= len(parts) <= 3 or not all(parts):
                raise ValueError(
                    f"source_table {table!r} must be table, schema.table or database.schema.table"
                )
            padded: list[str | None] = [None] * (3 - len(parts)) + list(parts)
            tables.append((padded[0], padded[1] or default_schema(), parts[-1]))
    elif sql:
        queries = [sql] if isinstance(sql, str) else list(sql)
        parsed = SQLParser(dialect=dialect, default_schema=default_schema()).parse(
            [_PLACEHOLDER.sub("NULL", query) for query in queries]
        )
        for meta in parsed.in_tables if parsed else []:
            tables.append((meta.database, meta.schema, meta.name))

    names = []
    for table_database, schema, table_name in tables:
        parts = [part for part in (table_database or database, schema, table_name) if part]
        name = ".".join(normalize(part) for part in parts)
        names.append((namespace, name.upper() if uppercase else name))
    return names


def _fallback_namespace(connection: Any) -> str:
    if connection is None:
        return "default"
    scheme = (connection.conn_type or "default").replace("_", "-")
    host = connection.host or ""
    port = f":{connection.port}" if connection.port else ""
    return f"{scheme}://{host}{port}" if host else scheme
