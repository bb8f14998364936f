"""SqlToOpportunityOperator's arguments: checked when the DAG is parsed, with messages that say what to change."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_opportunity_provider.errors import OpportunityConfigurationError
from airflow_opportunity_provider.transfers import SqlToOpportunityOperator
from airflow_opportunity_provider.transfers.sql_to_opportunity import _is_distributed_executor

BASE: dict[str, Any] = {
    "task_id": "load",
    "sql": "SELECT 1",
    "sql_conn_id": "warehouse",
    "key_columns": "ref",
    "mapping": {"name": "name"},
}


def test_defaults() -> None:
    operator = SqlToOpportunityOperator(**BASE)
    assert operator.key_columns == ["ref"]
    assert (operator.target, operator.opportunity_conn_id, operator.state_conn_id) == (
        "v1",
        "opportunity_default",
        None,
    )
    assert (operator.concurrency, operator.rate_limit, operator.burst) == (16, None, None)
    assert (operator.max_rejected, operator.max_unknown, operator.on_unknown) == (0, 0, "skip")
    assert (operator.partition_index, operator.partition_count, operator.chunk_size) == (0, 1, 5000)
    assert operator.is_dry_run is False
    assert set(operator.template_fields) == {"sql", "sync_name", "state_conn_id"}
    assert operator.target_endpoint == "POST /api/1.0/venue?action=addOrUpdateOpportunity"
    assert (
        SqlToOpportunityOperator(**{**BASE, "target": "v2"}).target_endpoint
        == "PUT /api/v2/opportunities/{Id}"
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"key_columns": []}, "key_columns"),
        ({"mapping": {}}, "mapping"),
        ({"mapping": "name"}, "mapping"),
        ({"target": "v3"}, "target"),
        ({"on_unknown": "retry"}, "on_unknown"),
        ({"concurrency": 0}, "concurrency"),
        ({"rate_limit": 0}, "rate_limit"),
        ({"burst": 0}, "burst"),
        ({"max_rejected": -1}, "max_rejected"),
        ({"max_rejected": 1.5}, "max_rejected"),
        ({"max_rejected": True}, "max_rejected"),
        ({"max_unknown": "3"}, "max_unknown"),
        ({"partition_count": 0}, "partition_count"),
        ({"partition_index": 4, "partition_count": 4}, "partition_index"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"state_table": "state; drop"}, "state table"),
        ({"concurrency": True}, "concurrency"),
        ({"concurrency": 2.5}, "concurrency"),
        ({"rate_limit": "10"}, "rate_limit"),
        ({"rate_limit": True}, "rate_limit"),
        ({"burst": "5"}, "burst"),
        ({"chunk_size": False}, "chunk_size"),
        ({"partition_index": "1", "partition_count": 2}, "partition_index"),
        ({"progress_interval": "10"}, "progress_interval"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"lease_wait_seconds": -1}, "lease_wait_seconds"),
        ({"dry_run": "yes"}, "dry_run"),
        ({"sync_name": ""}, "sync_name"),
        ({"sync_name": "  "}, "sync_name"),
        ({"sync_name": " padded"}, "sync_name"),
        ({"sync_name": 7}, "sync_name"),
    ],
)
def test_wrong_arguments_fail_at_parse_time(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SqlToOpportunityOperator(**{**BASE, **changes})


@pytest.mark.parametrize(
    ("setting", "distributed"),
    [
        ("LocalExecutor", False),
        ("SequentialExecutor", False),
        ("", False),
        ("CeleryExecutor", True),
        ("LocalExecutor,KubernetesExecutor", True),
        ("airflow.providers.celery.executors.celery_executor.CeleryExecutor", True),
        ("my_alias:airflow.executors.local_executor.LocalExecutor", False),
    ],
)
def test_distributed_executors_are_recognised(setting: str, distributed: bool) -> None:
    assert _is_distributed_executor(setting) is distributed


def test_local_state_under_celery_warns_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    operator = SqlToOpportunityOperator(**BASE)
    warnings: list[str] = []
    monkeypatch.setattr(operator.log, "warning", lambda message, *args: warnings.append(message % args))
    state = operator._state("dag.task", "run", {})
    assert "LOCAL SQLite" in warnings[0]
    assert "CeleryExecutor" in warnings[0]
    assert "state_conn_id" in warnings[0]
    assert str(tmp_path) in state.location
    warnings.clear()
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    operator._state("dag.task", "run", {})
    assert warnings == []


def test_a_templated_sync_name_that_renders_empty_is_an_error_not_the_default() -> None:
    operator = SqlToOpportunityOperator(**{**BASE, "sync_name": "{{ params.name }}"})
    operator.sync_name = ""  # what rendering gave
    with pytest.raises(OpportunityConfigurationError, match="sync_name is ''"):
        operator.effective_sync_name  # noqa: B018
    operator.sync_name = "nightly"
    assert operator.effective_sync_name == "nightly"
    assert SqlToOpportunityOperator(**BASE).effective_sync_name == "no_dag.load"
