"""The Opportunity syncs page in a real Chromium, inside the real Airflow UI, against a real API server.

A person logs in through Airflow's login page, opens the page from the UI's navigation, reads the
syncs list and one sync with its chart, and resolves an unknown and forgets a sync with the page's
own buttons; an unknown resolved there is sent as an update by the real operator's next run.
Screenshots go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_opportunity_provider.mock_crm import MockCrmServer
from airflow_opportunity_provider.mock_crm.faults import FaultConfig
from airflow_opportunity_provider.transfers import SqlToOpportunityOperator
from tests.integration.transfers.helpers import (
    V1_TEST_MAPPING,
    V1_TEST_SQL,
    WAREHOUSE_CONN,
    make_warehouse,
    records_by_ref,
    run,
    sqlite_conn_json,
)
from tests.ui import sample_states as sample
from tests.ui.conftest import STATE_CONN, Deployment

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NAV_NAME = "Opportunity syncs"
FRAME = 'iframe[title="Opportunity syncs"]'
VIEWPORT = {"width": 1440, "height": 900}


@pytest.fixture(scope="module")
def logged_in(browser: Any, deployment: Deployment) -> dict[str, Any]:
    """The cookies of a browser that logged in as the admin through the login page."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        _log_in(page, deployment)
        return dict(context.storage_state())
    finally:
        context.close()


@pytest.fixture
def page(browser: Any, logged_in: dict[str, Any]) -> Iterator[Any]:
    """A page of a logged-in browser; a dialog opening (an injected script) fails the test."""
    context = browser.new_context(viewport=VIEWPORT, storage_state=logged_in)
    dialogs: list[str] = []
    page = context.new_page()
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        yield page
    finally:
        context.close()
    assert dialogs == [], f"a script on the page opened a dialog: {dialogs}"


def _expect(target: Any) -> Any:
    from playwright.sync_api import expect

    return expect(target)


def _log_in(page: Any, deployment: Deployment) -> None:
    server, admin = deployment.server, deployment.admin
    page.goto(f"{server.url}/")
    page.wait_for_url("**/auth/login**")  # the UI sends a visitor without a session to its login page
    page.locator("input[name=username]").fill(admin.name)
    page.locator("input[name=password]").fill(admin.password)
    page.get_by_role("button", name="Sign in").click()
    _expect(page.get_by_role("link", name=NAV_NAME)).to_be_visible(timeout=30_000)


def _open_from_navigation(page: Any, deployment: Deployment) -> Any:
    page.goto(f"{deployment.server.url}/")
    page.get_by_role("link", name=NAV_NAME).click()
    page.wait_for_url("**/plugin/opportunity-syncs**")
    frame = page.frame_locator(FRAME)
    _expect(frame.get_by_role("heading", name="Opportunity syncs")).to_be_visible(timeout=30_000)
    return frame


def _row(frame: Any, state: str, sync_name: str) -> Any:
    return frame.locator(f'tr.sync[data-state="{state}"]').filter(
        has=frame.get_by_role("link", name=sync_name, exact=True)
    )


def _state_rows(path: Path, sync_name: str) -> dict[str, tuple[Any, ...]]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT source_key, crm_id, outcome FROM opportunity_sync_state WHERE sync_name = ?", [sync_name]
        ).fetchall()
    return {key: (crm_id, outcome) for key, crm_id, outcome in rows}


