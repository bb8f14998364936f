"""The Opportunity syncs pages' one way into the sync states: read them into view models, change them.

Implemented over the state and rejects tables of :mod:`airflow_opportunity_provider.transfers.state`;
every SQL statement binds its values. Swap this module to read another layout of the state.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow_opportunity_provider.errors import OpportunityConfigurationError
from airflow_opportunity_provider.plugins.views import (
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
from airflow_opportunity_provider.transfers.state import (
    DEFAULT_STATE_TABLE,
    IN_FLIGHT,
    REJECTS_SUFFIX,
    default_state_path,
)

log = logging.getLogger(__name__)

_UNRESOLVED = ("unknown", IN_FLIGHT)
_OPEN_REJECTS = ("rejected", "failed")
# Outcomes whose per-run counts the state table holds (the rows each run was the last to write);
# the rejects table holds every rejected, unknown and failed row of every run.
_COUNTED_FROM_STATE = ("created", "updated")
_COUNTED_FROM_REJECTS = ("rejected", "unknown", "failed")
DEFAULT_LIMIT = 200


class SyncNotFoundError(LookupError):
    """The state holds no sync of that name (or does not record that partition)."""


class StateUnavailableError(RuntimeError):
    """A state could not be read or changed; the message is safe to show (no driver text)."""


class ChangedSinceConfirmedError(RuntimeError):
    """The sync holds another number of rows than the person confirmed; nothing was changed.

    :param rows: how many rows it holds now.
    """

    def __init__(self, rows: int) -> None:
        super().__init__(f"the sync now holds {rows} rows; look at the page again and confirm that number")
        self.rows = rows


@dataclass(slots=True)
class _Database:
    connection: Any
    placeholder: str
    table: str = DEFAULT_STATE_TABLE
    rejects_table: str = DEFAULT_STATE_TABLE + REJECTS_SUFFIX

    def markers(self, count: int) -> str:
        return ", ".join([self.placeholder] * count)

    def rows(self, query: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        cursor = self.connection.cursor()
        try:
            cursor.execute(query, list(parameters))
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()

    def has_table(self, table: str) -> bool:
        """Whether ``table`` exists; any other failure (an unreadable database) is raised."""
        if isinstance(self.connection, sqlite3.Connection):
            name = table.rsplit(".", 1)[-1]
            return bool(self.rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [name]))
        if type(self.connection).__module__.split(".")[0] in ("psycopg", "psycopg2"):
            return bool(self.rows(f"SELECT to_regclass({self.placeholder}) IS NOT NULL", [table])[0][0])
        # Any other database: a query of the table tells, but cannot tell why it failed.
        cursor = self.connection.cursor()
        try:
            cursor.execute(f"SELECT 1 FROM {table} WHERE 1 = 0")
            cursor.fetchall()
            return True
        except Exception:
            self.connection.rollback()
            return False
        finally:
            cursor.close()


def location_of(state_id: str) -> StateLocation:
    """How the pages name a state.

    :param state_id: :data:`LOCAL_STATE_ID` or an Airflow connection id.
    """
    if state_id == LOCAL_STATE_ID:
        # Named as the operator's docs name it, not by the API server's own paths.
        return StateLocation(
            state_id, "local state file", "the local state file $AIRFLOW_HOME/opportunity_sync/state.db"
        )
    return StateLocation(state_id, state_id, f"the state in connection {state_id}")


@contextmanager
def _open(state_id: str, *, write: bool) -> Iterator[_Database | None]:
    """The state's database, or ``None`` for a local state file that does not exist yet."""
    if state_id == LOCAL_STATE_ID:
        path = default_state_path()
        if not path.exists():
            yield None
            return
        if write:
            connection: Any = sqlite3.connect(str(path), timeout=30.0)
        else:
            # Read-only, so that looking at the page can never create or change the file.
            connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30.0)
        placeholder = "?"
    else:
        from airflow_opportunity_provider.transfers.source import get_db_hook

        hook = get_db_hook(state_id, purpose="[opportunity_crm] state_conn_ids")
        connection = hook.get_conn()
        placeholder = hook.placeholder
    try:
        yield _Database(connection, placeholder)
        if write:
            connection.commit()
        else:
            # End the read transaction, so that PostgreSQL does not hold a snapshot open.
            connection.rollback()
    except BaseException:
        connection.rollback()
        raise
    finally:
        connection.close()


