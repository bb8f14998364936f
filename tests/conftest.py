"""Shared test set-up: an Airflow home with a migrated SQLite metadata database, and the mock CRM.

The environment is fixed here, before any test module imports Airflow, so that running
``pytest`` directly behaves like ``make test``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".airflow"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__OPENLINEAGE__DISABLED", "True")

pytest_plugins = ["airflow_opportunity_provider.mock_crm.pytest_plugin"]


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata database (``airflow db migrate`` runs once, when it is missing)."""
    home = Path(os.environ["AIRFLOW_HOME"])
    database = home / "airflow.db"
    if not database.exists():
        home.mkdir(parents=True, exist_ok=True)
        airflow = Path(sys.executable).with_name("airflow")
        subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)
    return database


@pytest.fixture
def opportunity_conn(mock_crm, monkeypatch: pytest.MonkeyPatch) -> str:  # type: ignore[no-untyped-def]
    """Point ``opportunity_default`` at the ``mock_crm`` server (v1 keys, v2 client credentials)."""
    from airflow_opportunity_provider.mock_crm.testing import connection_json

    conn = connection_json(mock_crm)
    monkeypatch.setenv("AIRFLOW_CONN_OPPORTUNITY_DEFAULT", conn)
    return conn
