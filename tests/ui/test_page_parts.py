"""The page's parts that need no server: the chart, the escaping, the forgery tokens, the option, the plugin."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from airflow_opportunity_provider.get_provider_info import get_provider_info
from airflow_opportunity_provider.plugins import csrf
from airflow_opportunity_provider.plugins.chart import outcomes_chart
from airflow_opportunity_provider.plugins.config import parse_state_conn_ids
from airflow_opportunity_provider.plugins.render import render, seconds, when
from airflow_opportunity_provider.plugins.views import (
    LOCAL_STATE_ID,
    CodeCount,
    OutcomeCounts,
    ProblemRow,
    RunRow,
    StateLocation,
    SyncDetail,
    SyncList,
    SyncRow,
    UnreachableState,
)

HOSTILE = '<script>alert("x")</script>&"'
START = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def _run(run_id: str, minutes: int, **counts: int) -> RunRow:
    return RunRow(run_id, START + timedelta(minutes=minutes), 1.5, OutcomeCounts(**counts))


def _detail(name: str = HOSTILE, message: str = HOSTILE) -> SyncDetail:
    location = StateLocation("conn<1>", "conn<1>", "the state in connection conn<1>")
    runs = [_run("r2", 10, updated=3, rejected=1), _run("r1", 0, created=9, rejected=2)]
    sync = SyncRow(location, name, None, runs[0], 16, 1, 3)
    return SyncDetail(
        sync=sync,
        runs=runs,
        runs_complete=False,
        unknowns=[ProblemRow("k<1>", "unknown", "timeout", message, START)],
        rejects=[ProblemRow("k<2>", "rejected", "24224", message, START)],
        codes=[CodeCount("24224", 1), CodeCount("timeout", 1)],
    )


def _context(can_edit: bool = True) -> dict[str, object]:
    return {
        "csrf_token": "token-value",
        "csrf_header": csrf.TOKEN_HEADER,
        "link": lambda path, **params: "/opportunity-syncs" + path,
        "can_edit": can_edit,
    }


def test_the_chart_draws_one_stacked_bar_per_run_oldest_first() -> None:
    runs = [
        _run("r3", 20, unknown=1),
        _run("r2", 10, updated=3, rejected=1),
        _run("r1", 0, created=9, rejected=2),
    ]

    svg = str(outcomes_chart(runs))

    assert svg.startswith('<svg class="outcome-chart"')
    assert svg.endswith("</svg>")
    assert re.findall(r'data-run-id="(\w+)"', svg) == ["r1", "r2", "r3"]
    assert len(re.findall(r'class="bar bar-', svg)) == 5  # one segment per non-zero outcome
    assert "10:00: created 9" in svg
    assert "10:20: unknown 1" in svg
    heights = {
        outcome: float(height)
        for outcome, height in re.findall(
            r'class="bar bar-(\w+)" x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)"', svg
        )
        if outcome in ("created", "unknown")
    }
    assert heights["created"] == pytest.approx(9 * heights["unknown"], rel=0.05)


def test_the_chart_of_no_runs_says_so_and_at_most_the_last_runs_are_drawn() -> None:
    assert "No runs recorded yet" in str(outcomes_chart([]))
    many = [_run(f"r{number}", -number, created=1) for number in range(45)]
    svg = str(outcomes_chart(many, max_runs=30))
    assert len(re.findall(r'<g class="run"', svg)) == 30
    assert 'data-run-id="r0"' in svg
    assert 'data-run-id="r44"' not in svg


def test_the_chart_escapes_what_it_writes() -> None:
    svg = str(outcomes_chart([RunRow(HOSTILE, START, None, OutcomeCounts(created=1))]))
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg


def test_every_value_from_a_state_is_escaped_on_every_page() -> None:
    detail = _detail()
    listing = SyncList([detail.sync], [UnreachableState(StateLocation("x", "x", HOSTILE), HOSTILE)])
    pages = [
        render("syncs.html", listing=listing, locations=[detail.sync.location], **_context()),
        render("sync.html", detail=detail, **_context()),
        render("forget.html", detail=detail, **_context()),
    ]
    for html in pages:
        assert "<script>alert" not in html
        assert "conn<1>" not in html
        assert "k<2>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;&#34;" in pages[1]


def test_the_sync_page_shows_its_figures_and_its_actions_only_to_an_editor() -> None:
    detail = _detail(name="sync.one", message="Invalid stage")

    html = render("sync.html", detail=detail, **_context(can_edit=True))

    assert re.search(r'data-field="rows_in_state">16<', html)
    assert re.search(r'data-field="open_rejects">3<', html)
    assert len(re.findall(r'<tr class="run"', html)) == 2
    assert 'name="opportunity-syncs-token" content="token-value"' in html
    assert set(re.findall(r'data-action="([\w-]+)"', html)) == {"resolve", "resend"}
    assert "Forget…" in html
    viewer = render("sync.html", detail=detail, **_context(can_edit=False))
    assert "data-action=" not in viewer
    assert "Forget…" not in viewer


def test_the_forget_page_names_how_many_rows_go() -> None:
    html = render("forget.html", detail=_detail(name="sync.one"), **_context())
    assert 'name="expected_rows" value="16"' in html
    assert "Forget 16 rows" in html


def test_times_and_durations_read_well() -> None:
    assert when(START) == "2026-11-23 10:00:00 UTC"
    assert when(None) == "—"
    assert seconds(2.25) == "2.2 s"
    assert seconds(125) == "2 min 5 s"
    assert seconds(None) == "—"


def test_a_page_token_is_good_for_its_user_and_its_secret_only_and_not_for_ever() -> None:
    token = csrf.issue_token("admin", "secret-1")

    assert csrf.token_is_valid(token, "admin", "secret-1")
    assert not csrf.token_is_valid(token, "viewer", "secret-1")
    assert not csrf.token_is_valid(token, "admin", "secret-2")
    assert not csrf.token_is_valid(token[:-2] + "xx", "admin", "secret-1")
    assert not csrf.token_is_valid("", "admin", "secret-1")
    time.sleep(1.1)
    assert not csrf.token_is_valid(token, "admin", "secret-1", max_age=0)


def test_only_this_servers_origin_may_change_anything() -> None:
    hosts = ["127.0.0.1:8080", "airflow.example.com"]
    assert csrf.origin_is_allowed("http://127.0.0.1:8080", hosts)
    assert csrf.origin_is_allowed("https://airflow.example.com", hosts)
    assert not csrf.origin_is_allowed("http://127.0.0.1:9999", hosts)  # same site, another origin
    assert not csrf.origin_is_allowed("https://airflow.example.com.evil.test", hosts)
    assert not csrf.origin_is_allowed("null", hosts)
    assert csrf.same_site_fetch(None)
    assert csrf.same_site_fetch("same-origin")
    assert not csrf.same_site_fetch("same-site")
    assert not csrf.same_site_fetch("cross-site")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", [LOCAL_STATE_ID]),
        ("sync_state_pg", [LOCAL_STATE_ID, "sync_state_pg"]),
        (" a , b,,a ", [LOCAL_STATE_ID, "a", "b"]),
    ],
)
def test_the_option_adds_connections_to_the_local_state(value: str, expected: list[str]) -> None:
    assert parse_state_conn_ids(value) == expected


def test_the_provider_declares_the_plugin_and_the_option() -> None:
    info = get_provider_info()
    (plugin,) = info["plugins"]
    assert plugin["plugin-class"] == "airflow_opportunity_provider.plugins.plugin.OpportunitySyncsPlugin"
    option = info["config"]["opportunity_crm"]["options"]["state_conn_ids"]
    assert option["default"] == ""
    assert "comma-separated" in option["description"].lower()
    from airflow.providers_manager import ProvidersManager

    # Airflow's own validation of provider info (it would drop or refuse a malformed one).
    ProvidersManager()._provider_schema_validator.validate(info)


def test_airflow_lists_the_plugin_with_its_app_and_its_navigation_entry(airflow_db: Path) -> None:
    airflow = Path(sys.executable).with_name("airflow")
    result = subprocess.run(
        [str(airflow), "plugins", "-o", "json"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    plugins = {plugin["name"]: plugin for plugin in json.loads(result.stdout[result.stdout.index("[") :])}
    plugin = plugins["opportunity_syncs"]
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/opportunity-syncs"
    (view,) = plugin["external_views"]
    assert (view["name"], view["destination"], view["href"], view["url_route"]) == (
        "Opportunity syncs",
        "nav",
        "/opportunity-syncs/",
        "opportunity-syncs",
    )


def test_loading_the_plugin_imports_no_web_framework() -> None:
    # Every Airflow process loads plugins; only the API server needs FastAPI and the pages.
    code = (
        "import sys; import airflow_opportunity_provider.plugins.plugin as p; "
        "print(sorted(m for m in sys.modules if m.startswith(('fastapi', 'airflow.api_fastapi', "
        "'airflow_opportunity_provider.plugins.app'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