@contextmanager
def _opened(state_id: str, *, write: bool) -> Iterator[_Database | None]:
    """:func:`_open`, with any failure of the database turned into a :class:`StateUnavailableError`."""
    try:
        with _open(state_id, write=write) as db:
            yield db
    except (SyncNotFoundError, ChangedSinceConfirmedError):
        raise
    except Exception as error:
        description = location_of(state_id).description
        log.warning("Could not %s %s", "change" if write else "read", description, exc_info=True)
        raise StateUnavailableError(f"could not read {description}: {_safe_reason(error)}") from error


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _safe_reason(error: BaseException) -> str:
    """Words about a failure that are safe to show: driver messages may quote a connection URI."""
    from airflow.exceptions import AirflowNotFoundException

    if isinstance(error, OpportunityConfigurationError | AirflowNotFoundException):
        return str(error)
    return f"{type(error).__name__} (the API server log has the details)"


# -- reading ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _RunTally:
    counts: dict[str, int]
    first: datetime | None = None
    last: datetime | None = None

    def seen(self, first: datetime | None, last: datetime | None) -> None:
        if first is not None and (self.first is None or first < self.first):
            self.first = first
        if last is not None and (self.last is None or last > self.last):
            self.last = last

    def row(self, run_id: str) -> RunRow:
        duration = (self.last - self.first).total_seconds() if self.first and self.last else None
        return RunRow(
            run_id=run_id,
            started_at=self.first,
            duration_seconds=duration,
            counts=OutcomeCounts(**self.counts),
        )


def _runs_by_sync(db: _Database, sync_name: str | None) -> dict[str, list[RunRow]]:
    """Each sync's runs, newest first, pieced together from the state and rejects tables."""
    where, parameters = (
        ("", []) if sync_name is None else (f" WHERE sync_name = {db.placeholder}", [sync_name])
    )
    tallies: dict[str, dict[str, _RunTally]] = defaultdict(dict)

    def tally(name: str, run_id: str) -> _RunTally:
        runs = tallies[name]
        if run_id not in runs:
            runs[run_id] = _RunTally(counts={})
        return runs[run_id]

    state_rows = db.rows(
        f"SELECT sync_name, run_id, outcome, COUNT(*), MIN(outcome_at), MAX(outcome_at) FROM {db.table}"
        f"{where} GROUP BY sync_name, run_id, outcome",
        parameters,
    )
    for name, run_id, outcome, count, first, last in state_rows:
        if not run_id:
            continue
        run = tally(name, str(run_id))
        run.seen(_time(first), _time(last))
        if outcome in _COUNTED_FROM_STATE:
            run.counts[outcome] = run.counts.get(outcome, 0) + int(count)
    if db.has_table(db.rejects_table):
        reject_rows = db.rows(
            f"SELECT sync_name, sync_run_id, outcome, COUNT(*), MIN(recorded_at), MAX(recorded_at) "
            f"FROM {db.rejects_table}{where} GROUP BY sync_name, sync_run_id, outcome",
            parameters,
        )
        for name, run_id, outcome, count, first, last in reject_rows:
            run = tally(name, str(run_id))
            run.seen(_time(first), _time(last))
            if outcome in _COUNTED_FROM_REJECTS:
                run.counts[outcome] = run.counts.get(outcome, 0) + int(count)
    oldest = datetime.min.replace(tzinfo=UTC)
    return {
        name: sorted(
            (tally.row(run_id) for run_id, tally in runs.items()),
            key=lambda run: (run.started_at or oldest, run.run_id),
            reverse=True,
        )
        for name, runs in tallies.items()
    }


def _sync_rows(db: _Database, location: StateLocation, sync_name: str | None) -> list[SyncRow]:
    where, parameters = (
        ("", []) if sync_name is None else (f" WHERE sync_name = {db.placeholder}", [sync_name])
    )
    per_outcome: dict[str, dict[str, int]] = defaultdict(dict)
    for name, outcome, count in db.rows(
        f"SELECT sync_name, outcome, COUNT(*) FROM {db.table}{where} GROUP BY sync_name, outcome", parameters
    ):
        per_outcome[name][outcome] = int(count)
    runs = _runs_by_sync(db, sync_name)
    rows = []
    for name in sorted(set(per_outcome) | set(runs)):
        outcomes = per_outcome.get(name, {})
        history = runs.get(name, [])
        rows.append(
            SyncRow(
                location=location,
                sync_name=name,
                partition=None,
                last_run=history[0] if history else None,
                rows_in_state=sum(outcomes.values()),
                unresolved_unknowns=sum(outcomes.get(outcome, 0) for outcome in _UNRESOLVED),
                open_rejects=sum(outcomes.get(outcome, 0) for outcome in _OPEN_REJECTS),
            )
        )
    return rows


