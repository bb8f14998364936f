"""The mock CRM's command line as a separate process: the ready line, options, clean stops on
SIGTERM and SIGINT, and an access log that carries no secret."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest
import requests

from airflow_opportunity_provider.auth import sign_v1_request

MODULE = "airflow_opportunity_provider.mock_crm"
READY_PREFIX = "mock CRM listening on "


def _read_ready_line(process: subprocess.Popen[str], timeout: float = 20.0) -> str:
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    try:
        if not selector.select(timeout):
            raise AssertionError(f"the mock printed nothing within {timeout} s")
        return process.stdout.readline().strip()
    finally:
        selector.close()


@contextmanager
def _cli(args: Sequence[str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", MODULE, "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = _read_ready_line(process)
        assert line.startswith(READY_PREFIX), line
        yield process, line.removeprefix(READY_PREFIX)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _stop(process: subprocess.Popen[str], signum: int = signal.SIGTERM) -> tuple[int, str]:
    started = time.monotonic()
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=10)
    assert time.monotonic() - started < 5
    return process.returncode, stderr


def test_the_cli_prints_its_line_serves_and_stops_on_sigterm() -> None:
    options = [
        "--api-key", "cli-key", "--api-secret", "cli-secret-0001",
        "--category", "Alpha", "--category", "Beta", "--stage", "Open",
        "--v2-seed-count", "3", "--first-v1-id", "77",
        "--reject-name", "Bad Row", "--error", "503=0",
    ]  # fmt: skip
    with _cli(options) as (process, base_url):
        body = (
            b'{"venueId": "1", "name": "N", "contactId": "2", "typeId": "3", "sourceId": "4", "stageId": "5"}'
        )
        path = "/api/1.0/venue?action=addOrUpdateOpportunity"
        created = requests.post(
            base_url + path,
            data=body,
            headers=sign_v1_request("cli-key", "cli-secret-0001", path, body),
            timeout=5,
        )
        headers = {"Authorization": "Bearer mock-static-token-abcdef"}
        choices = requests.put(
            base_url + "/api/v2/opportunities/3?opportunityType=Pre",
            json={"CategoryName": "Nope"},
            headers=headers,
        )
        missing = requests.get(base_url + "/api/v2/opportunities/4", headers=headers, timeout=5)

        returncode, _ = _stop(process)

    assert base_url.startswith("http://127.0.0.1:")
    assert created.json() == {"success": True, "id": 77}
    assert [c["CategoryName"] for c in choices.json()["AvailableCategories"]] == ["Alpha", "Beta"]
    assert [s["StageName"] for s in choices.json()["AvailableStages"]] == ["Open"]
    assert missing.status_code == 404
    assert returncode == 0


def test_the_cli_stops_on_sigint_and_applies_fault_options() -> None:
    with _cli(["--error", "429=1", "--retry-after", "3", "--latency", "0.2"]) as (process, base_url):
        started = time.perf_counter()
        response = requests.get(
            base_url + "/api/v2/opportunities/1",
            headers={"Authorization": "Bearer mock-static-token-abcdef"},
            timeout=5,
        )
        elapsed = time.perf_counter() - started
        faults = requests.get(base_url + "/_mock/faults", timeout=5).json()

        returncode, _ = _stop(process, signal.SIGINT)

    assert (response.status_code, response.headers["Retry-After"]) == (429, "3")
    assert elapsed >= 0.2
    assert faults["errors"] == {"429": 1.0}
    assert returncode == 0


def test_the_cli_sets_the_list_page_cap_and_the_list_switches() -> None:
    path = "/api/1.0/crm?action=getOpportunityList"
    options = ["--list-page-cap", "2", "--list-ignores-filters", "--list-ignores-venue-ids"]
    with _cli(options) as (process, base_url):
        seeded = requests.post(
            base_url + "/_mock/v1/opportunities",
            json=[{"venueId": 1, "name": "a"}, {"venueId": 2, "name": "b"}, {"venueId": 3, "name": "c"}],
            timeout=5,
        ).json()
        body = b'{"perPage": 50, "venueIds": [1], "filter": {"name": "a"}}'
        answer = requests.post(
            base_url + path,
            data=body,
            headers=sign_v1_request("mock-api-key-0001", "mock-api-secret-0001-abcdef", path, body),
            timeout=5,
        ).json()
        faults = requests.get(base_url + "/_mock/faults", timeout=5).json()

        returncode, _ = _stop(process)

    assert seeded == {"ids": [1000, 1001, 1002]}
    # Neither venueIds nor filter is applied, and the page holds at most 2 records.
    assert answer["meta"] == {"totalResults": 3, "start": 0, "perPage": 2, "count": 2}
    assert [record["id"] for record in answer["results"]] == [1000, 1001]
    assert (faults["list_ignores_filters"], faults["list_ignores_venue_ids"]) == (True, True)
    assert returncode == 0


def test_the_access_log_is_off_by_default_and_never_shows_secrets() -> None:
    secrets = ("mock-api-secret-0001-abcdef", "mock-client-secret-abcdef", "mock-static-token-abcdef")

    def exercise(base_url: str) -> str:
        path = "/api/1.0/test?action=ping"
        headers = sign_v1_request("mock-api-key-0001", secrets[0], path, b"{}")
        requests.post(base_url + path, data=b"{}", headers=headers, timeout=5)
        token = requests.post(
            base_url + "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "mock-client-id",
                "client_secret": secrets[1],
            },
            timeout=5,
        ).json()["access_token"]
        requests.get(base_url + "/api/v2/opportunities/1", headers={"Authorization": f"Bearer {secrets[2]}"})
        requests.get(base_url + "/api/v2/opportunities/1", headers={"Authorization": f"Bearer {token}"})
        return headers["X-Api-Authorization"].split(":")[1] + " " + token

    with _cli([]) as (process, base_url):
        exercise(base_url)
        _, quiet_log = _stop(process)
    with _cli(["--access-log"]) as (process, base_url):
        signature_and_token = exercise(base_url)
        _, access_log = _stop(process)

    assert quiet_log == ""
    assert "/api/1.0/test?action=ping" in access_log
    assert "/oauth/token" in access_log
    for secret in (*secrets, *signature_and_token.split()):
        assert secret not in access_log


def test_help_documents_every_option_with_its_default() -> None:
    result = subprocess.run(
        [sys.executable, "-m", MODULE, "--help"], capture_output=True, text=True, timeout=30, check=True
    )

    for option in (
        "--host", "--port", "--api-key", "--api-secret", "--client-id", "--client-secret", "--static-token",
        "--token-ttl", "--category", "--stage", "--v2-seed-count", "--first-v1-id", "--latency", "--error",
        "--retry-after", "--drop-after-commit-rate", "--rate-limit", "--burst", "--seed", "--reject-name",
        "--access-log", "--list-page-cap", "--list-ignores-filters", "--list-ignores-venue-ids",
    ):  # fmt: skip
        assert option in result.stdout
    text = " ".join(result.stdout.split())
    assert "(default: 8080)" in text
    assert "(default: New Business, Existing Business, Renewal)" in text
    assert "(default: None)" not in text


@pytest.mark.parametrize(
    "bad", [["--error", "503"], ["--error", "418=0.5"], ["--latency", "-1"], ["--list-page-cap", "0"]]
)
def test_bad_options_exit_with_usage_error(bad: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", MODULE, "--port", "0", *bad], capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 2
    assert "error:" in result.stderr
    assert result.stdout == ""
