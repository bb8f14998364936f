"""The request pacer of the async client: bursts spread over a round trip, steady loads untouched."""

from __future__ import annotations

import asyncio
import time

import pytest

from airflow_opportunity_provider.connection import OpportunitySettings
from airflow_opportunity_provider.hooks.async_client import AsyncOpportunityClient, RequestPacer


def _leaving_times(pacer: RequestPacer, count: int) -> list[float]:
    """``count`` workers ask the pacer at once; return when each may leave (from the start)."""

    async def main() -> list[float]:
        started = time.monotonic()
        moments: list[float] = []

        async def worker() -> None:
            await pacer.wait()
            moments.append(time.monotonic() - started)

        await asyncio.gather(*(worker() for _ in range(count)))
        return sorted(moments)

    return asyncio.run(main())


def test_nothing_waits_before_the_first_round_trip() -> None:
    pacer = RequestPacer(16)
    assert pacer.gap == 0
    assert _leaving_times(pacer, 16)[-1] < 0.005
    assert pacer.paced == 0


def test_a_burst_is_spread_over_the_round_trip() -> None:
    pacer = RequestPacer(8, headroom=1.0)
    pacer.observe(0.080)  # 80 ms round trips, 8 in flight: one request every 10 ms
    assert pacer.gap == pytest.approx(0.010)
    moments = _leaving_times(pacer, 8)
    assert moments[0] < 0.005
    assert 0.065 <= moments[-1] < 0.2
    # Each request leaves no earlier than its slot, 10 ms after the one before. (The gaps
    # between the moments themselves are not asserted: on a busy machine one request woken
    # late leaves a short gap before the next, which is still on time for its own slot.)
    assert all(moment >= number * 0.010 - 0.001 for number, moment in enumerate(moments))
    assert pacer.paced == 7


def test_the_headroom_lets_requests_leave_faster_than_the_even_spread() -> None:
    pacer = RequestPacer(8)  # the default headroom of 1.5
    pacer.observe(0.120)
    assert pacer.gap == pytest.approx(0.120 / (8 * 1.5))


def test_requests_that_are_far_enough_apart_never_wait() -> None:
    pacer = RequestPacer(4, headroom=1.0)
    pacer.observe(0.040)  # gap 10 ms

    async def main() -> float:
        waited = 0.0
        for _ in range(5):
            await asyncio.sleep(0.015)
            started = time.monotonic()
            await pacer.wait()
            waited += time.monotonic() - started
        return waited

    assert asyncio.run(main()) < 0.004
    assert pacer.paced == 0


def test_the_gap_follows_the_shortest_recent_round_trip() -> None:
    pacer = RequestPacer(2, headroom=1.0, window=3)
    for seconds in (0.010, 0.050, 0.060):
        pacer.observe(seconds)
    assert pacer.gap == pytest.approx(0.005)
    pacer.observe(0.040)  # the 10 ms round trip falls out of the window
    assert pacer.gap == pytest.approx(0.020)
    pacer.observe(0.002)
    assert pacer.gap == pytest.approx(0.001)


def test_the_client_paces_unless_told_not_to_or_alone() -> None:
    settings = OpportunitySettings(
        conn_id="x", v1_base_url="http://127.0.0.1:1", v1_api_key="k", v1_api_secret="s"
    )
    assert AsyncOpportunityClient(settings, concurrency=16).pacer is not None
    assert AsyncOpportunityClient(settings, concurrency=16, pacing=False).pacer is None
    assert AsyncOpportunityClient(settings, concurrency=1).pacer is None
    with pytest.raises(ValueError, match="headroom"):
        RequestPacer(4, headroom=0)