def list_syncs(state_ids: Sequence[str]) -> SyncList:
    """Every sync of every state in ``state_ids``; a state that cannot be read is listed as such.

    :param state_ids: :data:`LOCAL_STATE_ID` and the Airflow connection ids to read.
    """
    syncs: list[SyncRow] = []
    unreachable: list[UnreachableState] = []
    for state_id in state_ids:
        location = location_of(state_id)
        try:
            with _open(state_id, write=False) as db:
                if db is not None and db.has_table(db.table):
                    syncs.extend(_sync_rows(db, location, None))
        except Exception as error:
            log.warning("Could not read %s", location.description, exc_info=True)
            unreachable.append(UnreachableState(location, _safe_reason(error)))
    return SyncList(syncs, unreachable, runs_complete=False)


def _problems(
    db: _Database, sync_name: str, outcomes: Sequence[str], code: str | None, limit: int
) -> list[ProblemRow]:
    p = db.placeholder
    query = (
        f"SELECT source_key, outcome, error_code, error_message, outcome_at, crm_id FROM {db.table} "
        f"WHERE sync_name = {p} AND outcome IN ({db.markers(len(outcomes))})"
    )
    parameters: list[Any] = [sync_name, *outcomes]
    if code is not None:
        query += f" AND error_code = {p}"
        parameters.append(code)
    cursor = db.connection.cursor()
    try:
        cursor.execute(query + " ORDER BY outcome_at DESC, source_key", parameters)
        found = cursor.fetchmany(limit)
    finally:
        cursor.close()
    return [
        ProblemRow(
            source_key=str(key),
            outcome=str(outcome),
            code=None if error_code is None else str(error_code),
            message=None if message is None else str(message),
            at=_time(at),
            crm_id=None if crm_id is None else str(crm_id),
        )
        for key, outcome, error_code, message, at, crm_id in found
    ]


