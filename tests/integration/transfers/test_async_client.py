"""AsyncOpportunityClient against the mock CRM over loopback HTTP: the same retry rule as the hook,
create-once on unknown outcomes, the v2 token's single flight and 401 refresh, Retry-After."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from typing import Any

import pytest

from airflow_opportunity_provider.connection import OpportunitySettings
from airflow_opportunity_provider.errors import (
    OpportunityConnectionError,
    OpportunityInvalidError,
    OpportunityOutcomeUnknownError,
    OpportunityRateLimitedError,
)
from airflow_opportunity_provider.hooks.async_client import AsyncOpportunityClient
from airflow_opportunity_provider.hooks.opportunity import OpportunityHook
from airflow_opportunity_provider.mock_crm import FaultConfig, MockCrmServer
from airflow_opportunity_provider.retries import Backoff
from airflow_opportunity_provider.schemas import CheckedV1Payload

CREATE = {
    "venueId": 107,
    "name": "Async client test",
    "contactId": 918,
    "typeId": 18,
    "stageId": 69,
    "sourceId": 25,
}
FAST = Backoff(initial=0.01, maximum=0.05)


def settings_for(server: MockCrmServer, **changes: Any) -> OpportunitySettings:
    config = server.config
    settings = OpportunitySettings(
        conn_id="async_test",
        v1_base_url=server.base_url,
        v1_api_key=config.api_key,
        v1_api_secret=config.api_secret,
        v2_base_url=server.base_url,
        v2_client_id=config.client_id,
        v2_client_secret=config.client_secret,
        v2_token_url=server.base_url + "/oauth/token",
        read_timeout=5.0,
        max_retries=3,
    )
    return dataclasses.replace(settings, **changes)


class RecordingGate:
    def __init__(self) -> None:
        self.acquired = 0
        self.pauses: list[float] = []

    async def acquire(self) -> None:
        self.acquired += 1

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)


def test_creates_and_updates_on_one_session_sized_to_the_concurrency(mock_crm: MockCrmServer) -> None:
    async def main() -> tuple[int, int, int]:
        async with AsyncOpportunityClient(settings_for(mock_crm), concurrency=5, backoff=FAST) as client:
            assert client.session.connector is not None
            assert client.session.connector.limit == 5
            new_id = await client.add_or_update_opportunity(CREATE)
            same_id = await client.add_or_update_opportunity(
                {"id": new_id, "venueId": 107, "name": "Renamed"}
            )
            return new_id, same_id, client.requests_sent

    new_id, same_id, sent = asyncio.run(main())
    assert new_id == same_id
    assert sent == 2
    assert mock_crm.store.v1_record(new_id)["name"] == "Renamed"  # type: ignore[index]


def test_a_dropped_create_is_an_unknown_outcome_and_never_resent(mock_crm: MockCrmServer) -> None:
    mock_crm.set_faults(FaultConfig(drop_after_commit_rate=1.0))

    async def main() -> None:
        async with AsyncOpportunityClient(settings_for(mock_crm), backoff=FAST) as client:
            await client.add_or_update_opportunity(CREATE)

    with pytest.raises(OpportunityOutcomeUnknownError) as raised:
        asyncio.run(main())
    assert raised.value.payload["name"] == CREATE["name"]
    counters = mock_crm.counters.snapshot()
    assert counters["total_requests"] == 1
    assert counters["v1_creates"] == 1


def test_a_500_on_a_create_is_unknown_but_an_update_is_retried(mock_crm: MockCrmServer) -> None:
    async def main() -> int:
        async with AsyncOpportunityClient(settings_for(mock_crm), backoff=FAST) as client:
            new_id = await client.add_or_update_opportunity(CREATE)
            mock_crm.set_faults(FaultConfig(errors={500: 1.0}))
            with pytest.raises(OpportunityOutcomeUnknownError):
                await client.add_or_update_opportunity(CREATE)
            assert client.requests_sent == 2
            # Updates may be repeated: four attempts (max_retries=3), then the server error.
            with pytest.raises(Exception, match="HTTP 500"):
                await client.add_or_update_opportunity({"id": new_id, "venueId": 107})
            return client.requests_sent

    assert asyncio.run(main()) == 6


def test_retry_after_is_honoured_and_a_429_pauses_the_shared_gate(mock_crm: MockCrmServer) -> None:
    mock_crm.set_faults(FaultConfig(errors={429: 1.0}, retry_after=0.3))
    gate = RecordingGate()

    async def main() -> None:
        settings = settings_for(mock_crm, max_retries=1)
        async with AsyncOpportunityClient(settings, gate=gate, backoff=FAST) as client:
            await client.add_or_update_opportunity(CREATE)

    started = time.monotonic()
    with pytest.raises(OpportunityRateLimitedError):
        asyncio.run(main())
    assert time.monotonic() - started >= 0.3
    assert gate.acquired == 2  # every attempt waits for the gate
    assert len(gate.pauses) == 1
    assert gate.pauses[0] >= 0.3


def test_refused_rows_are_not_retried(mock_crm: MockCrmServer) -> None:
    async def main() -> None:
        async with AsyncOpportunityClient(settings_for(mock_crm), backoff=FAST) as client:
            # Checked as valid on purpose, so that the server is the one to refuse it.
            await client.add_or_update_opportunity(CheckedV1Payload({**CREATE, "closedDate": "2026-13-01"}))

    with pytest.raises(OpportunityInvalidError) as raised:
        asyncio.run(main())
    assert raised.value.code == 24224
    assert mock_crm.counters.snapshot()["total_requests"] == 1


def test_v2_token_is_fetched_once_for_many_concurrent_calls_and_refreshed_once_after_401(
    mock_crm: MockCrmServer,
) -> None:
    async def main() -> None:
        async with AsyncOpportunityClient(settings_for(mock_crm), concurrency=10, backoff=FAST) as client:
            await asyncio.gather(
                *(
                    client.put_opportunity(number, "Pre", {"StageName": "Qualified"})
                    for number in range(1, 21)
                )
            )
            assert mock_crm.counters.snapshot()["token_issued"] == 1
            mock_crm.expire_tokens_now()
            await asyncio.gather(
                *(
                    client.put_opportunity(number, "Post", {"StageName": "Proposal"})
                    for number in range(1, 11)
                )
            )

    asyncio.run(main())
    counters = mock_crm.counters.snapshot()
    assert counters["token_issued"] == 2
    assert counters["v2_puts"] == 30
    assert mock_crm.store.v2_record(7, "Post")["OpportunityStageID"] == 3  # type: ignore[index]  # Proposal


def test_a_closed_port_is_a_connection_error_that_never_reached_the_server() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = OpportunitySettings(
        conn_id="closed",
        v1_base_url=f"http://127.0.0.1:{port}",
        v1_api_key="key",
        v1_api_secret="a-secret-that-must-not-leak",
        max_retries=1,
    )

    async def main() -> None:
        async with AsyncOpportunityClient(settings, backoff=FAST) as client:
            await client.add_or_update_opportunity(CREATE)

    with pytest.raises(OpportunityConnectionError) as raised:
        asyncio.run(main())
    assert raised.value.sent is False
    assert "a-secret-that-must-not-leak" not in str(raised.value)
    assert "a-secret-that-must-not-leak" not in repr(AsyncOpportunityClient(settings))


def test_from_hook_uses_the_hooks_settings_and_backoff(mock_crm: MockCrmServer) -> None:
    hook = OpportunityHook(settings=settings_for(mock_crm), backoff=FAST)
    client = AsyncOpportunityClient.from_hook(hook, concurrency=3)
    assert client.settings is hook.settings
    assert client.backoff is FAST
    assert client.concurrency == 3


def test_answers_that_come_back_together_are_paced_over_the_next_round_trip(mock_crm: MockCrmServer) -> None:
    mock_crm.set_faults(FaultConfig(latency=0.03))
    concurrency = 8

    async def main() -> tuple[list[float], float, int]:
        left: list[float] = []
        async with AsyncOpportunityClient(settings_for(mock_crm), concurrency=concurrency) as client:
            pacer = client.pacer
            assert pacer is not None
            started = time.monotonic()

            async def worker() -> None:
                for _ in range(3):
                    await client.add_or_update_opportunity(CREATE)
                    left.append(time.monotonic() - started)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return sorted(left), pacer.gap, pacer.paced

    answered, gap, paced = asyncio.run(main())
    # The first round trip leaves as a burst; the answers to the next ones come back spread out.
    assert 0.03 / (concurrency * 1.5) <= gap <= 0.06 / (concurrency * 1.5)
    assert paced >= concurrency // 2
    second_round = answered[concurrency : 2 * concurrency]
    assert second_round[-1] - second_round[0] >= 3 * gap
    assert len(answered) == 3 * concurrency