def test_a_logged_in_person_opens_the_syncs_list_and_one_sync_from_the_navigation(
    browser: Any, deployment: Deployment, screenshots: Path
) -> None:
    context = browser.new_context(viewport=VIEWPORT)
    dialogs: list[str] = []
    page = context.new_page()
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        began = time.monotonic()
        _log_in(page, deployment)
        logged_in_after = time.monotonic() - began
        frame = _open_from_navigation(page, deployment)

        # The list: every sync of both states, with the figures that were written.
        for (state, name), expected in deployment.expected.items():
            if name in (sample.MAIN_SYNC, sample.NEXUS_SYNC, sample.HOSTILE_SYNC):
                row = _row(frame, state, name)
                _expect(row).to_have_count(1)
                _expect(row.locator('[data-field="rows_in_state"]')).to_have_text(str(expected.rows_in_state))
                _expect(row.locator('[data-field="unresolved_unknowns"]')).to_have_text(
                    str(expected.unresolved_unknowns)
                )
                _expect(row.locator('[data-field="open_rejects"]')).to_have_text(str(expected.open_rejects))
                counts = row.locator("span.count")
                _expect(counts).to_have_count(len(expected.last_run))
                for outcome, count in expected.last_run.items():
                    _expect(row.locator(f'span.count[data-outcome="{outcome}"]')).to_have_attribute(
                        "data-count", str(count)
                    )
        _expect(_row(frame, STATE_CONN, sample.NEXUS_SYNC).locator("td").nth(1)).to_have_text(STATE_CONN)
        # A sync name with markup in it is shown as text.
        _expect(frame.locator("tr.sync b")).to_have_count(0)
        page.screenshot(path=str(screenshots / "syncs-list.png"))

        # One sync: its chart, its runs, its rejects (a message with markup shown as text).
        _row(frame, "~local", sample.MAIN_SYNC).get_by_role("link", name=sample.MAIN_SYNC).click()
        _expect(frame.get_by_role("heading", name=sample.MAIN_SYNC, exact=True)).to_be_visible()
        chart = frame.locator("svg.outcome-chart")
        _expect(chart).to_be_visible()
        _expect(chart.locator("g.run")).to_have_count(2)
        # Run 1: created and rejected; run 2: updated, rejected and unknown.
        _expect(chart.locator("rect.bar")).to_have_count(5)
        # The tooltip of the one "updated" bar names its count.
        (title,) = chart.locator("rect.bar-updated title").all_text_contents()
        assert title.endswith(": updated 3"), title
        box = chart.bounding_box()
        assert box is not None
        assert box["width"] > 300
        assert box["height"] > 80
        _expect(frame.locator("table.runs tr.run")).to_have_count(2)
        _expect(frame.locator("table.unknowns tr.unknown")).to_have_count(1)
        _expect(frame.locator("table.rejects tr.reject")).to_have_count(3)
        _expect(frame.get_by_text(sample.HOSTILE_MESSAGE)).to_be_visible()
        _expect(frame.locator("table.rejects img")).to_have_count(0)
        page.screenshot(path=str(screenshots / "one-sync.png"))

        # The code filter.
        frame.locator('.filters a[data-code="24224"]').click()
        _expect(frame.locator("table.rejects tr.reject")).to_have_count(2)
        _expect(frame.locator("table.unknowns tr.unknown")).to_have_count(0)
        _expect(frame.get_by_role("button", name="Send every reject with code 24224 again")).to_be_visible()
        print(f"\nlogged in after {logged_in_after:.1f} s; screenshots in {screenshots}")
    finally:
        context.close()
    assert dialogs == [], f"a script on the page opened a dialog: {dialogs}"


def test_an_unknown_is_resolved_with_the_pages_own_form(page: Any, deployment: Deployment) -> None:
    frame = _open_from_navigation(page, deployment)
    _row(frame, "~local", sample.RESOLVE_SYNC).get_by_role("link", name=sample.RESOLVE_SYNC).click()
    unknown = frame.locator('table.unknowns tr.unknown[data-key="r-1"]')
    _expect(unknown).to_have_count(1)

    unknown.get_by_role("textbox").fill("5555")
    unknown.get_by_role("button", name="Resolve").click()

    _expect(frame.locator("#status")).to_have_text("Recorded CRM id 5555 for r-1.")
    # The page loads again and has no unknown left.
    _expect(frame.locator("table.unknowns")).to_have_count(0, timeout=15_000)
    _expect(frame.locator('.card [data-field="unresolved_unknowns"]')).to_have_text("0")
    assert _state_rows(deployment.local_state, sample.RESOLVE_SYNC)["r-1"] == ("5555", "created")