def sync_detail(
    state_id: str,
    sync_name: str,
    partition: int | None = None,
    *,
    code: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> SyncDetail:
    """One sync's runs, unknowns and open rejects.

    :param state_id: :data:`LOCAL_STATE_ID` or the Airflow connection id of its state.
    :param sync_name: the sync's name.
    :param partition: the partition, or ``None`` for the whole sync.
    :param code: show only the unknowns and rejects with this error code.
    :param limit: the most rows of each list.
    :raises SyncNotFoundError: when the state holds no such sync.
    :raises StateUnavailableError: when the state cannot be read.
    """
    location = location_of(state_id)
    if partition is not None:
        raise SyncNotFoundError("this state records whole syncs, not their partitions")
    with _opened(state_id, write=False) as db:
        if db is None or not db.has_table(db.table):
            raise SyncNotFoundError(f"no sync {sync_name!r} in {location.description}")
        rows = _sync_rows(db, location, sync_name)
        if not rows:
            raise SyncNotFoundError(f"no sync {sync_name!r} in {location.description}")
        runs = _runs_by_sync(db, sync_name).get(sync_name, [])
        codes = [
            CodeCount(None if error_code is None else str(error_code), int(count))
            for error_code, count in db.rows(
                f"SELECT error_code, COUNT(*) FROM {db.table} WHERE sync_name = {db.placeholder} "
                f"AND outcome IN ({db.markers(4)}) GROUP BY error_code",
                [sync_name, *_UNRESOLVED, *_OPEN_REJECTS],
            )
        ]
        codes.sort(key=lambda item: (-item.count, item.code or ""))
        return SyncDetail(
            sync=rows[0],
            runs=runs,
            runs_complete=False,
            unknowns=_problems(db, sync_name, _UNRESOLVED, code, limit),
            rejects=_problems(db, sync_name, _OPEN_REJECTS, code, limit),
            codes=codes,
            code=code,
            limit=limit,
        )


# -- changing --------------------------------------------------------------------------------------


@contextmanager
def _writing(state_id: str, sync_name: str, partition: int | None) -> Iterator[_Database]:
    if partition is not None:
        raise SyncNotFoundError("this state records whole syncs, not their partitions")
    with _opened(state_id, write=True) as db:
        if db is None or not db.has_table(db.table):
            raise SyncNotFoundError(f"no sync {sync_name!r} in {location_of(state_id).description}")
        yield db


def _changed(db: _Database, statement: str, parameters: Sequence[Any]) -> int:
    cursor = db.connection.cursor()
    try:
        cursor.execute(statement, list(parameters))
        return max(int(cursor.rowcount), 0)
    finally:
        cursor.close()


def resolve(state_id: str, sync_name: str, partition: int | None, source_key: str, crm_id: str) -> int:
    """Record the CRM id of a row whose create had an unknown outcome, once found in the CRM.

    The next run then treats the row as created with that id (an update when it changes), as
    ``SyncState.resolve`` does. A row whose outcome is no longer unknown is left alone.

    :param state_id: :data:`LOCAL_STATE_ID` or the Airflow connection id of its state.
    :param sync_name: the sync's name.
    :param partition: the partition, or ``None`` for the whole sync.
    :param source_key: the row's key.
    :param crm_id: the id the CRM gave the record.
    :returns: how many rows changed (0 or 1).
    """
    with _writing(state_id, sync_name, partition) as db:
        p = db.placeholder
        return _changed(
            db,
            f"UPDATE {db.table} SET crm_id = {p}, outcome = {p}, outcome_at = {p}, error_code = NULL, "
            f"error_message = NULL WHERE sync_name = {p} AND source_key = {p} AND outcome IN ({p}, {p})",
            [crm_id, "created", _now(), sync_name, source_key, *_UNRESOLVED],
        )


def resend(state_id: str, sync_name: str, partition: int | None, source_keys: Sequence[str]) -> int:
    """Mark rows to be sent again by the next run, changed or not.

    Rows with an unknown outcome are left alone: sending them again could create the record twice
    (resolve them instead).

    :param state_id: :data:`LOCAL_STATE_ID` or the Airflow connection id of its state.
    :param sync_name: the sync's name.
    :param partition: the partition, or ``None`` for the whole sync.
    :param source_keys: the rows' keys.
    :returns: how many rows were marked.
    """
    with _writing(state_id, sync_name, partition) as db:
        p = db.placeholder
        # The next run compares each row's payload with this hash: without one, the row is sent.
        statement = (
            f"UPDATE {db.table} SET payload_hash = NULL WHERE sync_name = {p} AND source_key = {p} "
            f"AND outcome NOT IN ({p}, {p})"
        )
        return sum(
            _changed(db, statement, [sync_name, key, *_UNRESOLVED]) for key in dict.fromkeys(source_keys)
        )


def retry_code(state_id: str, sync_name: str, partition: int | None, code: str) -> int:
    """Mark every row rejected (or failed) with error ``code`` to be sent again by the next run.

    :param state_id: :data:`LOCAL_STATE_ID` or the Airflow connection id of its state.
    :param sync_name: the sync's name.
    :param partition: the partition, or ``None`` for the whole sync.
    :param code: the error code.
    :returns: how many rows were marked.
    """
    with _writing(state_id, sync_name, partition) as db:
        p = db.placeholder
        return _changed(
            db,
            f"UPDATE {db.table} SET payload_hash = NULL WHERE sync_name = {p} AND error_code = {p} "
            f"AND outcome IN ({p}, {p})",
            [sync_name, code, *_OPEN_REJECTS],
        )


def forget(state_id: str, sync_name: str, partition: int | None, *, expected_rows: int | None = None) -> int:
    """Delete a sync's state and its rejects: its next run starts from nothing.

    The next run of a v1 sync then creates every row again, duplicating what the CRM holds.

    :param state_id: :data:`LOCAL_STATE_ID` or the Airflow connection id of its state.
    :param sync_name: the sync's name.
    :param partition: the partition, or ``None`` for the whole sync.
    :param expected_rows: the number of state rows the person confirmed; when the sync holds
        another number, nothing is deleted.
    :returns: how many state rows were deleted.
    :raises SyncNotFoundError: when the state holds no row of the sync.
    :raises ChangedSinceConfirmedError: when ``expected_rows`` is not the number it holds.
    """
    with _writing(state_id, sync_name, partition) as db:
        p = db.placeholder
        # Asked before any change: a failed look-up ends PostgreSQL's transaction.
        has_rejects = db.has_table(db.rejects_table)
        (count,) = db.rows(f"SELECT COUNT(*) FROM {db.table} WHERE sync_name = {p}", [sync_name])[0]
        if not count:
            raise SyncNotFoundError(f"no sync {sync_name!r} in {location_of(state_id).description}")
        if expected_rows is not None and int(count) != expected_rows:
            raise ChangedSinceConfirmedError(int(count))
        deleted = _changed(db, f"DELETE FROM {db.table} WHERE sync_name = {p}", [sync_name])
        if has_rejects:
            _changed(db, f"DELETE FROM {db.rejects_table} WHERE sync_name = {p}", [sync_name])
        return deleted
