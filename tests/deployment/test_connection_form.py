"""The connection form as Airflow shows it: loaded through the providers manager, the UI's hook
metadata and the ``airflow providers`` command line, and consistent with what the hook reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from airflow.providers_manager import ProvidersManager

import airflow_opportunity_provider
from airflow_opportunity_provider.connection import (
    CONN_TYPE,
    SHARED_EXTRA_FIELDS,
    V2_EXTRA_FIELDS,
    settings_from_connection,
)
from airflow_opportunity_provider.get_provider_info import get_provider_info

PACKAGE = "airflow-opportunity-provider"
HOOK_CLASS = "airflow_opportunity_provider.hooks.opportunity.OpportunityHook"
PREFIX = f"extra__{CONN_TYPE}__"
SECRET_FIELDS = {"v2_token", "v2_client_secret"}
AIRFLOW = Path(sys.executable).with_name("airflow")


@pytest.fixture(scope="module")
def providers_manager() -> ProvidersManager:
    manager = ProvidersManager()
    manager.initialize_providers_hooks()
    return manager


def test_the_provider_is_registered_with_the_distribution_name_and_version(
    providers_manager: ProvidersManager,
) -> None:
    provider = providers_manager.providers[PACKAGE]
    assert provider.version == version(PACKAGE) == airflow_opportunity_provider.__version__
    assert provider.data["package-name"] == PACKAGE


def test_the_connection_type_resolves_to_the_hook(providers_manager: ProvidersManager) -> None:
    # What the UI lists, without importing the hook ...
    ui_metadata = {
        meta.connection_type: meta for meta in providers_manager.iter_connection_type_hook_ui_metadata()
    }
    assert ui_metadata[CONN_TYPE].hook_class_name == HOOK_CLASS
    assert ui_metadata[CONN_TYPE].hook_name == "Opportunity CRM"
    # ... and what a task uses to build the hook of a connection of this type.
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    hook_info = ProvidersManagerTaskRuntime().hooks[CONN_TYPE]
    assert hook_info is not None
    assert hook_info.hook_class_name == HOOK_CLASS
    assert hook_info.connection_type == CONN_TYPE
    assert hook_info.package_name == PACKAGE
    assert hook_info.connection_id_attribute_name == "opportunity_conn_id"


def test_field_behaviour_hides_unused_fields_and_labels_the_v1_ones(
    providers_manager: ProvidersManager,
) -> None:
    # A behaviour that fails Airflow's schema is dropped with only a log line: its presence
    # here proves it validated.
    behaviour = providers_manager.field_behaviours[CONN_TYPE]
    assert set(behaviour["hidden_fields"]) == {"schema", "extra"}
    relabeling = behaviour["relabeling"]
    assert relabeling["host"].startswith("v1 ")
    assert "API Key" in relabeling["login"]
    assert "API Secret" in relabeling["password"]
    placeholders = behaviour["placeholders"]
    for standard_field in ("host", "login", "password"):
        assert placeholders[standard_field], standard_field
    assert placeholders["host"].startswith("https://")
    # Placeholders of extra fields are keyed by their form widget name.
    for extra_field in ("v2_base_url", "v2_token", "v2_client_id", "v2_oauth_url"):
        assert placeholders[PREFIX + extra_field], extra_field


def test_widgets_cover_every_extra_the_hook_reads_and_mark_secrets(
    providers_manager: ProvidersManager,
) -> None:
    widgets = {
        name[len(PREFIX) :]: widget
        for name, widget in providers_manager.connection_form_widgets.items()
        if name.startswith(PREFIX)
    }
    # The form offers exactly the extras settings_from_connection understands: no field the
    # hook ignores, none it reads that the form cannot set.
    assert set(widgets) == set(V2_EXTRA_FIELDS) | set(SHARED_EXTRA_FIELDS)
    assert {name for name, widget in widgets.items() if widget.is_sensitive} == SECRET_FIELDS
    for name, widget in widgets.items():
        assert widget.hook_class_name == HOOK_CLASS
        assert widget.package_name == PACKAGE
        schema = widget.field["schema"]
        assert schema["title"], f"{name} has no label"
        assert widget.field["description"], f"{name} has no description"
        if name.startswith("v2_"):
            assert schema["title"].startswith("v2 "), f"{name} is not labelled as a v2 field"
    assert widgets["v2_token"].field["schema"]["format"] == "password"
    assert widgets["v2_client_secret"].field["schema"]["title"] == "v2 Client Secret"
    assert widgets["v2_oauth_url"].field["schema"]["title"] == "v2 Token URL"
    assert "format" not in widgets["v2_client_id"].field["schema"]


def test_the_ui_hook_metadata_shows_the_form() -> None:
    # What the connection page of the UI fetches (GET /ui/connections/hook_meta).
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    HookMetaService.hook_meta_data.cache_clear()
    metadata = {meta.connection_type: meta for meta in HookMetaService.hook_meta_data()}
    form = metadata[CONN_TYPE]
    assert form.hook_class_name == HOOK_CLASS
    assert form.hook_name == "Opportunity CRM"
    standard = form.standard_fields
    assert standard is not None
    assert standard.url_schema is not None
    assert standard.url_schema.hidden
    assert standard.host is not None
    assert standard.host.title == "v1 Platform Address"
    assert standard.login is not None
    assert standard.login.title == "v1 API Key"
    assert standard.password is not None
    assert standard.password.title == "v1 API Secret"
    assert standard.password.placeholder
    extra = form.extra_fields or {}
    assert extra["v2_token"]["schema"]["format"] == "password"
    assert extra["v2_client_secret"]["schema"]["format"] == "password"
    assert extra["v2_base_url"]["schema"]["title"] == "v2 Base URL"
    assert extra["verify"]["value"] is True


@pytest.mark.parametrize("prefixed", [False, True], ids=["plain-extra", "form-prefixed-extra"])
def test_what_the_form_saves_is_what_the_hook_reads(prefixed: bool) -> None:
    values: dict[str, Any] = {
        "v2_base_url": "https://nexus.example.com/",
        "v2_client_id": "client",
        "v2_client_secret": "client-secret-value",
        "v2_oauth_url": "https://nexus.example.com/oauth/token",
        "v2_scope": "opportunities",
        "timeout": 30,
        "verify": False,
        "max_retries": 2,
    }
    extra = {(PREFIX + key if prefixed else key): value for key, value in values.items()}
    settings = settings_from_connection(
        "form", host=None, port=None, schema=None, login=None, password=None, extra=extra
    )
    assert settings.has_v2
    assert not settings.has_v1
    assert settings.v2_base_url == "https://nexus.example.com"
    assert settings.v2_client_secret == "client-secret-value"
    assert settings.v2_scope == "opportunities"
    assert (settings.read_timeout, settings.verify, settings.max_retries) == (30.0, False, 2)


def test_every_form_field_label_in_the_provider_dict_is_unique() -> None:
    (connection_type,) = get_provider_info()["connection-types"]
    labels = [field["label"] for field in connection_type["conn-fields"].values()]
    labels += list(connection_type["ui-field-behaviour"]["relabeling"].values())
    assert len(labels) == len(set(labels))


# -- the command line --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def providers_cli(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The JSON output of the ``airflow providers`` subcommands, run in parallel in subprocesses."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
    }
    commands = {
        "list": ["providers", "list", "-o", "json"],
        "get": ["providers", "get", PACKAGE, "--full", "-o", "json"],
        "widgets": ["providers", "widgets", "-o", "json"],
        "behaviours": ["providers", "behaviours", "-o", "json"],
    }
    processes = {
        name: subprocess.Popen(
            [str(AIRFLOW), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, args in commands.items()
    }
    outputs: dict[str, Any] = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, f"airflow {' '.join(commands[name])} failed:\n{stderr[-3000:]}"
        outputs[name] = _json_document(stdout)
    return outputs


def _json_document(stdout: str) -> Any:
    """The JSON value in a command's output, skipping any log line printed before it."""
    start = min((i for i in (stdout.find("["), stdout.find("{")) if i >= 0), default=-1)
    assert start >= 0, f"no JSON in the output:\n{stdout[-2000:]}"
    return json.loads(stdout[start:])