def test_forgetting_a_sync_names_how_many_rows_go_then_deletes_them(
    page: Any, deployment: Deployment
) -> None:
    frame = _open_from_navigation(page, deployment)
    _row(frame, "~local", sample.FORGET_SYNC).get_by_role("link", name=sample.FORGET_SYNC).click()
    frame.get_by_role("link", name="Forget…").click()

    _expect(frame.get_by_role("heading", name=f"Forget {sample.FORGET_SYNC}?")).to_be_visible()
    _expect(frame.locator('[data-field="rows_in_state"]')).to_have_text("7")
    assert len(_state_rows(deployment.local_state, sample.FORGET_SYNC)) == 7
    frame.get_by_role("button", name="Forget 7 rows").click()

    _expect(frame.locator("#status")).to_have_text(f"Forgot {sample.FORGET_SYNC}: 7 rows deleted.")
    # Back on the list, which no longer has it.
    _expect(frame.get_by_role("heading", name="Opportunity syncs")).to_be_visible(timeout=15_000)
    _expect(_row(frame, "~local", sample.MAIN_SYNC)).to_have_count(1)
    _expect(_row(frame, "~local", sample.FORGET_SYNC)).to_have_count(0)
    assert _state_rows(deployment.local_state, sample.FORGET_SYNC) == {}


OPERATOR_SYNC = "browser.operator_resolve"
OPERATOR_STATE_CONN = "ui_operator_state"


def test_an_unknown_resolved_on_the_page_is_sent_as_an_update_by_the_next_run_of_the_operator(
    page: Any,
    deployment: Deployment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mock_crm: MockCrmServer,
    opportunity_conn: str,
    airflow_db: Path,
) -> None:
    # The operator runs in this process on the very state file the API server reads as ~local.
    make_warehouse(tmp_path / "warehouse.db", 2)
    monkeypatch.setenv(f"AIRFLOW_CONN_{WAREHOUSE_CONN.upper()}", sqlite_conn_json(tmp_path / "warehouse.db"))
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{OPERATOR_STATE_CONN.upper()}", sqlite_conn_json(deployment.local_state)
    )

    def load() -> dict[str, Any]:
        operator = SqlToOpportunityOperator(
            # Unknowns left to a person: the page is how this test resolves them.
            reference=False,
            task_id=f"load_{uuid.uuid4().hex[:6]}",
            sql=V1_TEST_SQL.format(table="crm_opportunities"),
            sql_conn_id=WAREHOUSE_CONN,
            key_columns="opportunity_ref",
            mapping=V1_TEST_MAPPING,
            state_conn_id=OPERATOR_STATE_CONN,
            sync_name=OPERATOR_SYNC,
            progress_interval=0,
        )
        summary, _ = run(operator)
        return summary

    # Every create is stored by the CRM and its answer lost: both rows' outcomes are unknown.
    mock_crm.set_faults(FaultConfig(drop_after_commit_rate=1.0))
    first = load()
    assert (first["created"], first["unknown"]) == (0, 2)
    mock_crm.set_faults(FaultConfig())
    stored = records_by_ref(mock_crm)
    resolved_key, left_key = sorted(stored)
    (record,) = stored[resolved_key]

    # The person finds the record in the CRM and gives its id on the page.
    frame = _open_from_navigation(page, deployment)
    _row(frame, "~local", OPERATOR_SYNC).get_by_role("link", name=OPERATOR_SYNC).click()
    _expect(frame.locator("table.unknowns tr.unknown")).to_have_count(2)
    unknown = frame.locator(f'table.unknowns tr.unknown[data-key="{resolved_key}"]')
    unknown.get_by_role("textbox").fill(str(record["id"]))
    unknown.get_by_role("button", name="Resolve").click()
    _expect(frame.locator("#status")).to_have_text(f"Recorded CRM id {record['id']} for {resolved_key}.")
    _expect(frame.locator("table.unknowns tr.unknown")).to_have_count(1, timeout=15_000)
    assert _state_rows(deployment.local_state, OPERATOR_SYNC)[resolved_key] == (str(record["id"]), "created")

    # The next run updates the resolved row's record and creates nothing; the other stays unknown.
    before = mock_crm.counters.snapshot()
    second = load()
    after = mock_crm.counters.snapshot()
    assert (second["updated"], second["created"], second["unknown"]) == (1, 0, 1)
    assert (after["v1_updates"] - before["v1_updates"], after["v1_creates"] - before["v1_creates"]) == (1, 0)
    assert [item["id"] for item in records_by_ref(mock_crm)[resolved_key]] == [record["id"]]
    rows = _state_rows(deployment.local_state, OPERATOR_SYNC)
    assert rows[resolved_key] == (str(record["id"]), "updated")
    assert rows[left_key][1] == "unknown"
