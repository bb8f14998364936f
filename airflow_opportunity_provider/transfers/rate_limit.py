"""One request-rate limiter shared by every worker of a bulk load, and paused by any 429.

It is a token bucket (``rate`` tokens a second, at most ``burst`` saved up) kept as a virtual
schedule, so each caller reserves its own slot and sleeps once: no thundering herd.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

# The share of the burst kept in reserve: requests reach the server a little unevenly, and a
# client that used the whole burst would find the server's own bucket empty now and then.
BURST_RESERVE = 0.1


class SharedRateLimiter:
    """Admit at most ``rate`` requests a second (``burst`` at once) across all workers.

    Without a ``rate`` it admits everything, but :meth:`pause` still holds every worker back:
    a 429 answered to one worker slows them all.

    :param rate: requests per second, or ``None`` for no client-side limit.
    :param burst: how many requests may go at once after a quiet spell (default: ``rate``,
        at least 1).
    :param clock: a monotonic clock (replaceable in tests).
    """

    def __init__(
        self,
        rate: float | None = None,
        burst: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be above 0 requests per second (or None for no limit)")
        if burst is not None and burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.burst = burst if burst is not None else max(1, math.floor(rate or 1))
        self._clock = clock
        self._interval = 1.0 / rate if rate else 0.0
        usable = max(1, self.burst - math.ceil(self.burst * BURST_RESERVE)) if self.burst > 1 else 1
        # How far ahead of "now" the schedule may run: the saved-up part of the bucket.
        self._tolerance = (usable - 1) * self._interval
        self._next_slot = clock()
        self._paused_until = 0.0
        self.pauses = 0
        self.paused_seconds = 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rate={self.rate}, burst={self.burst})"

    def _reserve(self, now: float) -> float:
        """Take the next slot and return how long to wait for it (``0`` when it is now)."""
        if not self._interval:
            return 0.0
        slot = max(self._next_slot, now)
        self._next_slot = slot + self._interval
        return max(0.0, slot - self._tolerance - now)

    async def acquire(self) -> None:
        """Wait until one more request may be sent."""
        while True:
            now = self._clock()
            if now < self._paused_until:
                await asyncio.sleep(self._paused_until - now)
                continue
            wait = self._reserve(now)
            if wait <= 0:
                return
            await asyncio.sleep(wait)
            # A pause that began while this caller slept holds it back too.
            if self._clock() >= self._paused_until:
                return

    def pause(self, seconds: float) -> None:
        """Hold every caller back for ``seconds``; a longer pause already running is kept.

        :param seconds: how long the server asked everyone to wait (``Retry-After``).
        """
        if seconds <= 0:
            return
        now = self._clock()
        until = now + seconds
        if until > self._paused_until:
            self.paused_seconds += until - max(now, self._paused_until)
            self.pauses += 1
            self._paused_until = until
        # After the pause the schedule starts again from empty: no burst into a busy server.
        self._next_slot = max(self._next_slot, until + self._tolerance)