def test_cli_providers_list_shows_the_package(providers_cli: dict[str, Any]) -> None:
    rows = {row["package_name"]: row for row in providers_cli["list"]}
    assert rows[PACKAGE]["version"] == airflow_opportunity_provider.__version__


def test_cli_providers_get_shows_the_form_fields(providers_cli: dict[str, Any]) -> None:
    (info,) = providers_cli["get"]
    (connection_type,) = info["connection-types"]
    assert connection_type["connection-type"] == CONN_TYPE
    assert connection_type["hook-class-name"] == HOOK_CLASS
    fields = connection_type["conn-fields"]
    assert fields["v2_token"]["label"] == "v2 Bearer Token"
    assert fields["v2_token"]["schema"]["format"] == "password"
    assert fields["v2_client_secret"]["schema"]["format"] == "password"
    assert connection_type["ui-field-behaviour"]["relabeling"]["login"] == "v1 API Key"


def test_cli_providers_widgets_and_behaviours_list_the_connection_form(
    providers_cli: dict[str, Any],
) -> None:
    widgets = {
        row["connection_parameter_name"]: row
        for row in providers_cli["widgets"]
        if row["package_name"] == PACKAGE
    }
    expected = {PREFIX + name for name in (*V2_EXTRA_FIELDS, *SHARED_EXTRA_FIELDS)}
    assert set(widgets) == expected
    assert all(row["class"] == HOOK_CLASS for row in widgets.values())
    assert {row["field_behaviours"] for row in providers_cli["behaviours"]} >= {CONN_TYPE}
