"""What a person does with the sync states of the bulk load: look at them, and fix rows by hand.

The Opportunity syncs page and the ``opportunity-sync`` command line both call these functions;
they read and change the state only through :class:`~airflow_opportunity_provider.transfers.state.SyncState`,
so every value is bound, never written into SQL. Each change is logged with who made it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from airflow_opportunity_provider.errors import OpportunityConfigurationError
from airflow_opportunity_provider.sync_state.views import (
    LOCAL_STATE_ID,
    CodeCount,
    OutcomeCounts,
    ProblemRow,
    RunRow,
    StateLocation,
    SyncDetail,
    SyncList,
    SyncRow,
    UnreachableState,
)
from airflow_opportunity_provider.transfers.keys import key_digest, partition_of
from airflow_opportunity_provider.transfers.outcomes import UNRESOLVED, Outcome
from airflow_opportunity_provider.transfers.state import (
    LeaseHeldError,
    RunRecord,
    StateRecord,
    SyncState,
    check_sync_name,
    default_state_path,
)

log = logging.getLogger(__name__)

UNRESOLVED_OUTCOMES = (Outcome.UNKNOWN.value, Outcome.IN_FLIGHT.value)
OPEN_REJECT_OUTCOMES = (Outcome.REJECTED.value, Outcome.FAILED.value)
DEFAULT_LIMIT = 200
DEFAULT_RUNS = 50
# The sync name a state is opened under to list every sync: any valid name, never used in a query.
_ANY_SYNC = "~every-sync"


class OperationError(Exception):
    """An operation on a sync state could not be done; the message says why and is safe to show."""


class SyncNotFoundError(OperationError, LookupError):
    """The state holds no sync of that name (or the sync has no such partition)."""


class KeyNotFoundError(OperationError, LookupError):
    """The sync holds no row of that key.

    :param message: which keys.
    :param keys: the keys not found.
    """

    def __init__(self, message: str, keys: Sequence[str]) -> None:
        super().__init__(message)
        self.keys = list(keys)


class StateUnavailableError(OperationError, RuntimeError):
    """A state could not be read or changed; the message names no secret (no driver text)."""


class ChangedSinceConfirmedError(OperationError):
    """The sync holds another number of rows than the person confirmed; nothing was changed.

    :param rows: how many rows it holds now.
    """

    def __init__(self, rows: int) -> None:
        super().__init__(f"the sync now holds {rows} rows; look at it again and confirm that number")
        self.rows = rows


class SyncBusyError(OperationError):
    """A run of the sync holds its lease: forgetting it now would pull the state from under it."""


@dataclass(frozen=True, slots=True)
class ResendResult:
    """What :func:`resend` did.

    :param marked: rows the next run sends again.
    :param unresolved: keys left alone because their create's outcome is unknown (resolve them).
    :param missing: keys the sync does not hold.
    """

    marked: int
    unresolved: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def location_of(state_id: str) -> StateLocation:
    """How a state is named to a person.

    :param state_id: :data:`LOCAL_STATE_ID` or an Airflow connection id.
    """
    if state_id == LOCAL_STATE_ID:
        # Named as the operator's docs name it, not by this process's own paths.
        return StateLocation(
            state_id, "local state file", "the local state file $AIRFLOW_HOME/opportunity_sync/state.db"
        )
    return StateLocation(state_id, state_id, f"the state in connection {state_id}")


def _safe_reason(error: BaseException) -> str:
    """Words about a failure that are safe to show: driver messages may quote a connection URI."""
    from airflow.exceptions import AirflowNotFoundException

    if isinstance(error, OpportunityConfigurationError | AirflowNotFoundException):
        return str(error)
    return f"{type(error).__name__} (the log has the details)"


def _state(state_id: str, sync_name: str, actor: str, *, write: bool) -> SyncState | None:
    """The sync state, not yet open; ``None`` for a local state file that does not exist yet."""
    # Every change is written under a run id that says who made it.
    options: dict[str, Any] = {"sync_name": sync_name, "run_id": f"manual:{actor}"[:64]}
    if state_id != LOCAL_STATE_ID:
        return SyncState.from_conn_id(state_id, **options)
    path = default_state_path()
    if not path.exists():
        return None
    if write:
        return SyncState.local(path, **options)

    def read_only() -> sqlite3.Connection:
        # Read-only, so that looking at a state can never create or change its file.
        return sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30.0)

    return SyncState(read_only, "sqlite", location=f"sqlite file {path}", **options)


@contextmanager
def _opened(state_id: str, sync_name: str, actor: str = "", *, write: bool = False) -> Iterator[SyncState]:
    """The open state of one sync that exists; any failure of the database is a
    :class:`StateUnavailableError`."""
    description = location_of(state_id).description
    try:
        try:
            check_sync_name(sync_name)
        except OpportunityConfigurationError:
            # No sync can have such a name: it is not found, like any other name.
            raise SyncNotFoundError(f"no sync {sync_name!r} in {description}") from None
        state = _state(state_id, sync_name, actor, write=write)
        if state is None:
            raise SyncNotFoundError(f"no sync {sync_name!r} in {description}")
        try:
            if not state.open_existing() or not state.has_sync():
                raise SyncNotFoundError(f"no sync {sync_name!r} in {description}")
            yield state
        finally:
            state.close()
    except OperationError:
        raise
    except Exception as error:
        log.warning("Could not %s %s", "change" if write else "read", description, exc_info=True)
        raise StateUnavailableError(
            f"could not {'change' if write else 'read'} {description}: {_safe_reason(error)}"
        ) from error


def _time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _run_row(run: RunRecord) -> RunRow:
    counts = OutcomeCounts(
        created=run.created,
        updated=run.updated,
        unchanged=run.unchanged,
        rejected=run.rejected,
        unknown=run.unknown,
        failed=run.failed,
        reconciled=run.reconciled,
        adopted=run.adopted,
    )
    return RunRow(
        run_id=run.sync_run_id,
        started_at=_time(run.started_at),
        duration_seconds=run.duration_seconds,
        counts=counts,
        requests=run.requests_sent,
        retries=run.retries,
        rate_limited=run.rate_limited_answers,
        verdict=run.verdict,
        verdict_reason=run.failure_reason,
        partition_index=run.partition_index,
        partition_count=run.partition_count,
        rows_read=run.rows_read,
    )


def _sync_row(
    location: StateLocation,
    sync_name: str,
    partition: int | None,
    counts: dict[str, int],
    last_run: RunRecord | None,
) -> SyncRow:
    return SyncRow(
        location=location,
        sync_name=sync_name,
        partition=partition,
        last_run=None if last_run is None else _run_row(last_run),
        rows_in_state=sum(counts.values()),
        unresolved_unknowns=sum(counts.get(outcome, 0) for outcome in UNRESOLVED_OUTCOMES),
        open_rejects=sum(counts.get(outcome, 0) for outcome in OPEN_REJECT_OUTCOMES),
    )


def _newest(runs: Sequence[RunRecord]) -> RunRecord | None:
    return max(runs, key=lambda run: (run.started_at or "", run.sync_run_id), default=None)


def _list_one(state_id: str) -> list[SyncRow]:
    location = location_of(state_id)
    state = _state(state_id, _ANY_SYNC, "", write=False)
    if state is None:
        return []
    try:
        if not state.open_existing():
            return []
        overviews = state.list_syncs(per_partition=True)
        last_runs = state.last_runs()
    finally:
        state.close()
    rows = []
    for overview in overviews:
        runs = [run for run in last_runs if run.sync_name == overview.sync_name]
        if overview.partition_index is not None:
            runs = [run for run in runs if run.partition_index == overview.partition_index]
        rows.append(
            _sync_row(location, overview.sync_name, overview.partition_index, overview.counts, _newest(runs))
        )
    return rows


def list_syncs(state_ids: Sequence[str]) -> SyncList:
    """Every sync (and each partition of a partitioned one) of every state in ``state_ids``; a
    state that cannot be read is listed as such.

    :param state_ids: :data:`LOCAL_STATE_ID` and the Airflow connection ids to read.
    """
    syncs: list[SyncRow] = []
    unreachable: list[UnreachableState] = []
    for state_id in state_ids:
        try:
            syncs.extend(_list_one(state_id))
        except Exception as error:
            location = location_of(state_id)
            log.warning("Could not read %s", location.description, exc_info=True)
            unreachable.append(UnreachableState(location, _safe_reason(error)))
    return SyncList(syncs, unreachable, runs_complete=True)


def _partition(state: SyncState, partition: int | None, description: str) -> tuple[int, int] | None:
    """The ``(index, count)`` of a partition the sync's runs used, or ``None`` for the whole sync."""
    if partition is None:
        return None
    counts = {count for _, count in state.partitions_used()} or {1}
    partition_count = max(counts)
    if not 0 <= partition < partition_count:
        raise SyncNotFoundError(
            f"sync {state.sync_name!r} in {description} has no partition {partition}: its runs used "
            f"partitions 0 to {partition_count - 1}"
        )
    return partition, partition_count


