"""The page's authentication, permissions and forgery protection, over plain HTTP to a real API server.

A request without a session is refused and changes nothing; a session cookie alone cannot change
anything without the page's token; a viewer reads but cannot change; every change is in
Airflow's audit log under the user's name.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_opportunity_provider.plugins.csrf import TOKEN_HEADER
from tests.ui import sample_states as sample
from tests.ui.api_server import User
from tests.ui.conftest import STATE_CONN, Deployment

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PAGE = "/opportunity-syncs"
# One valid body per action, all on the connection state's scratch sync.
ACTIONS: dict[str, dict[str, Any]] = {
    "resolve": {"state": STATE_CONN, "sync_name": sample.API_SYNC, "source_key": "a-5", "crm_id": "4242"},
    "resend": {"state": STATE_CONN, "sync_name": sample.API_SYNC, "source_keys": ["a-0", "a-1"]},
    "retry-code": {"state": STATE_CONN, "sync_name": sample.API_SYNC, "code": "24221"},
    "forget": {"state": STATE_CONN, "sync_name": sample.API_SYNC, "expected_rows": 6},
}


def _snapshot(path: Path) -> list[tuple[Any, ...]]:
    """Everything a state file holds, to show that a refused request changed nothing."""
    with sqlite3.connect(path) as connection:
        state = connection.execute(
            "SELECT * FROM opportunity_sync_state ORDER BY sync_name, source_key"
        ).fetchall()
        rejects = connection.execute("SELECT * FROM opportunity_sync_state_rejects ORDER BY rowid").fetchall()
    return [*state, ("--",), *rejects]


def _session(deployment: Deployment, user: User) -> requests.Session:
    """What a browser logged in as ``user`` sends: the ``_token`` cookie, and no Authorization header."""
    session = requests.Session()
    session.cookies.set("_token", deployment.server.token(user), domain="127.0.0.1", path="/")
    return session


def _page_token(session: requests.Session, url: str) -> str:
    page = session.get(url, timeout=30)
    assert page.status_code == 200, page.text[:500]
    match = re.search(r'<meta name="opportunity-syncs-token" content="([^"]+)">', page.text)
    assert match, "the page carries no token"
    return match.group(1)


def test_without_a_session_every_page_and_action_is_refused_and_nothing_changes(
    deployment: Deployment,
) -> None:
    url = deployment.server.url
    before = _snapshot(deployment.connection_state)
    pages = [
        f"{PAGE}/",
        f"{PAGE}/sync?state={STATE_CONN}&name={sample.API_SYNC}",
        f"{PAGE}/sync/forget?state={STATE_CONN}&name={sample.API_SYNC}",
    ]
    for path in pages:
        answer = requests.get(url + path, allow_redirects=False, timeout=30)
        assert answer.status_code == 401, (path, answer.status_code)
        assert sample.API_SYNC not in answer.text
    for action, body in ACTIONS.items():
        answer = requests.post(f"{url}{PAGE}/actions/{action}", json=body, timeout=30)
        assert answer.status_code == 401, (action, answer.status_code, answer.text)
        # A forged cookie is no session either.
        answer = requests.post(
            f"{url}{PAGE}/actions/{action}", json=body, cookies={"_token": "forged"}, timeout=30
        )
        assert answer.status_code in (401, 403), (action, answer.status_code, answer.text)
    assert _snapshot(deployment.connection_state) == before


def test_a_session_cookie_alone_cannot_change_anything(deployment: Deployment) -> None:
    url = deployment.server.url
    session = _session(deployment, deployment.admin)
    token = _page_token(session, f"{url}{PAGE}/")
    viewer_token = _page_token(_session(deployment, deployment.viewer), f"{url}{PAGE}/")
    before = _snapshot(deployment.connection_state)
    forged: list[dict[str, str]] = [
        {},  # what a form on another site sends: the cookie and nothing else
        {TOKEN_HEADER: "not-a-token"},
        {TOKEN_HEADER: viewer_token},  # signed, but for another user
        {TOKEN_HEADER: token, "Origin": "http://evil.example"},
        {TOKEN_HEADER: token, "Sec-Fetch-Site": "cross-site"},
        {TOKEN_HEADER: token, "Sec-Fetch-Site": "same-site"},  # another port of this host
    ]
    for action, body in ACTIONS.items():
        for headers in forged:
            answer = session.post(f"{url}{PAGE}/actions/{action}", json=body, headers=headers, timeout=30)
            assert answer.status_code == 403, (action, headers, answer.status_code, answer.text)
    assert _snapshot(deployment.connection_state) == before


def test_a_viewer_reads_the_pages_but_cannot_change_a_sync(deployment: Deployment) -> None:
    url = deployment.server.url
    session = _session(deployment, deployment.viewer)
    token = _page_token(session, f"{url}{PAGE}/")
    detail = session.get(
        f"{url}{PAGE}/sync", params={"state": STATE_CONN, "name": sample.API_SYNC}, timeout=30
    )
    assert detail.status_code == 200
    assert "a-3" in detail.text  # its rejects are shown ...
    assert "data-action=" not in detail.text  # ... without any form that changes them
    assert "needs permission to edit" in detail.text
    before = _snapshot(deployment.connection_state)
    for action, body in ACTIONS.items():
        answer = session.post(
            f"{url}{PAGE}/actions/{action}",
            json=body,
            headers={TOKEN_HEADER: token, "Origin": url},
            timeout=30,
        )
        assert answer.status_code == 403, (action, answer.status_code, answer.text)
    assert _snapshot(deployment.connection_state) == before


def test_inputs_are_validated_before_anything_changes(deployment: Deployment) -> None:
    url = deployment.server.url
    session = _session(deployment, deployment.admin)
    headers = {TOKEN_HEADER: _page_token(session, f"{url}{PAGE}/"), "Origin": url}
    before = _snapshot(deployment.connection_state)
    refused = [
        ("resolve", {**ACTIONS["resolve"], "crm_id": "12a"}, 422),
        ("resolve", {**ACTIONS["resolve"], "crm_id": "1; DROP TABLE x"}, 422),
        ("resend", {**ACTIONS["resend"], "source_keys": []}, 422),
        ("resend", {**ACTIONS["resend"], "extra": "field"}, 422),
        ("retry-code", {**ACTIONS["retry-code"], "partition": -1}, 422),
        ("forget", {**ACTIONS["forget"], "expected_rows": "all"}, 422),
        # A state that is not configured is never opened, even if the connection exists.
        ("retry-code", {**ACTIONS["retry-code"], "state": "some_other_connection"}, 404),
        ("forget", {**ACTIONS["forget"], "sync_name": "no.such.sync"}, 404),
        # The sync holds 6 rows, not 5: nothing is deleted.
        ("forget", {**ACTIONS["forget"], "expected_rows": 5}, 409),
    ]
    for action, body, status in refused:
        answer = session.post(f"{url}{PAGE}/actions/{action}", json=body, headers=headers, timeout=30)
        assert answer.status_code == status, (action, body, answer.status_code, answer.text)
    form = session.post(
        f"{url}{PAGE}/actions/retry-code", data=ACTIONS["retry-code"], headers=headers, timeout=30
    )  # a form-encoded body is not the JSON the action takes
    assert form.status_code == 422
    assert _snapshot(deployment.connection_state) == before


def test_an_admin_changes_a_sync_with_the_page_token_and_the_audit_log_names_them(
    deployment: Deployment,
) -> None:
    url = deployment.server.url
    session = _session(deployment, deployment.admin)
    headers = {
        TOKEN_HEADER: _page_token(session, f"{url}{PAGE}/"),
        "Origin": url,
        "Sec-Fetch-Site": "same-origin",
    }

    answer = session.post(
        f"{url}{PAGE}/actions/retry-code", json=ACTIONS["retry-code"], headers=headers, timeout=30
    )

    assert answer.status_code == 200, answer.text
    assert answer.json()["changed"] == 2
    with sqlite3.connect(deployment.connection_state) as connection:
        hashes = dict(
            connection.execute(
                "SELECT source_key, payload_hash FROM opportunity_sync_state WHERE sync_name = ? AND error_code = ?",
                [sample.API_SYNC, "24221"],
            ).fetchall()
        )
    assert hashes == {"a-3": None, "a-4": None}
    bearer = {"Authorization": f"Bearer {deployment.server.token(deployment.admin)}"}
    events = requests.get(
        f"{url}/api/v2/eventLogs",
        # Refused attempts are logged too (the log is written before the body is checked): the newest.
        params={"event": "opportunity_syncs_retry_code", "order_by": "-id", "limit": 1},
        headers=bearer,
        timeout=30,
    )
    assert events.status_code == 200, events.text
    (entry,) = events.json()["event_logs"]
    assert entry["owner"] == deployment.admin.name
    assert "24221" in entry["extra"]
    assert sample.API_SYNC in entry["extra"]


def test_a_client_with_a_bearer_token_needs_no_page_token(deployment: Deployment) -> None:
    url = deployment.server.url
    bearer = {"Authorization": f"Bearer {deployment.server.token(deployment.admin)}"}
    body = {"state": STATE_CONN, "sync_name": sample.API_SYNC, "source_keys": ["a-0", "a-5", "missing"]}

    answer = requests.post(f"{url}{PAGE}/actions/resend", json=body, headers=bearer, timeout=30)

    assert answer.status_code == 200, answer.text
    # a-0 is marked; a-5 is an unknown create (resolve it instead) and "missing" is not in the state.
    assert answer.json()["changed"] == 1
    with sqlite3.connect(deployment.connection_state) as connection:
        (payload_hash,) = connection.execute(
            "SELECT payload_hash FROM opportunity_sync_state WHERE sync_name = ? AND source_key = 'a-0'",
            [sample.API_SYNC],
        ).fetchone()
    assert payload_hash is None
    # A viewer's bearer token is refused: it lacks the permission, whatever the page token.
    viewer = {"Authorization": f"Bearer {deployment.server.token(deployment.viewer)}"}
    assert (
        requests.post(f"{url}{PAGE}/actions/resend", json=body, headers=viewer, timeout=30).status_code == 403
    )
