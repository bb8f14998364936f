"""Progress lines for the task log while a bulk load runs: rows done, rate and time left."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from airflow_opportunity_provider.transfers.summary import RunCounts

log = logging.getLogger(__name__)


class InfoLogger(Protocol):
    """Any logger with ``info``: the standard library's, or the task's own (structlog) logger."""

    def info(self, event: Any, *args: Any, **kwargs: Any) -> Any:
        """Log a message at INFO level."""


def format_duration(seconds: float) -> str:
    """``"2 h 05 min"``, ``"4 min 10 s"`` or ``"12 s"``.

    :param seconds: a duration.
    """
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def progress_line(done: int, total: int | None, elapsed: float) -> str:
    """One progress line: rows done (of how many), the rate so far and the time left.

    :param done: rows whose outcome is known.
    :param total: rows expected in all, when known.
    :param elapsed: seconds since the run started.
    """
    rate = done / elapsed if elapsed > 0 else 0.0
    if total:
        share = min(1.0, done / total)
        left = format_duration((total - done) / rate) if rate > 0 and done < total else "unknown"
        return (
            f"Progress: {done:,} of about {total:,} rows ({share:.0%}), {rate:,.0f} rows/s, about {left} left"
        )
    return f"Progress: {done:,} rows, {rate:,.0f} rows/s"


class ProgressReporter:
    """Logs a progress line every ``interval`` seconds until cancelled.

    :param interval: seconds between lines.
    :param total: rows expected in all (this partition's share when partitioned), when known.
    :param logger: where to log.
    """

    def __init__(
        self, interval: float = 10.0, total: int | None = None, logger: InfoLogger | None = None
    ) -> None:
        self.interval = interval
        self.total = total
        self.log: InfoLogger = logger or log
        self.lines = 0

    async def run(self, counts: RunCounts) -> None:
        """Log until cancelled (the run cancels it when it ends).

        :param counts: the run's live counts.
        """
        if self.interval <= 0:
            return
        while True:
            await asyncio.sleep(self.interval)
            self.lines += 1
            self.log.info("%s", progress_line(counts.done, self.total, counts.elapsed()))
