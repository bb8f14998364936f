"""The v1 list and the reference lookup, on both clients, over real loopback against the mock CRM.

Each case also runs with the mock ignoring the list's filter (and its venues), as a server that
does not support a parameter would: the answers must stay right, only the pages read grow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_opportunity_provider.errors import OpportunityAmbiguousMatchError
from airflow_opportunity_provider.hooks.async_client import AsyncOpportunityClient
from airflow_opportunity_provider.hooks.opportunity import OpportunityHook
from airflow_opportunity_provider.mock_crm import FaultConfig, MockCrmConfig, MockCrmServer
from airflow_opportunity_provider.references import reference_for
from airflow_opportunity_provider.retries import Backoff

PAGE_CAP = 7
FAST = Backoff(initial=0.01, maximum=0.05)


@pytest.fixture
def mock_crm_config() -> MockCrmConfig:
    # A small server cap on perPage, so that every listing here takes several pages.
    return MockCrmConfig(list_page_cap=PAGE_CAP)


@pytest.fixture(params=["honours-filters", "ignores-filters"])
def server(request: pytest.FixtureRequest, mock_crm: MockCrmServer) -> MockCrmServer:
    ignores = request.param == "ignores-filters"
    mock_crm.set_faults(FaultConfig(list_ignores_filters=ignores, list_ignores_venue_ids=ignores))
    return mock_crm


@pytest.fixture
def hook(opportunity_conn: str) -> Iterator[OpportunityHook]:
    hook = OpportunityHook(backoff=FAST)
    yield hook
    hook.close()


def _records(venue: int, count: int, name: str = "Lead", **extra: Any) -> list[dict[str, Any]]:
    return [{"venueId": venue, "name": f"{name} {number}", **extra} for number in range(count)]


def _async_list(hook: OpportunityHook, venue_ids: list[int], per_page: int) -> list[dict[str, Any]]:
    async def main() -> list[dict[str, Any]]:
        async with AsyncOpportunityClient.from_hook(hook) as client:
            return [record async for record in client.list_opportunities(venue_ids, per_page=per_page)]

    return asyncio.run(main())


def _async_find(hook: OpportunityHook, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
    async def main() -> dict[str, Any] | None:
        async with AsyncOpportunityClient.from_hook(hook) as client:
            return await client.find_by_reference(*args, **kwargs)

    return asyncio.run(main())


def test_every_page_is_read_once_whatever_the_servers_cap(
    hook: OpportunityHook, server: MockCrmServer
) -> None:
    ids = server.seed_v1_records(_records(107, 50))
    server.seed_v1_records(_records(108, 5, name="Other"))
    before = server.counters.snapshot()["v1_lists"]

    listed = list(hook.list_opportunities([107], per_page=100))

    in_venue = [record for record in listed if record["venueId"] == 107]
    assert sorted(record["id"] for record in in_venue) == sorted(ids)
    assert len({record["id"] for record in listed}) == len(listed)  # no record twice
    pages = server.counters.snapshot()["v1_lists"] - before
    assert pages == -(-len(listed) // PAGE_CAP)  # ceil: the cap, not the 100 asked for, sets the step
    assert sorted(record["id"] for record in _async_list(hook, [107], 3)) == sorted(
        record["id"] for record in listed
    )


def test_an_empty_venue_is_one_request(hook: OpportunityHook, server: MockCrmServer) -> None:
    before = server.counters.snapshot()["v1_lists"]
    assert list(hook.list_opportunities([999])) == [] or server.faults.list_ignores_venue_ids
    assert server.counters.snapshot()["v1_lists"] - before == 1


def test_find_by_reference_finds_the_one_record_among_look_alikes(
    hook: OpportunityHook, server: MockCrmServer
) -> None:
    mine = reference_for("a.sync", "WH-7")
    server.seed_v1_records(_records(107, 20, externalUrls=[{"ref": "someone-else"}]))
    (wanted,) = server.seed_v1_records(
        [{"venueId": 107, "name": "Lead 3", "externalUrls": [{"ref": "erp:1"}, {"ref": mine, "label": "x"}]}]
    )
    # Same name, another reference: not it.
    server.seed_v1_records(
        [{"venueId": 107, "name": "Lead 3", "externalUrls": [{"ref": reference_for("a.sync", "WH-8")}]}]
    )

    for find in (hook.find_by_reference, lambda *a, **k: _async_find(hook, *a, **k)):
        found = find(mine, 107, name="Lead 3")
        assert found is not None
        assert found["id"] == wanted
        assert find(reference_for("a.sync", "WH-9"), 107, name="Lead 3") is None
        assert find(mine, 107) is not None  # without a name too


def test_a_reference_held_twice_is_an_error_naming_both_ids(
    hook: OpportunityHook, server: MockCrmServer
) -> None:
    mine = reference_for("a.sync", "WH-1")
    ids = server.seed_v1_records(_records(107, 2, name="Twin", externalUrls=[{"ref": mine}]))
    for find in (hook.find_by_reference, lambda *a, **k: _async_find(hook, *a, **k)):
        with pytest.raises(OpportunityAmbiguousMatchError) as refused:
            find(mine, 107)
        assert refused.value.ids == sorted(ids)
        assert all(str(record_id) in str(refused.value) for record_id in ids)


def test_created_after_narrows_without_losing_a_record_created_just_before(
    hook: OpportunityHook, server: MockCrmServer
) -> None:
    mine = reference_for("a.sync", "WH-2")
    server.seed_v1_records([{"venueId": 107, "name": "Old", "createdDate": "2019-04-12 09:00:35 UTC"}] * 3)
    (wanted,) = server.seed_v1_records([{"venueId": 107, "name": "New", "externalUrls": [{"ref": mine}]}])
    # A clock a few minutes ahead of the CRM's still finds it: the window has a day of slack.
    found = hook.find_by_reference(mine, 107, created_after=time.time() + 600)
    assert found is not None
    assert found["id"] == wanted
