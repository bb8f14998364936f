"""What a sync run did with its rows, and whether that is good enough for a green task.

The counts are kept while the run goes; :class:`SyncSummary` is what the task logs, records in
the runs table and returns through XCom (counts and timings only: no payload, header or token
ever goes in it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_opportunity_provider.errors import OpportunityError
from airflow_opportunity_provider.transfers.outcomes import Outcome

# The outcomes a run counts (``in_flight`` is only stored). ``failed`` is a transient loss after
# every retry; the row is sent again. Plain strings: the summary's keys go to XCom and logs.
OUTCOMES: tuple[str, ...] = tuple(
    outcome.value
    for outcome in (
        Outcome.CREATED,
        Outcome.UPDATED,
        Outcome.UNCHANGED,
        Outcome.REJECTED,
        Outcome.UNKNOWN,
        Outcome.FAILED,
    )
)
_PROBLEMS = frozenset({Outcome.REJECTED, Outcome.UNKNOWN, Outcome.FAILED})

# How many rejected rows the log and a failure message show, with their reasons.
SHOWN_REJECTS = 10

Threshold = int | float | None


class OpportunitySyncError(OpportunityError):
    """A sync run processed every row, wrote its state, and then failed the task.

    :param message: why the task failed, followed by the run's summary.
    :param summary: the run's summary dict (as returned through XCom on success).
    """

    def __init__(self, message: str, summary: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.summary = dict(summary)


@dataclass
class RunCounts:
    """Counts of one run, updated from the event loop only (so without locks)."""

    started: float = field(default_factory=time.monotonic)
    rows_read: int = 0
    rows: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    shown_rejects: list[tuple[str, str, str]] = field(default_factory=list)
    finished: float | None = None

    def add(self, outcome: str, source_key: str = "", code: str = "", message: str = "") -> None:
        """Count one row's outcome; keep the first few problems for the log.

        :param outcome: one of :data:`OUTCOMES`.
        :param source_key: the row's key, for the log.
        :param code: the error code of a rejected, unknown or failed row.
        :param message: its reason.
        """
        self.outcomes[outcome] += 1
        if outcome in _PROBLEMS and len(self.shown_rejects) < SHOWN_REJECTS:
            self.shown_rejects.append((_brief(source_key, 120), f"{outcome} {code}".strip(), _brief(message)))

    def unshow(self, source_key: str) -> None:
        """Drop a row's shown problems: its problem was settled later in the run.

        :param source_key: the row's key, as :meth:`add` was given it.
        """
        shown = _brief(source_key, 120)
        self.shown_rejects = [problem for problem in self.shown_rejects if problem[0] != shown]

    @property
    def done(self) -> int:
        """Rows of this partition whose outcome is known."""
        return sum(self.outcomes.values())

    def elapsed(self) -> float:
        """Seconds since the run started (until it finished, once it has)."""
        return (self.finished or time.monotonic()) - self.started


def _brief(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def exceeds(count: int, limit: Threshold, total: int) -> bool:
    """Whether ``count`` rows break a threshold given as a count (int) or a share of ``total`` (float).

    :param count: how many rows had the outcome.
    :param limit: the most allowed: an int count, a float share of ``total``, or ``None`` for no limit.
    :param total: the rows the share is taken of.
    """
    if limit is None:
        return False
    if isinstance(limit, float):
        return count > limit * total
    return count > limit


def verdict(summary: Mapping[str, Any], max_rejected: Threshold, max_unknown: Threshold) -> str | None:
    """The reason the task must fail, or ``None`` when the run may be green.

    Rules, in order: a run where no row loaded is never green; rows lost to transient errors
    fail the task so that an Airflow retry sends them again (nothing else is resent); then
    the ``max_rejected`` and ``max_unknown`` thresholds.

    :param summary: the run's summary dict.
    :param max_rejected: the most rejected rows allowed (count or share of the rows).
    :param max_unknown: the most outcome-unknown rows allowed (count or share of the rows).
    """
    rows = int(summary["rows"])
    loaded = (
        summary[Outcome.CREATED]
        + summary[Outcome.UPDATED]
        + summary[Outcome.UNCHANGED]
        + summary.get("reconciled", 0)
    )
    rejected, unknown, failed = summary[Outcome.REJECTED], summary[Outcome.UNKNOWN], summary[Outcome.FAILED]
    if rows and not loaded:
        return f"none of the {rows} rows loaded (rejected {rejected}, unknown {unknown}, failed {failed})"
    if failed:
        return (
            f"{failed} rows were lost to transient errors after every retry; a retry of the task "
            "sends only those rows"
        )
    if exceeds(rejected, max_rejected, rows):
        return f"{rejected} of {rows} rows were rejected, more than max_rejected={max_rejected!r} allows"
    if exceeds(unknown, max_unknown, rows):
        return (
            f"{unknown} of {rows} rows have an unknown outcome (a create that may or may not be "
            f"stored), more than max_unknown={max_unknown!r} allows; check the CRM for them and "
            "record their ids (opportunity-sync resolve), or set on_unknown='resend'"
        )
    return None


@dataclass
class SyncSummary:
    """What one run of a sync partition did: counts, requests, timings and the verdict.

    ``unknown`` counts every unresolved create of the sync partition in the state at the end of
    the run, whether or not the query returned its row this time.
    """

    sync_name: str
    sync_run_id: str
    target: str
    dry_run: bool = False
    partition_index: int = 0
    partition_count: int = 1
    rows_read: int = 0
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    unknown: int = 0
    failed: int = 0
    reconciled: int = 0
    adopted: int = 0
    missing: int = 0
    requests_sent: int = 0
    retries: int = 0
    rate_limited_answers: int = 0
    rate_limit_pauses: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    duration_seconds: float = 0.0
    load_seconds: float | None = None
    rows_per_second: float = 0.0
    requests_per_second: float = 0.0
    state: str = ""
    state_table: str = ""
    rejects_table: str = ""
    unknown_from_interrupted_runs: int = 0
    first_problems: list[list[str]] = field(default_factory=list)
    stopped_early: str | None = None
    max_rejected: Threshold = 0
    max_unknown: Threshold = 0
    failure_reason: str | None = None

    def __post_init__(self) -> None:
        if self.failure_reason is None:
            self.failure_reason = self.stopped_early or verdict(
                self.as_xcom(), self.max_rejected, self.max_unknown
            )

    @property
    def verdict(self) -> str:
        """``"dry_run"``, ``"success"`` or ``"failed"``."""
        if self.dry_run:
            return "dry_run"
        return "failed" if self.failure_reason else "success"

    def as_xcom(self) -> dict[str, Any]:
        """The summary as plain JSON values, as XCom and the runs table keep it."""
        return asdict(self)

    def __str__(self) -> str:
        return format_summary(self.as_xcom())


def format_summary(summary: Mapping[str, Any]) -> str:
    """One readable paragraph of a summary, for the task log and failure messages.

    :param summary: the run's summary dict.
    """
    verb = "would be " if summary.get("dry_run") else ""
    counts = ", ".join(f"{verb}{name} {summary[name]}" for name in OUTCOMES)
    partition = ""
    if summary.get("partition_count", 1) > 1:
        partition = f" (partition {summary['partition_index']} of {summary['partition_count']})"
    extra = "".join(
        f", {name} {summary[name]}" for name in ("reconciled", "adopted", "missing") if summary.get(name)
    )
    lines = [
        f"Sync {summary['sync_name']!r}{partition}, target {summary['target']}: "
        f"{summary['rows']} rows: {counts}{extra}.",
        f"{summary['requests_sent']} requests sent ({summary['retries']} retries, "
        f"{summary['rate_limited_answers']} answered 429) in {summary['duration_seconds']:.1f} s: "
        f"{summary['rows_per_second']:.0f} rows/s.",
    ]
    shown = summary.get("first_problems") or []
    if shown:
        lines.append("First problems (source key: outcome code: reason):")
        lines.extend(f"  - {key}: {code}: {reason}" for key, code, reason in shown)
    if summary.get("rejects_table") and (
        summary[Outcome.REJECTED] or summary[Outcome.UNKNOWN] or summary[Outcome.FAILED]
    ):
        lines.append(
            f"Every problem row is in {summary['rejects_table']} with sync_run_id {summary['sync_run_id']!r}."
        )
    return "\n".join(lines)
