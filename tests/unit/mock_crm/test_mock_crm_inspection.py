"""The mock's /_mock/* inspection endpoints, its life cycle, keep-alive, and its configuration."""

from __future__ import annotations

import re
import socket
from decimal import Decimal

import pytest
import requests

from airflow_opportunity_provider.mock_crm import FaultConfig, MockCrmConfig, MockCrmServer
from airflow_opportunity_provider.mock_crm.pytest_plugin import post_v1

CREATE = {"venueId": "1", "name": "N", "contactId": "2", "typeId": "3", "sourceId": "4", "stageId": "5"}


def test_opportunities_lists_v1_and_v2_records(mock_crm: MockCrmServer) -> None:
    post_v1(mock_crm, CREATE)
    requests.put(
        mock_crm.base_url + "/api/v2/opportunities/2?opportunityType=Pre",
        data=b'{"AcctPotential": 1.10}',
        headers={"Authorization": f"Bearer {mock_crm.config.static_token}"},
        timeout=5,
    )

    answer = requests.get(mock_crm.base_url + "/_mock/opportunities", timeout=5)
    body = answer.json(parse_float=Decimal)

    (record,) = body["v1"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", record.pop("createdDate"))
    assert record.pop("modifiedDate")
    assert record == {**CREATE, "id": 1000, "externalUrls": []}
    assert len(body["v2"]) == 200  # ids 1..100, a Pre and a Post each
    changed = [record for record in body["v2"] if record["ID"] == 2 and record["Type"] == "Pre"]
    assert changed[0]["AcctPotential"] == Decimal("1.10")
    assert '"AcctPotential":1.10' in answer.text


def test_counters_count_api_requests_but_not_inspection(mock_crm: MockCrmServer) -> None:
    post_v1(mock_crm, CREATE)
    post_v1(mock_crm, {})
    requests.get(mock_crm.base_url + "/_mock/health", timeout=5)

    counts = requests.get(mock_crm.base_url + "/_mock/counters", timeout=5).json()

    assert counts["total_requests"] == 2
    assert counts["by_endpoint"] == {"v1_opportunity": 2}
    assert counts["by_status"] == {"200": 1, "400": 1}
    for name in (
        "v1_creates",
        "v1_updates",
        "v2_puts",
        "token_issued",
        "rejected_by_fault",
        "dropped_after_commit",
    ):
        assert name in counts
    assert counts["v1_creates"] == 1


def test_reset_clears_records_and_counters_and_restores_faults(mock_crm: MockCrmServer) -> None:
    post_v1(mock_crm, CREATE)
    requests.put(
        mock_crm.base_url + "/api/v2/opportunities/3?opportunityType=Post",
        json={"OpportunityName": "changed"},
        headers={"Authorization": f"Bearer {mock_crm.config.static_token}"},
        timeout=5,
    )
    mock_crm.set_faults(FaultConfig(latency=5))

    answer = requests.post(mock_crm.base_url + "/_mock/reset", timeout=5)

    assert answer.status_code == 200
    assert mock_crm.store.v1_records() == []
    record = mock_crm.store.v2_record(3, "Post")
    assert record is not None
    assert record["OpportunityName"] == "Seed opportunity 3"
    assert mock_crm.counters["total_requests"] == 0
    assert mock_crm.faults == FaultConfig()
    assert post_v1(mock_crm, CREATE).json()["id"] == 1000  # ids start again


def test_reset_restores_the_configured_faults() -> None:
    configured = FaultConfig(reject_names=frozenset({"X"}))
    server = MockCrmServer(MockCrmConfig(faults=configured))
    server.set_faults(FaultConfig())

    server.reset()

    assert server.faults == configured


def test_unknown_paths_are_not_found(mock_crm: MockCrmServer) -> None:
    response = requests.get(mock_crm.base_url + "/api/v3/anything", timeout=5)

    assert response.status_code == 404
    assert mock_crm.counters["by_endpoint"] == {"unknown": 1}


def test_connections_are_kept_alive_with_tcp_nodelay(mock_crm: MockCrmServer) -> None:
    with requests.Session() as session:
        first = session.get(mock_crm.base_url + "/_mock/connection", timeout=5).json()
        post_v1(mock_crm, CREATE, session=session)
        second = session.get(mock_crm.base_url + "/_mock/connection", timeout=5).json()

    assert first["tcp_nodelay"] is True
    assert first["peer"] == second["peer"]  # the same client socket served all three requests


def test_start_listens_on_a_free_port_and_stop_frees_it() -> None:
    server = MockCrmServer()
    with server.running() as running:
        port = running.port
        assert running.base_url == f"http://127.0.0.1:{port}"
        assert requests.get(running.base_url + "/_mock/health", timeout=5).json() == {"status": "ok"}
        with pytest.raises(RuntimeError, match="already running"):
            running.start()
    server.stop()  # a second stop is harmless

    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/_mock/health", timeout=2)
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.base_url


def test_start_reports_a_port_in_use() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]

        with pytest.raises(OSError, match="in use"):
            MockCrmServer().start(port=port)


def test_a_stopped_server_starts_again(mock_crm: MockCrmServer) -> None:
    mock_crm.stop()
    mock_crm.start()

    assert requests.get(mock_crm.base_url + "/_mock/health", timeout=5).status_code == 200


def test_config_repr_never_shows_secrets() -> None:
    config = MockCrmConfig(
        api_secret="s3cret-api", client_secret="s3cret-client", static_token="s3cret-token"
    )

    text = repr(config) + repr(MockCrmServer(config))

    assert "s3cret" not in text
    assert "mock-api-key-0001" in text


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"api_secret": ""}, "api_secret"),
        ({"client_id": ""}, "client_id"),
        ({"token_ttl": 0}, "token_ttl"),
        ({"categories": ()}, "categories"),
        ({"v2_seed_ids": [0, 1]}, "v2_seed_ids"),
        ({"first_v1_id": 0}, "first_v1_id"),
        ({"list_page_cap": 0}, "list_page_cap"),
        ({"list_page_cap": 2.5}, "list_page_cap"),
        ({"list_page_cap": True}, "list_page_cap"),
    ],
)
def test_config_refuses_unusable_values(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        MockCrmConfig(**kwargs)  # type: ignore[arg-type]


def test_configured_choices_and_seed_ids_are_served() -> None:
    config = MockCrmConfig(categories=("Alpha",), stages=("One", "Two"), v2_seed_ids=[7], first_v1_id=50)
    with MockCrmServer(config).running() as server:
        headers = {"Authorization": f"Bearer {config.static_token}"}
        url = server.base_url + "/api/v2/opportunities/{}?opportunityType=Pre"
        found = requests.put(
            url.format(7), json={"CategoryName": "Alpha", "StageName": "Two"}, headers=headers
        )
        missing = requests.put(url.format(1), json={}, headers=headers)
        created = post_v1(server, CREATE)

    assert found.json()["OpportunityStageID"] == 2
    assert missing.status_code == 404
    assert created.json()["id"] == 50
