"""The shared rate limiter: a burst, then the rate; a pause holds every caller back."""

from __future__ import annotations

import asyncio
import time

import pytest

from airflow_opportunity_provider.transfers.rate_limit import SharedRateLimiter


def _admit(limiter: SharedRateLimiter, count: int, callers: int = 8) -> list[float]:
    """Let ``callers`` workers take ``count`` slots between them; return when each was admitted."""
    admitted: list[float] = []

    async def main() -> None:
        started = time.monotonic()
        remaining = iter(range(count))

        async def worker() -> None:
            for _ in remaining:
                await limiter.acquire()
                admitted.append(time.monotonic() - started)

        await asyncio.gather(*(worker() for _ in range(callers)))

    asyncio.run(main())
    return sorted(admitted)


def test_burst_goes_at_once_then_the_rate_holds() -> None:
    limiter = SharedRateLimiter(rate=200, burst=20)
    admitted = _admit(limiter, 60)
    # 20 minus the 10% reserve go at once; the other 42 at 200/s take about 0.21 s.
    assert sum(1 for moment in admitted if moment < 0.004) == 18
    assert 0.19 <= admitted[-1] <= 0.35


def test_no_rate_admits_everything_immediately() -> None:
    admitted = _admit(SharedRateLimiter(), 100)
    assert admitted[-1] < 0.05


def test_a_pause_holds_back_every_caller() -> None:
    limiter = SharedRateLimiter()

    async def main() -> list[float]:
        started = time.monotonic()
        limiter.pause(0.2)
        moments: list[float] = []

        async def worker() -> None:
            await limiter.acquire()
            moments.append(time.monotonic() - started)

        await asyncio.gather(*(worker() for _ in range(5)))
        return moments

    moments = asyncio.run(main())
    assert min(moments) >= 0.19
    assert limiter.pauses == 1
    assert limiter.paused_seconds == pytest.approx(0.2, abs=0.01)


def test_a_shorter_pause_does_not_cut_a_longer_one() -> None:
    clock = [100.0]
    limiter = SharedRateLimiter(clock=lambda: clock[0])
    limiter.pause(5)
    limiter.pause(1)
    assert limiter.pauses == 1
    assert limiter.paused_seconds == 5


@pytest.mark.parametrize(("rate", "burst"), [(0, None), (-1, None), (10, 0)])
def test_bad_settings_are_refused(rate: float, burst: int | None) -> None:
    with pytest.raises(ValueError, match=r"rate|burst"):
        SharedRateLimiter(rate=rate, burst=burst)
