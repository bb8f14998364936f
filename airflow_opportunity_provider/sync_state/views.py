"""What the operations on sync states return, as plain values: one dataclass per thing shown.

The Opportunity syncs page and the ``opportunity-sync`` command line render only from these, so
the way the state is stored can change without touching either.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime

# The id under which the pages name the local SQLite state, $AIRFLOW_HOME/opportunity_sync/state.db.
# "~" cannot appear in an Airflow connection id, so no connection can be mistaken for it.
LOCAL_STATE_ID = "~local"

# Every per-row outcome a run can report, in the order the pages show them.
OUTCOME_NAMES = (
    "created",
    "updated",
    "unchanged",
    "rejected",
    "unknown",
    "failed",
    "reconciled",
    "adopted",
)


@dataclass(frozen=True, slots=True)
class OutcomeCounts:
    """How many rows had each outcome.

    :param created: rows created in the CRM.
    :param updated: rows sent as updates of a record the CRM holds.
    :param unchanged: rows not sent because nothing changed.
    :param rejected: rows the CRM or the validation refused.
    :param unknown: creates whose outcome cannot be known.
    :param failed: rows lost to transient errors after every retry.
    :param reconciled: unknown outcomes settled by looking the record up in the CRM.
    :param adopted: rows matched to a record the CRM already held.
    """

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    unknown: int = 0
    failed: int = 0
    reconciled: int = 0
    adopted: int = 0

    def items(self) -> list[tuple[str, int]]:
        """``(outcome, count)`` pairs in :data:`OUTCOME_NAMES` order."""
        return [(name, int(getattr(self, name))) for name in OUTCOME_NAMES]

    @property
    def total(self) -> int:
        """All rows counted."""
        return sum(int(getattr(self, item.name)) for item in fields(self))


@dataclass(frozen=True, slots=True)
class StateLocation:
    """One place the page reads sync states from.

    :param state_id: :data:`LOCAL_STATE_ID` or the Airflow connection id; what URLs carry.
    :param label: how the page names it, briefly (never a password or a connection URI).
    :param description: where it is, in a few more words (the local file's path).
    """

    state_id: str
    label: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class RunRow:
    """One run of a sync.

    :param run_id: the sync run id.
    :param started_at: when it started (UTC), when known.
    :param duration_seconds: how long it took, when known.
    :param counts: rows per outcome.
    :param requests: requests sent to the CRM, when recorded.
    :param retries: retried requests, when recorded.
    :param rate_limited: answers that were 429, when recorded.
    :param verdict: ``"passed"`` or ``"failed"``, when recorded.
    :param verdict_reason: why a failed run failed.
    :param partition_index: the partition the run loaded.
    :param partition_count: how many partitions the sync was spread over.
    :param rows_read: rows the query returned.
    """

    run_id: str
    started_at: datetime | None
    duration_seconds: float | None
    counts: OutcomeCounts
    requests: int | None = None
    retries: int | None = None
    rate_limited: int | None = None
    verdict: str | None = None
    verdict_reason: str | None = None
    partition_index: int = 0
    partition_count: int = 1
    rows_read: int | None = None


@dataclass(frozen=True, slots=True)
class SyncRow:
    """One sync (or one partition of it) in one state, as the syncs list shows it.

    :param location: the state it lives in.
    :param sync_name: the sync's name.
    :param partition: the partition index, or ``None`` for the whole sync.
    :param last_run: its latest run, or ``None`` when no run is recorded.
    :param rows_in_state: source keys the state holds for it.
    :param unresolved_unknowns: rows whose create has an unknown outcome (or is in flight).
    :param open_rejects: rows whose last outcome is rejected or failed.
    """

    location: StateLocation
    sync_name: str
    partition: int | None
    last_run: RunRow | None
    rows_in_state: int
    unresolved_unknowns: int
    open_rejects: int


@dataclass(frozen=True, slots=True)
class ProblemRow:
    """A row that needs a look: an unknown outcome or an open reject.

    :param source_key: the row's key in the source.
    :param outcome: its last outcome (``unknown``, ``in_flight``, ``rejected`` or ``failed``).
    :param code: the platform's error code, or this package's reason code.
    :param message: the reason.
    :param at: when the outcome was recorded (UTC).
    :param crm_id: the CRM id the state holds for it, if any.
    """

    source_key: str
    outcome: str
    code: str | None
    message: str | None
    at: datetime | None
    crm_id: str | None = None


@dataclass(frozen=True, slots=True)
class CodeCount:
    """How many open problems carry one error code.

    :param code: the code (``None`` for rows recorded without one).
    :param count: how many rows.
    """

    code: str | None
    count: int


@dataclass(frozen=True, slots=True)
class SyncDetail:
    """Everything the page of one sync shows.

    :param sync: the sync's line of the syncs list.
    :param runs: its runs, newest first.
    :param runs_complete: ``False`` when the runs are pieced together from the state and
        rejects tables (counts of the rows each run was the last to write; no requests,
        retries or 429s), ``True`` when a runs table recorded them.
    :param unknowns: rows with an unknown outcome, newest first, at most ``limit`` of them.
    :param rejects: rows whose last outcome is rejected or failed, newest first, at most ``limit``.
    :param codes: the error codes of the open problems, with counts, for the filter.
    :param code: the code the lists are filtered by, or ``None``.
    :param limit: the most rows each list holds.
    """

    sync: SyncRow
    runs: list[RunRow]
    runs_complete: bool
    unknowns: list[ProblemRow]
    rejects: list[ProblemRow]
    codes: list[CodeCount] = field(default_factory=list)
    code: str | None = None
    limit: int = 200


@dataclass(frozen=True, slots=True)
class UnreachableState:
    """A configured state the page could not read.

    :param location: the state.
    :param reason: why, in words safe to show (an exception's type, or a message of this package
        or of Airflow that names no secret).
    """

    location: StateLocation
    reason: str


@dataclass(frozen=True, slots=True)
class SyncList:
    """The syncs list: every sync of every state that could be read, and the states that could not.

    :param syncs: the syncs, by state then name.
    :param unreachable: the states that could not be read.
    :param runs_complete: as :attr:`SyncDetail.runs_complete`, for the last runs listed.
    """

    syncs: list[SyncRow]
    unreachable: list[UnreachableState] = field(default_factory=list)
    runs_complete: bool = False
