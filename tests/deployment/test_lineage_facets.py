"""Lineage of a sync: OpenLineage facets naming the source table and the CRM target, the Asset a
finished sync updates, and a clean fallback when the openlineage provider is not installed.
"""

from __future__ import annotations

import importlib
import json
import sys
import warnings
from datetime import datetime
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import Asset
from airflow.providers.postgres.hooks.postgres import PostgresHook

import airflow_opportunity_provider
from airflow_opportunity_provider import lineage, sample_warehouse
from airflow_opportunity_provider.lineage import (
    ASSET_SCHEME,
    crm_namespace,
    sync_asset,
    sync_lineage,
)

CRM = "http://mock-crm:8080"
WAREHOUSE = {"conn_type": "postgres", "host": "warehouse", "port": 5432, "schema": "warehouse"}


@pytest.fixture
def warehouse_hook(monkeypatch: pytest.MonkeyPatch) -> PostgresHook:
    """A PostgreSQL warehouse connection whose server is never asked anything."""
    monkeypatch.setenv("AIRFLOW_CONN_LINEAGE_WAREHOUSE", json.dumps({**WAREHOUSE, "login": "reader"}))
    hook = PostgresHook(postgres_conn_id="lineage_warehouse")
    # PostgreSQL names the default schema with SELECT CURRENT_SCHEMA; answer it here.
    monkeypatch.setattr(hook, "get_openlineage_default_schema", lambda: "public")
    return hook


def test_facets_name_the_parsed_source_table_and_the_crm_target(warehouse_hook: PostgresHook) -> None:
    facets = sync_lineage(
        platform="v2",
        crm_base_url=CRM,
        source_hook=warehouse_hook,
        source_conn_id="lineage_warehouse",
        sql="SELECT id, name, amount FROM opportunities WHERE updated_at > %(since)s",
        rows_loaded=42,
    )
    assert facets is not None
    assert [(d.namespace, d.name) for d in facets.inputs] == [
        ("postgres://warehouse:5432", "warehouse.public.opportunities")
    ]
    (output,) = facets.outputs
    assert (output.namespace, output.name) == (CRM, "api/v2/opportunities")
    assert output.outputFacets["outputStatistics"].rowCount == 42
    assert "FROM opportunities" in facets.job_facets["sql"].query


def test_a_joined_query_names_every_source_table(warehouse_hook: PostgresHook) -> None:
    facets = sync_lineage(
        platform="v1",
        crm_base_url=CRM,
        source_hook=warehouse_hook,
        sql="SELECT o.id FROM sales.opportunities o JOIN crm.accounts a ON a.id = o.account_id",
    )
    assert facets is not None
    assert sorted(d.name for d in facets.inputs) == [
        "warehouse.crm.accounts",
        "warehouse.sales.opportunities",
    ]
    assert facets.outputs[0].name == "api/1.0/venue/opportunities"


def test_an_explicit_source_table_wins_over_the_query(warehouse_hook: PostgresHook) -> None:
    facets = sync_lineage(
        platform="v1",
        crm_base_url=CRM,
        source_hook=warehouse_hook,
        sql="SELECT * FROM staging_view",
        source_table="reporting.opportunities",
    )
    assert facets is not None
    assert [d.name for d in facets.inputs] == ["warehouse.reporting.opportunities"]


def test_a_sqlite_source_is_named_by_its_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_LINEAGE_SQLITE", json.dumps({"conn_type": "sqlite", "host": "/data/wh.db"})
    )
    facets = sync_lineage(
        platform="v1",
        crm_base_url=CRM,
        source_conn_id="lineage_sqlite",
        sql="SELECT * FROM opportunities WHERE partition_key = ?",
    )
    assert facets is not None
    assert [(d.namespace, d.name) for d in facets.inputs] == [("sqlite:///data/wh.db", "opportunities")]