def _in(partition: tuple[int, int] | None, key: str) -> bool:
    return partition is None or partition_of(key, partition[1]) == partition[0]


def _problem(record: StateRecord, message: str | None) -> ProblemRow:
    return ProblemRow(
        source_key=record.key,
        outcome=str(record.outcome),
        code=record.error_code,
        message=message,
        at=_time(record.outcome_at),
        crm_id=record.crm_id,
    )


def sync_detail(
    state_id: str,
    sync_name: str,
    partition: int | None = None,
    *,
    code: str | None = None,
    limit: int | None = DEFAULT_LIMIT,
    runs: int = DEFAULT_RUNS,
) -> SyncDetail:
    """One sync's runs from the runs table (newest first), its unknowns and its open rejects.

    :param state_id: :data:`LOCAL_STATE_ID` or the Airflow connection id of its state.
    :param sync_name: the sync's name.
    :param partition: one partition of a partitioned sync, or ``None`` for the whole sync.
    :param code: show only the unknowns and rejects with this error code.
    :param limit: the most rows of each list, or ``None`` for all of them.
    :param runs: the most runs.
    :raises SyncNotFoundError: when the state holds no such sync or partition.
    :raises StateUnavailableError: when the state cannot be read.
    """
    location = location_of(state_id)
    with _opened(state_id, sync_name) as state:
        chosen = _partition(state, partition, location.description)
        history = state.runs(limit=runs if chosen is None else runs * chosen[1])
        if chosen is not None:
            history = [run for run in history if run.partition_index == chosen[0]][:runs]
        problems = [
            (record, message)
            for record, message in state.records_with_outcomes(UNRESOLVED_OUTCOMES + OPEN_REJECT_OUTCOMES)
            if _in(chosen, record.key)
        ]
        counts = state.outcome_counts(chosen)
    tally: dict[str | None, int] = {}
    for record, _ in problems:
        tally[record.error_code] = tally.get(record.error_code, 0) + 1
    codes = sorted(
        (CodeCount(name, count) for name, count in tally.items()), key=lambda c: (-c.count, c.code or "")
    )
    shown = [(record, message) for record, message in problems if code is None or record.error_code == code]
    return SyncDetail(
        sync=_sync_row(location, sync_name, partition, counts, history[0] if history else None),
        runs=[_run_row(run) for run in history],
        runs_complete=True,
        unknowns=[_problem(*item) for item in shown if item[0].outcome in UNRESOLVED][:limit],
        rejects=[_problem(*item) for item in shown if item[0].outcome not in UNRESOLVED][:limit],
        codes=codes,
        code=code,
        limit=len(shown) if limit is None else limit,
    )


