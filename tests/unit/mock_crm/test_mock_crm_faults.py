"""The mock's fault injection: latency, injected statuses, drops after commit, the rate limit,
and the FaultConfig / FaultInjector rules behind them."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from airflow_opportunity_provider.mock_crm import FaultConfig, MockCrmServer
from airflow_opportunity_provider.mock_crm.faults import FaultInjector, format_retry_after
from airflow_opportunity_provider.mock_crm.pytest_plugin import V1_PING_REQUEST, post_v1

CREATE = {"venueId": "1", "name": "N", "contactId": "2", "typeId": "3", "sourceId": "4", "stageId": "5"}


def _v2_get(server: MockCrmServer, session: requests.Session | None = None) -> requests.Response:
    sender = session or requests
    headers = {"Authorization": f"Bearer {server.config.static_token}"}
    return sender.get(
        server.base_url + "/api/v2/opportunities/1?opportunityType=Pre", headers=headers, timeout=5
    )


def test_latency_delays_every_answer_without_serializing_them(mock_crm: MockCrmServer) -> None:
    mock_crm.set_faults(FaultConfig(latency=0.3))

    def timed(_: int) -> float:
        started = time.perf_counter()
        assert _v2_get(mock_crm).status_code == 200
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        durations = list(pool.map(timed, range(4)))
    total = time.perf_counter() - started

    assert min(durations) >= 0.3
    assert total < 0.3 * 4 * 0.6  # concurrent requests wait side by side, not one after another


def test_injected_statuses_come_in_roughly_their_shares_with_retry_after(mock_crm: MockCrmServer) -> None:
    mock_crm.set_faults(FaultConfig(errors={503: 0.2, 429: 0.1}, retry_after=2, seed=11))
    statuses: Counter[int] = Counter()
    retry_after: set[str | None] = set()
    with requests.Session() as session:
        for _ in range(300):
            response = _v2_get(mock_crm, session)
            statuses[response.status_code] += 1
            if response.status_code in (429, 503):
                retry_after.add(response.headers.get("Retry-After"))

    assert 35 <= statuses[503] <= 90  # expected 60
    assert 12 <= statuses[429] <= 50  # expected 30
    assert statuses[200] == 300 - statuses[503] - statuses[429]
    assert retry_after == {"2"}
    assert mock_crm.counters["rejected_by_fault"] == statuses[503] + statuses[429]


def test_the_same_seed_gives_the_same_faults(mock_crm: MockCrmServer) -> None:
    def run() -> list[int]:
        mock_crm.set_faults(FaultConfig(error_rate=0.5, error_status=502, seed=5))
        with requests.Session() as session:
            return [_v2_get(mock_crm, session).status_code for _ in range(40)]

    first, second = run(), run()

    assert first == second
    assert set(first) == {200, 502}


def test_error_rate_with_error_status_injects_that_status(mock_crm: MockCrmServer) -> None:
    mock_crm.set_faults(FaultConfig(error_rate=1.0, error_status=500))

    response = post_v1(mock_crm, b"{}", request_string=V1_PING_REQUEST)

    assert response.status_code == 500
    assert response.json() == {"errorCode": 500, "message": "Internal Server Error"}
    assert "Retry-After" not in response.headers  # only 429 and 503 carry it


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_an_injected_error_is_decided_before_anything_is_stored(mock_crm: MockCrmServer, status: int) -> None:
    mock_crm.set_faults(FaultConfig(errors={status: 1.0}))

    v1 = post_v1(mock_crm, CREATE)
    v2 = requests.put(
        mock_crm.base_url + "/api/v2/opportunities/1?opportunityType=Pre",
        json={"OpportunityName": "changed"},
        headers={"Authorization": f"Bearer {mock_crm.config.static_token}"},
        timeout=5,
    )

    assert (v1.status_code, v2.status_code) == (status, status)
    assert mock_crm.store.v1_records() == []
    record = mock_crm.store.v2_record(1, "Pre")
    assert record is not None
    assert record["OpportunityName"] == "Seed opportunity 1"
    assert mock_crm.counters["v1_creates"] == 0


def test_drop_after_commit_stores_the_create_but_never_answers(mock_crm: MockCrmServer) -> None:
    mock_crm.set_faults(FaultConfig(drop_after_commit_rate=1.0))

    with pytest.raises(requests.ConnectionError):
        post_v1(mock_crm, CREATE)

    assert [record["name"] for record in mock_crm.store.v1_records()] == ["N"]
    counts = mock_crm.counters.snapshot()
    assert counts["dropped_after_commit"] == 1
    assert counts["v1_creates"] == 1
    assert counts["by_status"] == {"dropped": 1}
    # The server keeps serving: the next answer arrives normally once the fault is off.
    mock_crm.set_faults(FaultConfig())
    assert post_v1(mock_crm, CREATE).json() == {"success": True, "id": 1001}


def test_drop_after_commit_applies_to_v2_puts_and_spares_reads(mock_crm: MockCrmServer) -> None:
    mock_crm.set_faults(FaultConfig(drop_after_commit_rate=1.0))
    headers = {"Authorization": f"Bearer {mock_crm.config.static_token}"}

    with pytest.raises(requests.ConnectionError):
        requests.put(
            mock_crm.base_url + "/api/v2/opportunities/4?opportunityType=Post",
            json={"SalesRevenue": 5},
            headers=headers,
            timeout=5,
        )
    read = _v2_get(mock_crm)
    ping = post_v1(mock_crm, b"{}", request_string=V1_PING_REQUEST)

    record = mock_crm.store.v2_record(4, "Post")
    assert record is not None
    assert record["SalesRevenue"] == 5
    assert (read.status_code, ping.status_code) == (200, 200)


def test_a_share_of_drops_leaves_every_write_stored(mock_crm: MockCrmServer) -> None:
    mock_crm.set_faults(FaultConfig(drop_after_commit_rate=0.5, seed=2))
    dropped = 0
    for _ in range(20):
        try:
            post_v1(mock_crm, CREATE)
        except requests.ConnectionError:
            dropped += 1

    assert 3 <= dropped <= 17
    assert len(mock_crm.store.v1_records()) == 20
    assert mock_crm.counters["dropped_after_commit"] == dropped


def test_the_rate_limit_answers_429_with_retry_after(mock_crm: MockCrmServer) -> None:
    mock_crm.set_faults(FaultConfig(rate_limit=2, burst=5))
    with requests.Session() as session:
        burst = [_v2_get(mock_crm, session) for _ in range(12)]
        time.sleep(0.6)  # a token comes back every 0.5 s
        after_pause = _v2_get(mock_crm, session)

    statuses = [response.status_code for response in burst]
    assert statuses[:5] == [200] * 5
    assert statuses.count(429) >= 5
    limited = next(response for response in burst if response.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1
    assert after_pause.status_code == 200
    assert mock_crm.counters["rate_limited"] == statuses.count(429)


def test_the_token_endpoint_is_spared_unless_asked(mock_crm: MockCrmServer) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": mock_crm.config.client_id,
        "client_secret": mock_crm.config.client_secret,
    }
    mock_crm.set_faults(FaultConfig(errors={503: 1.0}))
    spared = requests.post(mock_crm.base_url + "/oauth/token", data=form, timeout=5)
    mock_crm.set_faults(FaultConfig(errors={503: 1.0}, faults_on_token_endpoint=True))
    hit = requests.post(mock_crm.base_url + "/oauth/token", data=form, timeout=5)

    assert spared.status_code == 200
    assert hit.status_code == 503
    assert hit.headers["Retry-After"] == "1"
    assert hit.json()["error"] == "temporarily_unavailable"


def test_an_injected_401_on_v2_has_the_platform_body(mock_crm: MockCrmServer) -> None:
    mock_crm.set_faults(FaultConfig(errors={401: 1.0}))

    response = _v2_get(mock_crm)

    assert (response.status_code, response.text) == (401, "Authorization has been denied for this request.")


def test_faults_can_be_set_and_read_over_http(mock_crm: MockCrmServer) -> None:
    answer = requests.post(
        mock_crm.base_url + "/_mock/faults",
        json={"errors": {"503": 1.0}, "retry_after": 0.5, "reject_names": ["X"]},
        timeout=5,
    )
    read = requests.get(mock_crm.base_url + "/_mock/faults", timeout=5).json()
    refused = requests.post(mock_crm.base_url + "/_mock/faults", json={"latencyy": 1}, timeout=5)

    assert answer.status_code == 200
    assert mock_crm.faults == FaultConfig(errors={503: 1.0}, retry_after=0.5, reject_names=frozenset({"X"}))
    assert read["errors"] == {"503": 1.0}
    assert _v2_get(mock_crm).headers["Retry-After"] == "0.5"
    assert refused.status_code == 400
    assert "latencyy" in refused.json()["error"]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"latency": -1}, "latency"),
        ({"error_rate": 1.5}, "error_rate"),
        ({"errors": {418: 0.1}}, "cannot be injected"),
        ({"errors": {503: 0.7, 429: 0.4}}, "more than 1"),
        ({"errors": {503: 0.6}, "error_rate": 0.6}, "more than 1"),
        ({"rate_limit": 0}, "rate_limit"),
        ({"burst": 0}, "burst"),
        ({"token_ttl": 0}, "token_ttl"),
        ({"drop_after_commit_rate": -0.1}, "drop_after_commit_rate"),
        ({"list_ignores_filters": "false"}, "list_ignores_filters must be true or false"),
        ({"list_ignores_venue_ids": 1}, "list_ignores_venue_ids must be true or false"),
        ({"faults_on_token_endpoint": "yes"}, "faults_on_token_endpoint must be true or false"),
    ],
)
def test_fault_config_refuses_values_out_of_range(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        FaultConfig(**kwargs)  # type: ignore[arg-type]


def test_fault_config_round_trips_through_json_form() -> None:
    faults = FaultConfig(
        latency=0.1,
        errors={503: 0.1},
        error_rate=0.05,
        error_status=429,
        reject_names={"A"},  # type: ignore[arg-type]
        list_ignores_filters=True,
        list_ignores_venue_ids=True,
    )

    assert FaultConfig.from_dict(faults.to_dict()) == faults
    assert faults.error_shares() == {503: 0.1, 429: 0.05}


def test_the_token_bucket_refills_at_the_rate() -> None:
    now = [100.0]
    injector = FaultInjector(FaultConfig(rate_limit=2, burst=3), clock=lambda: now[0])

    first = [injector.over_rate_limit() for _ in range(4)]
    now[0] += 0.5  # one token back
    second = [injector.over_rate_limit() for _ in range(2)]

    assert first == [None, None, None, 1]
    assert second == [None, 1]


def test_retry_after_is_an_integer_when_whole() -> None:
    assert (format_retry_after(2.0), format_retry_after(0.25)) == ("2", "0.25")
