"""The partitioned warehouse-to-CRM DAG on a real distributed Airflow: two Celery workers share
the partitions, every row reaches the CRM exactly once, and the run succeeds.

Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (skipped otherwise); starts
``api-server``, ``scheduler``, ``dag-processor`` and two ``celery worker`` processes from this
environment, and the mock CRM in this process.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from airflow_opportunity_provider import sample_warehouse
from airflow_opportunity_provider.mock_crm.config import MockCrmConfig
from airflow_opportunity_provider.mock_crm.server import TOKEN_PATH, MockCrmServer
from tests.distributed.distributed_harness import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    AirflowDeployment,
    create_database,
    drop_database,
    postgres_connection_json,
    unavailable_reason,
)

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "warehouse_to_crm_partitioned"
TASK_ID = "load_partition"
PARTITIONS = 4
SYNC_NAME = f"{DAG_ID}.{TASK_ID}"
STATE_TABLE = "opportunity_sync_state"
RUN_TIMEOUT = 300

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def services(request: pytest.FixtureRequest) -> None:
    reason = unavailable_reason()
    if reason:
        message = f"distributed run skipped: {reason}"
        # Past the output capture: a skipped test's captured output is never shown.
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture is not None else nullcontext():
            print(f"\n{message}")
        pytest.skip(message)


@pytest.fixture
def mock_crm_server() -> Iterator[MockCrmServer]:
    server = MockCrmServer(MockCrmConfig()).start(host="127.0.0.1", port=0)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def warehouse(services: None) -> Iterator[str]:
    """A PostgreSQL database with the sample warehouse; the syncs' state goes there too."""
    name = f"airflow_dist_wh_{int(time.time() * 1000) % 10**9}"
    create_database(name)
    try:
        with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=name) as connection:
            sample_warehouse.create_postgres(connection)
        yield name
    finally:
        drop_database(name)


def _crm_connection(server: MockCrmServer) -> str:
    config = server.config
    return json.dumps(
        {
            "conn_type": "opportunity_crm",
            "host": server.base_url,
            "login": config.api_key,
            "password": config.api_secret,
            "extra": {
                "v2_base_url": server.base_url,
                "v2_client_id": config.client_id,
                "v2_client_secret": config.client_secret,
                "v2_oauth_url": server.base_url + TOKEN_PATH,
            },
        }
    )


def test_partitions_spread_over_two_workers_and_load_every_row_once(
    services: None, mock_crm_server: MockCrmServer, warehouse: str, tmp_path: Path
) -> None:
    deployment = AirflowDeployment(
        root=tmp_path,
        dags_folder=REPO / "dags",
        environment={
            "AIRFLOW_CONN_OPPORTUNITY_DEFAULT": _crm_connection(mock_crm_server),
            "AIRFLOW_CONN_WAREHOUSE_DEFAULT": postgres_connection_json(warehouse),
            "AIRFLOW_CONN_OPPORTUNITY_STATE": postgres_connection_json(warehouse),
            # Only the run triggered here: no scheduled run of the example DAGs' @daily schedules.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        },
        workers=2,
        worker_concurrency=2,
    )
    run_id = f"distributed__{deployment.run_id}"
    began = time.monotonic()
    try:
        with deployment.running():
            deployment.wait_for_dag(DAG_ID)
            deployment.trigger(DAG_ID, run_id)
            state = deployment.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT)
            task_instances = deployment.task_instances(DAG_ID, run_id)
            per_worker = Counter(ti["hostname"] for ti in task_instances if ti["task_id"] == TASK_ID)
            print(f"partitions per worker: {dict(sorted(per_worker.items()))}")
            summaries = {
                map_index: value
                for map_index, value in deployment.query(
                    "SELECT map_index, value FROM xcom WHERE dag_id = %s AND run_id = %s AND key = 'sync_summary'",
                    [DAG_ID, run_id],
                )
            }
            try:
                _check_run(state, task_instances, summaries, deployment, mock_crm_server, warehouse)
            except AssertionError:
                print(deployment.report())
                raise
    except (RuntimeError, TimeoutError):
        print(deployment.report())
        raise
    finally:
        timings = {name: round(seconds, 1) for name, seconds in deployment.timings.items()}
        print(f"distributed run: {time.monotonic() - began:.0f} s in all; {timings}")
    assert deployment.leftover_processes() == [], "processes of the deployment outlived it"
    assert not deployment.database_exists(), "the metadata database was not dropped"


def _check_run(
    state: str,
    task_instances: list[dict[str, Any]],
    summaries: dict[int, Any],
    deployment: AirflowDeployment,
    server: MockCrmServer,
    warehouse: str,
) -> None:
    partitions = [ti for ti in task_instances if ti["task_id"] == TASK_ID]
    assert state == "success", f"the run ended {state}: {task_instances}"
    assert sorted(ti["map_index"] for ti in partitions) == list(range(PARTITIONS))
    assert all(ti["state"] == "success" for ti in partitions), partitions

    # Both workers ran partitions: the task instances carry each worker's own hostname.
    hosts = {ti["hostname"] for ti in partitions}
    assert hosts == set(deployment.worker_names), f"partitions per worker: {partitions}"

    # Each partition loaded its own share, and together every row.
    expected_rows = sample_warehouse.DEFAULT_V1_ROWS
    created = {index: _as_dict(summary)["created"] for index, summary in summaries.items()}
    assert sorted(created) == list(range(PARTITIONS)), summaries
    assert all(count > 0 for count in created.values()), created
    assert sum(created.values()) == expected_rows

    # The CRM holds every row exactly once: one create per row, no update, no duplicate.
    counters = requests.get(server.base_url + "/_mock/counters", timeout=10).json()
    assert counters["v1_creates"] == expected_rows, counters
    assert counters["v1_updates"] == 0, counters
    assert counters["dropped_after_commit"] == 0, counters
    records = requests.get(server.base_url + "/_mock/opportunities", timeout=10).json()["v1"]
    assert len(records) == expected_rows
    by_id = {record["id"]: record for record in records}
    assert len(by_id) == expected_rows

    # The shared state maps every warehouse key to its own CRM record.
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=warehouse) as connection:
        state_rows = connection.execute(
            f"SELECT source_key, crm_id, outcome FROM {STATE_TABLE} WHERE sync_name = %s", [SYNC_NAME]
        ).fetchall()
        names: dict[str, str] = dict(
            connection.execute(f"SELECT opportunity_ref, name FROM {sample_warehouse.V1_TABLE}").fetchall()
        )
    assert len(state_rows) == expected_rows
    assert {outcome for _, _, outcome in state_rows} == {"created"}
    crm_ids = [int(crm_id) for _, crm_id, _ in state_rows]
    assert sorted(crm_ids) == sorted(by_id)
    for source_key, crm_id, _ in state_rows:
        assert by_id[int(crm_id)]["name"] == names[source_key], source_key


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, bytes | memoryview):
        value = bytes(value).decode()
    loaded = json.loads(value)
    return loaded if isinstance(loaded, dict) else json.loads(loaded)