def _lookup(
    state: SyncState, keys: Sequence[str], partition: tuple[int, int] | None
) -> dict[str, StateRecord]:
    """The records of ``keys`` (of the partition) by key."""
    found = state.lookup([key_digest(key) for key in dict.fromkeys(keys)])
    return {record.key: record for record in found.values() if _in(partition, record.key)}


def _missing(keys: Sequence[str], found: dict[str, StateRecord], sync_name: str) -> KeyNotFoundError:
    missing = [key for key in dict.fromkeys(keys) if key not in found]
    shown = ", ".join(repr(key) for key in missing[:10])
    return KeyNotFoundError(f"sync {sync_name!r} holds no row of the key {shown}", missing)


def resolve(
    state_id: str, sync_name: str, partition: int | None, source_key: str, crm_id: str, *, actor: str
) -> int:
    """Record the CRM id of a row whose create had an unknown outcome, once found in the CRM.

    The next run then sends the row as an update of that record: the stored payload hash is
    dropped too, since nobody knows which payload, if any, the lost create stored.

    :param state_id: :data:`LOCAL_STATE_ID` or the Airflow connection id of its state.
    :param sync_name: the sync's name.
    :param partition: the partition, or ``None`` for the whole sync.
    :param source_key: the row's key text, as the operator encodes it.
    :param crm_id: the id the CRM gave the record.
    :param actor: who asks, for the log.
    :raises KeyNotFoundError: the sync holds no row of that key.
    :returns: how many rows changed: 0 when the row's outcome is not unknown (it is left alone).
    """
    with _opened(state_id, sync_name, actor, write=True) as state:
        chosen = _partition(state, partition, location_of(state_id).description)
        found = _lookup(state, [source_key], chosen)
        record = found.get(source_key)
        if record is None:
            raise _missing([source_key], found, sync_name)
        if record.outcome not in UNRESOLVED:
            return 0
        state.resolve(record.digest, crm_id)
        # Nobody knows which payload, if any, the lost create stored: the next run sends the row.
        state.resend([record.digest])
    log.info(
        "Opportunity syncs: %s resolved key %r of sync %r (%s) as CRM id %s",
        actor,
        source_key,
        sync_name,
        location_of(state_id).description,
        crm_id,
    )
    return 1