def test_the_crm_base_url_comes_from_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {
        "conn_type": "opportunity_crm",
        "host": "https://api.us.venue.example:8443",
        "login": "key",
        "password": "v1-secret-value",
        "extra": {"v2_base_url": "https://nexus.example.com/", "v2_token": "v2-token-value"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_LINEAGE_CRM", json.dumps(conn))
    v1 = sync_lineage(platform="v1", opportunity_conn_id="lineage_crm")
    v2 = sync_lineage(platform="v2", opportunity_conn_id="lineage_crm")
    assert v1 is not None
    assert v2 is not None
    assert v1.outputs[0].namespace == "https://api.us.venue.example:8443"
    assert v2.outputs[0].namespace == "https://nexus.example.com"
    assert v1.inputs == []  # no source given: an output alone, no failure


def test_credentials_in_a_url_never_reach_lineage_or_assets() -> None:
    url = "https://user:s3cret-password@CRM.example.com:8443/base"
    assert crm_namespace(url) == "https://crm.example.com:8443"
    asset = sync_asset("nightly", base_url=url)
    assert "s3cret" not in asset.uri
    assert "user" not in asset.uri


def test_a_source_that_cannot_be_described_leaves_inputs_empty(caplog: pytest.LogCaptureFixture) -> None:
    facets = sync_lineage(
        platform="v2", crm_base_url=CRM, source_conn_id="no_such_connection_anywhere", sql="SELECT 1"
    )
    assert facets is not None
    assert facets.inputs == []
    assert facets.outputs[0].name == "api/v2/opportunities"
    assert "Could not describe the sync's source" in caplog.text


def test_a_base_url_path_stays_in_the_output_name() -> None:
    facets = sync_lineage(platform="v2", crm_base_url="https://gateway.example.com/tenant-7/")
    assert facets is not None
    assert [(d.namespace, d.name) for d in facets.outputs] == [
        ("https://gateway.example.com", "tenant-7/api/v2/opportunities")
    ]


def test_a_crm_connection_without_the_platform_leaves_the_output_out(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    v1_only = {
        "conn_type": "opportunity_crm",
        "host": "https://api.example.com",
        "login": "k",
        "password": "v1-secret-value",
    }
    monkeypatch.setenv("AIRFLOW_CONN_LINEAGE_V1_ONLY", json.dumps(v1_only))
    facets = sync_lineage(platform="v2", opportunity_conn_id="lineage_v1_only")
    assert facets is not None
    assert facets.outputs == []
    assert "Could not name the sync's CRM target" in caplog.text
    assert "v1-secret-value" not in caplog.text


def test_an_unknown_platform_is_refused() -> None:
    with pytest.raises(ValueError, match="'v1' or 'v2'"):
        sync_lineage(platform="v3", crm_base_url=CRM)


# -- the Asset ------------------------------------------------------------------------------


def test_the_sync_asset_uses_a_custom_scheme_airflow_accepts_as_is() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "unknown scheme" or normalisation warning
        asset = sync_asset("warehouse_to_crm")
    assert asset.uri == f"{ASSET_SCHEME}://opportunity_default/opportunities/warehouse_to_crm"
    assert asset.name == asset.uri
    # Airflow normalises a URI on creation: built again from its own URI, it is unchanged.
    assert Asset(uri=asset.uri).uri == asset.uri


def test_the_same_sync_is_the_same_asset_and_others_differ() -> None:
    assert sync_asset("a") == sync_asset("a")
    assert sync_asset("a") != sync_asset("b")
    assert sync_asset("a") != sync_asset("a", conn_id="other_crm")
    assert sync_asset("a", base_url="https://crm.example.com").uri == (
        "opportunity-crm://crm.example.com/opportunities/a"
    )
    assert sync_asset("nightly load/eu").uri.endswith("/opportunities/nightly%20load%2Feu")


@pytest.mark.parametrize("bad", ["", "   "])
def test_a_sync_asset_needs_a_name(bad: str) -> None:
    with pytest.raises(ValueError, match="sync_name"):
        sync_asset(bad)


def test_a_downstream_dag_can_be_scheduled_on_a_sync() -> None:
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    with DAG("consumer", schedule=[sync_asset("warehouse_to_crm")], start_date=datetime(2026, 1, 1)) as dag:
        pass
    serialized = json.dumps(DagSerialization.to_dict(dag))
    assert "opportunity-crm://opportunity_default/opportunities/warehouse_to_crm" in serialized


# -- without the openlineage provider ---------------------------------------------------------

_OPENLINEAGE_MODULES = (
    "openlineage",
    "openlineage.client",
    "openlineage.client.event_v2",
    "openlineage.client.facet_v2",
    "airflow.providers.openlineage",
    "airflow.providers.openlineage.extractors",
    "airflow.providers.openlineage.sqlparser",
)


def test_without_openlineage_the_module_imports_and_returns_no_facets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in _OPENLINEAGE_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # makes "import name" raise ImportError
    with pytest.raises(ImportError):
        importlib.import_module("airflow.providers.openlineage.extractors")
    monkeypatch.delitem(sys.modules, "airflow_opportunity_provider.lineage")
    # The fresh import rebinds the package attribute too; have it restored after the test.
    monkeypatch.setattr(airflow_opportunity_provider, "lineage", lineage)
    fresh = importlib.import_module("airflow_opportunity_provider.lineage")
    assert fresh is not lineage
    assert fresh.sync_lineage(platform="v1", crm_base_url=CRM, source_table="opportunities") is None
    assert fresh.sync_asset("warehouse_to_crm").uri.startswith("opportunity-crm://")


# -- the bulk operator --------------------------------------------------------------------------


@pytest.fixture
def bulk_load_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_LINEAGE_WH", json.dumps({"conn_type": "sqlite", "host": "/data/warehouse.db"})
    )
    crm = {"conn_type": "opportunity_crm", "host": CRM, "login": "key", "password": "v1-secret-value"}
    monkeypatch.setenv("AIRFLOW_CONN_LINEAGE_CRM", json.dumps(crm))


def _bulk_load(**kwargs: Any) -> Any:
    from airflow.sdk import DAG

    from airflow_opportunity_provider.transfers import SqlToOpportunityOperator

    with DAG("lineage_dag", schedule=None, start_date=datetime(2026, 1, 1)):
        return SqlToOpportunityOperator(
            task_id="load",
            sql=sample_warehouse.V1_SQL,
            sql_conn_id="lineage_wh",
            key_columns="opportunity_ref",
            mapping=sample_warehouse.V1_MAPPING,
            opportunity_conn_id="lineage_crm",
            **kwargs,
        )


@pytest.mark.usefixtures("bulk_load_connections")
def test_the_bulk_operator_reports_the_source_table_and_the_crm_target() -> None:
    operator = _bulk_load()
    operator.last_summary = {"created": 7, "updated": 3, "unchanged": 90}
    facets = operator.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in facets.inputs] == [
        ("sqlite:///data/warehouse.db", sample_warehouse.V1_TABLE)
    ]
    (output,) = facets.outputs
    assert (output.namespace, output.name) == (CRM, "api/1.0/venue/opportunities")
    assert output.outputFacets["outputStatistics"].rowCount == 10


@pytest.mark.usefixtures("bulk_load_connections")
def test_the_bulk_operator_declares_its_sync_as_an_asset_outlet() -> None:
    assert _bulk_load().outlets == [sync_asset("lineage_dag.load", conn_id="lineage_crm")]
    assert _bulk_load(sync_name="nightly").outlets == [sync_asset("nightly", conn_id="lineage_crm")]
    # A dry run changes nothing, so it must not tell downstream DAGs that the CRM changed.
    assert _bulk_load(dry_run=True).outlets == []