def resend(
    state_id: str,
    sync_name: str,
    partition: int | None,
    source_keys: Sequence[str],
    *,
    actor: str,
    strict: bool = False,
) -> ResendResult:
    """Mark rows to be sent again by the next run, changed or not.

    A row whose create has an unknown outcome is never marked: sending it could create the
    record twice (resolve it instead).

    :param state_id: :data:`LOCAL_STATE_ID` or the Airflow connection id of its state.
    :param sync_name: the sync's name.
    :param partition: the partition, or ``None`` for the whole sync.
    :param source_keys: the rows' key texts.
    :param actor: who asks, for the log.
    :param strict: raise :class:`KeyNotFoundError`, changing nothing, when a key is not in the sync.
    """
    with _opened(state_id, sync_name, actor, write=True) as state:
        chosen = _partition(state, partition, location_of(state_id).description)
        found = _lookup(state, source_keys, chosen)
        missing = [key for key in dict.fromkeys(source_keys) if key not in found]
        if missing and strict:
            raise _missing(source_keys, found, sync_name)
        unresolved = [key for key, record in found.items() if record.outcome in UNRESOLVED]
        digests = [record.digest for record in found.values() if record.outcome not in UNRESOLVED]
        marked = state.resend(digests) if digests else 0
    log.info(
        "Opportunity syncs: %s marked %d rows of sync %r (%s) to be sent again",
        actor,
        marked,
        sync_name,
        location_of(state_id).description,
    )
    return ResendResult(marked, unresolved, missing)


def retry_code(state_id: str, sync_name: str, partition: int | None, code: str, *, actor: str) -> int:
    """Mark every row rejected (or failed) with error ``code`` to be sent again by the next run.

    :param state_id: :data:`LOCAL_STATE_ID` or the Airflow connection id of its state.
    :param sync_name: the sync's name.
    :param partition: the partition, or ``None`` for the whole sync.
    :param code: the error code.
    :param actor: who asks, for the log.
    :returns: how many rows were marked.
    """
    with _opened(state_id, sync_name, actor, write=True) as state:
        chosen = _partition(state, partition, location_of(state_id).description)
        digests = [
            record.digest
            for record, _ in state.records_with_outcomes(OPEN_REJECT_OUTCOMES, code=code)
            if _in(chosen, record.key)
        ]
        marked = state.resend(digests) if digests else 0
    log.info(
        "Opportunity syncs: %s marked the %d rejects with code %r of sync %r (%s) to be sent again",
        actor,
        marked,
        code,
        sync_name,
        location_of(state_id).description,
    )
    return marked


def rows_in_state(state_id: str, sync_name: str) -> int:
    """How many state rows :func:`forget` would delete.

    :param state_id: :data:`LOCAL_STATE_ID` or the Airflow connection id of its state.
    :param sync_name: the sync's name.
    """
    with _opened(state_id, sync_name) as state:
        return sum(state.outcome_counts().values())


def forget(
    state_id: str,
    sync_name: str,
    partition: int | None,
    *,
    actor: str,
    expected_rows: int | None = None,
) -> int:
    """Delete a sync's state, rejects, runs and leases: its next run starts from nothing.

    The next run of a v1 sync then creates every row again, duplicating what the CRM holds.

    :param state_id: :data:`LOCAL_STATE_ID` or the Airflow connection id of its state.
    :param sync_name: the sync's name.
    :param partition: must be ``None``: a sync is forgotten whole (its partitions share its keys).
    :param actor: who asks, for the log.
    :param expected_rows: the number of state rows the person confirmed; when the sync holds
        another number, nothing is deleted.
    :returns: how many state rows were deleted.
    :raises SyncNotFoundError: when the state holds no such sync, or a partition is given.
    :raises ChangedSinceConfirmedError: when ``expected_rows`` is not the number it holds.
    :raises SyncBusyError: when a run of the sync holds its lease.
    """
    if partition is not None:
        raise SyncNotFoundError(
            "a sync is forgotten with all of its partitions: leave the partition out to forget it whole"
        )
    with _opened(state_id, sync_name, actor, write=True) as state:
        count = sum(state.outcome_counts().values())
        if expected_rows is not None and count != expected_rows:
            raise ChangedSinceConfirmedError(count)
        try:
            deleted = state.forget()
        except LeaseHeldError as error:
            raise SyncBusyError(str(error)) from None
    log.info(
        "Opportunity syncs: %s forgot sync %r (%s): %d rows deleted",
        actor,
        sync_name,
        location_of(state_id).description,
        deleted,
    )
    return deleted
