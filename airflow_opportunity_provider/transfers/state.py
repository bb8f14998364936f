"""The sync state of a bulk load in four tables on SQLite, PostgreSQL, MySQL/MariaDB (or any SQL
database): each key's last outcome, the rejects, one row per run, and a lease per partition.

A row is identified by ``(sync_name, key_digest)``, byte-exact on every database; a v1 create
is recorded as ``in_flight`` before it is sent, and every write checks, in its own transaction,
that this run still holds its partition's lease, so a run that lost it can write nothing more.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow_opportunity_provider.errors import OpportunityConfigurationError, OpportunityError
from airflow_opportunity_provider.serialization import dumps
from airflow_opportunity_provider.transfers.keys import DIGEST_LENGTH, is_digest, key_digest, partition_of
from airflow_opportunity_provider.transfers.outcomes import LOADED_SQL, UNRESOLVED, UNRESOLVED_SQL, Outcome
from airflow_opportunity_provider.transfers.state_sql import StateDialect, dialect_for, mysql_dialect

DEFAULT_STATE_TABLE = "opportunity_sync_state"
REJECTS_SUFFIX = "_rejects"
RUNS_SUFFIX = "_runs"
LEASES_SUFFIX = "_leases"
#: The stored value of a create's intent (kept for callers of earlier releases).
IN_FLIGHT = Outcome.IN_FLIGHT

MAX_SYNC_NAME = 250
#: Characters of a create hint's JSON at most: it is a look-up aid, not a copy of the payload.
MAX_CREATE_HINT = 4000
# Digests per lookup query: under every database's limit on bound parameters. PostgreSQL binds
# one array instead, so a round trip there carries many more.
_LOOKUP_BATCH = 500
_POSTGRES_LOOKUP_BATCH = 5000
# Rows copied per statement while migrating a table of the first release.
_MIGRATION_BATCH = 2000
# How often a lease holder waiting for another run's lease asks again.
_LEASE_POLL_SECONDS = 0.5
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")

_STATE_COLUMNS = (
    "sync_name",
    "key_digest",
    "source_key",
    "crm_id",
    "payload_hash",
    "outcome",
    "outcome_at",
    "run_id",
    "error_code",
    "error_message",
    "attempted_at",
    "create_hint",
    "source_hash",
)
# A NULL in these keeps what the state holds: a rejected update keeps the record's id.
_KEPT_WHEN_NULL = ("crm_id", "payload_hash", "attempted_at", "create_hint")
_REJECT_COLUMNS = (
    "sync_name",
    "sync_run_id",
    "dag_run_id",
    "key_digest",
    "source_key",
    "outcome",
    "error_code",
    "error_message",
    "recorded_at",
)
# The SQLite reader's page cache in KiB: bounded, whatever the table's size.
_READER_CACHE_KIB = 16384
# (digest, fingerprint) pairs per query of lookup_unsettled on SQLite (and per batch table of
# SqliteKeyLookup): two parameters each, under the 999 bound parameters that SQLite before 3.32
# allows (32,766 since).
_SETTLED_BATCH = 450 if sqlite3.sqlite_version_info < (3, 32) else 5000
# The rows lookup_unsettled returns: no state, another fingerprint (or none), or not loaded.
_UNSETTLED = (
    "s.key_digest IS NULL OR b.f IS NULL OR s.source_hash IS NULL OR s.source_hash <> b.f "
    f"OR s.outcome NOT IN {LOADED_SQL}"
)
# The stored texts of the unresolved outcomes (the records whose create hint is decoded).
_UNRESOLVED_VALUES = frozenset(outcome.value for outcome in UNRESOLVED)
_RECORD_COLUMNS = (
    "key_digest, source_key, crm_id, payload_hash, outcome, run_id, error_code, outcome_at, "
    "attempted_at, create_hint, source_hash"
)
_RECORD_WIDTH = len(_RECORD_COLUMNS.split(","))
# The record's columns of the state table joined as ``s``.
_JOINED_RECORD_COLUMNS = ", ".join(f"s.{column.strip()}" for column in _RECORD_COLUMNS.split(","))

if TYPE_CHECKING:
    from airflow_opportunity_provider.transfers.sqlite_state import SqliteLoopWriter

log = logging.getLogger(__name__)


class LeaseHeldError(OpportunityError):
    """Another run holds this sync partition's lease: two runs of one partition could create twice.

    :param message: who holds it and until when.
    :param holder_run_id: the holding sync run.
    :param dag_run_id: its Airflow run.
    :param host: the machine it runs on.
    :param expires_at: epoch seconds (database clock) when its lease runs out unless renewed.
    """

    def __init__(
        self,
        message: str,
        *,
        holder_run_id: str | None = None,
        dag_run_id: str | None = None,
        host: str | None = None,
        expires_at: float | None = None,
    ) -> None:
        super().__init__(message)
        self.holder_run_id = holder_run_id
        self.dag_run_id = dag_run_id
        self.host = host
        self.expires_at = expires_at


class LeaseLostError(OpportunityError):
    """This run's lease was taken over by another run (after it expired): nothing was written,
    and nothing more may be sent by this run."""


class UnresolvedCreateError(OpportunityError):
    """:meth:`SyncState.resend` was asked to send rows whose create may already be stored.

    :param message: which rows, and how to create them again anyway.
    :param digests: the digests of those rows.
    """

    def __init__(self, message: str, digests: Sequence[str]) -> None:
        super().__init__(message)
        self.digests = list(digests)


class StateRecord(NamedTuple):
    """What the state holds for one source key.

    A named tuple rather than a frozen dataclass: every lookup makes one per row, and a tuple is
    made several times faster, in the critical path of a no-change run.

    :param key: the key's full text.
    :param digest: the key's digest, its identity in the state.
    :param crm_id: the CRM's id of the record (v1 id, or the v2 ``Id/Type`` route).
    :param payload_hash: the hash of the last payload sent.
    :param outcome: the last outcome.
    :param run_id: the sync run that wrote it.
    :param error_code: the last error's code.
    :param outcome_at: when the outcome was written, ISO 8601 UTC.
    :param attempted_at: epoch seconds (the writer's clock) when the last create intent was
        committed, or ``None``.
    :param create_hint: the small JSON stored with a create intent, to find the record in the CRM
        (decoded for an unresolved create only: no other record is ever looked up by it).
    :param source_hash: the fingerprint of the source row whose payload was loaded
        (``source.SqlSource``), or ``None``: a row read again with the same fingerprint is
        unchanged without being mapped.
    """

    key: str
    digest: str
    crm_id: str | None
    payload_hash: str | None
    outcome: Outcome
    run_id: str | None
    error_code: str | None = None
    outcome_at: str = ""
    attempted_at: float | None = None
    create_hint: dict[str, Any] | None = None
    source_hash: str | None = None


@dataclass(slots=True)
class StateWrite:
    """One change to the state of a key, and optionally a row for the rejects table.

    ``crm_id``, ``payload_hash``, ``attempted_at`` and ``create_hint`` left as ``None`` keep
    what the state already holds.

    :param key: the row's key text.
    :param digest: its :func:`~airflow_opportunity_provider.transfers.keys.key_digest`.
    :param outcome: the outcome to record.
    :param payload_hash: the hash of the payload this outcome is for.
    :param crm_id: the CRM id learnt from the answer.
    :param error_code: the platform's error code (or this package's reason code).
    :param error_message: the platform's message (or this package's reason).
    :param reject: also append a row to the rejects table.
    :param update_state: write the state row (``False`` to add only a reject row).
    :param attempted_at: epoch seconds when a create intent is committed.
    :param create_hint: a small JSON-able mapping stored with a create intent.
    :param source_hash: the fingerprint of the source row the outcome is for. Unlike the fields
        above, ``None`` clears it: a stored fingerprint must always belong to the stored hash.
    """

    key: str
    digest: str
    outcome: Outcome
    payload_hash: str | None = None
    crm_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    reject: bool = False
    update_state: bool = True
    attempted_at: float | None = None
    create_hint: Mapping[str, Any] | None = None
    source_hash: str | None = None

    def __post_init__(self) -> None:
        if len(self.digest) != DIGEST_LENGTH:
            raise ValueError(f"StateWrite.digest must be key_digest(key), not {self.digest!r}")

    @property
    def source_key(self) -> str:
        """The key's text (the name earlier releases used)."""
        return self.key


@dataclass(frozen=True)
class RunRecord:
    """One run of a sync partition, as ``<table>_runs`` keeps it (failed runs included).

    ``sync_name``, ``partition_index`` and ``partition_count`` are the state's own when
    :meth:`SyncState.record_run` writes it.
    """

    sync_run_id: str
    sync_name: str = ""
    partition_index: int = 0
    partition_count: int = 1
    dag_id: str | None = None
    task_id: str | None = None
    dag_run_id: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_seconds: float | None = None
    verdict: str | None = None
    failure_reason: str | None = None
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
    max_rejected: int | float | None = None
    max_unknown: int | float | None = None
    summary: Mapping[str, Any] = field(default_factory=dict)


_RUN_COLUMNS = tuple(item.name for item in fields(RunRecord))


@dataclass(frozen=True)
class SyncOverview:
    """One sync (or one partition of it) in the state table, for a command line or a UI page.

    :param sync_name: the sync.
    :param counts: rows per stored outcome.
    :param partitions: the ``(partition_index, partition_count)`` pairs its runs and leases used.
    :param partition_index: the partition these counts are of, or ``None`` for the whole sync.
    """

    sync_name: str
    counts: dict[str, int]
    partitions: tuple[tuple[int, int], ...] = ()
    partition_index: int | None = None

    @property
    def total(self) -> int:
        """Every row counted."""
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class _Lease:
    generation: int
    ttl_seconds: float


class _LeaseBox:
    """The lease a state holds, shared with its SQLite loop writer (which must check it too)."""

    __slots__ = ("lease", "lost", "renewed_at")

    def __init__(self) -> None:
        self.lease: _Lease | None = None
        # Once lost, a lease stays lost: every later write is refused until a new acquisition.
        self.lost: LeaseLostError | None = None
        self.renewed_at = 0.0

    def refuse_if_lost(self) -> None:
        if self.lost is not None:
            raise LeaseLostError(str(self.lost))


def default_state_path() -> Path:
    """The local SQLite state file used when no ``state_conn_id`` is given."""
    home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return Path(home) / "opportunity_sync" / "state.db"


def check_table_name(name: str) -> str:
    """Accept ``table`` or ``schema.table`` made of letters, digits and underscores.

    :param name: the table name to check.
    :raises OpportunityConfigurationError: for anything else (it goes into SQL text).
    """
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise OpportunityConfigurationError(
            f"state table name {name!r} must be `table` or `schema.table`, letters, digits and _ only."
        )
    return name


def check_sync_name(name: str) -> str:
    """Accept a sync name that every database compares exactly: 1 to 250 characters, no leading
    or trailing whitespace (MySQL's PAD SPACE comparisons would make ``"a"`` and ``"a "`` one).

    :param name: the sync name.
    :raises OpportunityConfigurationError: otherwise.
    """
    if not isinstance(name, str) or not name or len(name) > MAX_SYNC_NAME or name != name.strip():
        raise OpportunityConfigurationError(
            f"sync_name {name!r} must be 1 to {MAX_SYNC_NAME} characters without leading or trailing spaces."
        )
    return name


def utc_now() -> str:
    """Now as ISO 8601 UTC text with microseconds, the form every stored time has."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(value: Any) -> Any:
    """Text from a driver that may hand back bytes for a binary-collated column."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8")
    return value


def _threshold(value: Any) -> int | float | None:
    if value is None:
        return None
    text = str(_text(value))
    return float(text) if any(c in text for c in ".eE") else int(text)


class SyncState:
    """The state, rejects, runs and leases tables of one sync partition, through one DB-API connection.

    All methods run on one thread (a DB-API connection never changes threads).

    :param connect: returns a new DB-API connection (``DbApiHook.get_conn`` or ``sqlite3.connect``).
    :param dialect: the database's dialect name (``DbApiHook.dialect_name``: ``sqlite``,
        ``postgresql``, ``mysql``, ...) or a :class:`StateDialect`.
    :param sync_name: the sync whose rows this state holds.
    :param run_id: this run's id, written with every change.
    :param partition_index: the partition this run loads.
    :param partition_count: how many partitions the sync is spread over.
    :param table: the state table (``table`` or ``schema.table``).
    :param rejects_table: the rejects table; ``<table>_rejects`` by default.
    :param location: where the state lives, for messages (never a password).
    :param dag_run_id: the Airflow run, written with every reject and lease.
    :param placeholder: the parameter marker of a database without a dialect of its own.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        dialect: str | StateDialect,
        *,
        sync_name: str,
        run_id: str,
        partition_index: int = 0,
        partition_count: int = 1,
        table: str = DEFAULT_STATE_TABLE,
        rejects_table: str | None = None,
        location: str = "",
        dag_run_id: str | None = None,
        placeholder: str = "%s",
    ) -> None:
        if not 0 <= partition_index < max(partition_count, 1):
            raise OpportunityConfigurationError(
                f"partition_index {partition_index} must be in 0..{partition_count - 1}."
            )
        self._connect = connect
        self.dialect = dialect if isinstance(dialect, StateDialect) else dialect_for(dialect, placeholder)
        self.sync_name = check_sync_name(sync_name)
        self.run_id = run_id
        self.partition_index = partition_index
        self.partition_count = max(partition_count, 1)
        self.table = check_table_name(table)
        self.rejects_table = check_table_name(rejects_table or table + REJECTS_SUFFIX)
        self.runs_table = check_table_name(table + RUNS_SUFFIX)
        self.leases_table = check_table_name(table + LEASES_SUFFIX)
        self.location = location
        self.dag_run_id = dag_run_id
        self._connection: Any = None
        self._leases = _LeaseBox()
        # The file of a SQLite state in WAL mode, which a second connection may write as well.
        self._wal_file: str | None = None
        # Built once: the statements every group commit and lookup runs.
        self._sql: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(table={self.table!r}, location={self.location!r})"

    @classmethod
    def local(cls, path: Path | None = None, **kwargs: Any) -> SyncState:
        """State in a local SQLite file (``$AIRFLOW_HOME/opportunity_sync/state.db`` by default).

        :param path: the SQLite file.
        :param kwargs: passed on to the constructor.
        """
        file = Path(path) if path else default_state_path()

        def connect() -> sqlite3.Connection:
            file.parent.mkdir(parents=True, exist_ok=True)
            return sqlite3.connect(str(file), timeout=60.0)

        return cls(connect, "sqlite", location=f"sqlite file {file}", **kwargs)

    @classmethod
    def from_conn_id(cls, conn_id: str, **kwargs: Any) -> SyncState:
        """State on the database of an Airflow SQL connection (any ``DbApiHook``).

        :param conn_id: the Airflow connection id.
        :param kwargs: passed on to the constructor.
        """
        from airflow_opportunity_provider.transfers.source import get_db_hook

        hook = get_db_hook(conn_id, purpose="state_conn_id")
        return cls(
            hook.get_conn,
            hook.dialect_name,
            placeholder=hook.placeholder,
            location=f"connection {conn_id!r}",
            **kwargs,
        )

    # -- set-up ----------------------------------------------------------------------------

    def open(self) -> None:
        """Connect, create the missing tables, and migrate a state table of the first release."""
        self._connection = self._connect()
        self._prepare_connection()
        if self.dialect.name == "sqlite":
            from airflow_opportunity_provider.transfers.sqlite_state import enable_wal

            self._wal_file = enable_wal(self._connection)
        from airflow_opportunity_provider.transfers.state_schema import ensure_tables

        ensure_tables(self)

    def _prepare_connection(self) -> None:
        """Autocommit for reads (no snapshot held, no COMMIT round trip), explicit transactions for writes."""
        connection = self._connection
        name = self.dialect.name
        if name == "sqlite":
            connection.isolation_level = None
        elif name in ("postgresql", "mysql"):
            connection.autocommit = True
        if name == "mysql":
            cursor = connection.cursor()
            try:
                # The lease's clock is UNIX_TIMESTAMP(NOW(6)): in UTC it has no daylight-saving fold.
                cursor.execute("SET time_zone = '+00:00'")
                cursor.execute("SELECT VERSION()")
                row = cursor.fetchone()
            finally:
                cursor.close()
            self.dialect = mysql_dialect(mariadb="mariadb" in str(_text(row[0])).lower())
            self._sql.clear()

    def reader(self) -> SyncState | None:
        """A second connection to this state, for looking keys up from another thread, or ``None``.

        The bulk load's lookup thread looks each batch's keys up through it while the source
        thread reads the next batch, so an unchanged row never waits for the state thread (busy
        with commits) nor for the event loop. Its connection reads in autocommit mode, so each
        lookup sees every commit made before it. Only a SQLite state that is not a WAL file has none (a second connection
        would wait for the writer's locks, or see another in-memory database). Call
        :meth:`open_reader` on the result from the thread that will read.
        """
        if self.dialect.name == "sqlite" and self._wal_file is None:
            return None
        return SyncState(self._connect, self.dialect, **self.sibling_options())

    def sibling_options(self) -> dict[str, Any]:
        """The keyword arguments that make another ``SyncState`` of this very sync partition and
        tables (for a second connection to it)."""
        return {
            "sync_name": self.sync_name,
            "run_id": self.run_id,
            "partition_index": self.partition_index,
            "partition_count": self.partition_count,
            "table": self.table,
            "rejects_table": self.rejects_table,
            "location": self.location,
            "dag_run_id": self.dag_run_id,
        }

    def open_reader(self) -> None:
        """Connect for lookups only: no table is created, no lease is held or renewed."""
        self._connection = self._connect()
        self._prepare_connection()
        if self.dialect.name == "sqlite":
            self._connection.execute("PRAGMA busy_timeout=60000")
            # A batch's keys are spread over the whole table: a page cache of a few thousand
            # pages (instead of 500) reads each page once per run, not once per batch.
            self._connection.execute(f"PRAGMA cache_size=-{_READER_CACHE_KIB}")

    def loop_writer(self) -> SqliteLoopWriter | None:
        """A second writer of this state for small commits made without a thread hand-off, or ``None``.

        Only a SQLite state in a file in WAL mode has one (see ``sqlite_state``). Call this after
        :meth:`open`, and ``open_writer()`` on the result from the thread that will write.
        """
        if self._wal_file is None:
            return None
        from airflow_opportunity_provider.transfers.sqlite_state import SqliteLoopWriter

        return SqliteLoopWriter(self, self._wal_file)

    def checkpoint(self) -> None:
        """Copy what the WAL holds into a SQLite state's file, without waiting for anyone."""
        if self._wal_file is not None:
            self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close(self) -> None:
        """Close the connection (the lease, if any, stays until :meth:`release_lease` or its expiry)."""
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None

    @property
    def connection(self) -> Any:
        """The open connection; :meth:`open` must have run."""
        if self._connection is None:
            raise RuntimeError("SyncState.open() has not run")
        return self._connection

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A cursor whose statements are committed together, or rolled back together on any error."""
        connection = self.connection
        cursor = connection.cursor()
        begun = False
        try:
            if self.dialect.begin:
                cursor.execute(self.dialect.begin)
            begun = True
            yield cursor
            if self.dialect.begin:
                cursor.execute("COMMIT")
            else:
                connection.commit()
        except BaseException:
            if begun:
                self._rollback(cursor)
            raise
        finally:
            cursor.close()

    def _rollback(self, cursor: Any) -> None:
        try:
            if self.dialect.begin:
                cursor.execute("ROLLBACK")
            else:
                self.connection.rollback()
        except Exception:  # the error being raised matters more than a failed rollback
            log.debug("rollback failed", exc_info=True)

    def _read(self, query: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run one query outside any write transaction and return its rows."""
        connection = self.connection
        cursor = connection.cursor()
        try:
            cursor.execute(query, parameters)
            rows = list(cursor.fetchall())
        finally:
            cursor.close()
        if not self.dialect.autocommit:
            connection.commit()  # end the read transaction: hold no snapshot open
        return rows

    def _check_lease(self, cursor: Any) -> None:
        """Inside a write transaction: renew this run's lease, or raise :class:`LeaseLostError`.

        The update takes the lease row's write lock, so a takeover either committed before it
        (and the generation no longer matches) or waits until this transaction has committed.
        """
        self._leases.refuse_if_lost()
        lease = self._leases.lease
        if lease is None:
            return
        parameters: list[Any] = []
        now = self.dialect.clock(parameters)
        later = self.dialect.clock(parameters)
        p = self.dialect.placeholder
        # MySQL counts changed rows, not matched ones: the heartbeat must change every time.
        heartbeat = f"GREATEST({now}, heartbeat_at + 0.000001)" if self.dialect.name == "mysql" else now
        cursor.execute(
            f"UPDATE {self.leases_table} SET heartbeat_at = {heartbeat}, expires_at = {later} + ttl_seconds "
            f"WHERE sync_name = {p} AND partition_index = {p} AND generation = {p} AND holder_run_id = {p}",
            [*parameters, self.sync_name, self.partition_index, lease.generation, self.run_id],
        )
        if cursor.rowcount != 1:
            raise self._lease_lost(lease)
        self._leases.renewed_at = time.monotonic()

    def _lease_lost(self, lease: _Lease) -> LeaseLostError:
        self._leases.lease = None
        self._leases.lost = LeaseLostError(
            f"sync {self.sync_name!r} partition {self.partition_index} of {self.partition_count}: run "
            f"{self.run_id} no longer holds the lease of generation {lease.generation} (another run took "
            "it over after it expired); nothing was written, and this run must send nothing more."
        )
        return self._leases.lost

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """A write transaction that first checks this run's lease (when it holds one)."""
        with self._transaction() as cursor:
            self._check_lease(cursor)
            yield cursor

    # -- reading ---------------------------------------------------------------------------

    def lookup(self, digests: Sequence[str]) -> dict[str, StateRecord]:
        """The state of each of ``digests`` that has one, by digest.

        :param digests: the key digests of one batch of source rows.
        """
        self._renew_if_due()
        found: dict[str, StateRecord] = {}
        if not digests:
            return found
        connection = self.connection
        cursor = connection.cursor()
        p = self.dialect.placeholder
        head = f"SELECT {_RECORD_COLUMNS} FROM {self.table} WHERE sync_name = {p} AND key_digest "
        try:
            if self.dialect.name == "postgresql":
                # One array parameter: one plan, far fewer round trips than IN lists.
                for start in range(0, len(digests), _POSTGRES_LOOKUP_BATCH):
                    batch = list(digests[start : start + _POSTGRES_LOOKUP_BATCH])
                    cursor.execute(head + f"= ANY({p})", [self.sync_name, batch])
                    for row in cursor.fetchall():
                        found[row[0]] = _record(row)
            else:
                for start in range(0, len(digests), _LOOKUP_BATCH):
                    batch = list(digests[start : start + _LOOKUP_BATCH])
                    cursor.execute(
                        head + f"IN ({self.dialect.markers(len(batch))})", [self.sync_name, *batch]
                    )
                    for row in cursor.fetchall():
                        record = _record(row)
                        found[record.digest] = record
        finally:
            cursor.close()
        if not self.dialect.autocommit:
            connection.commit()
        return found

    def lookup_unsettled(self, rows: Sequence[tuple[str, str | None]]) -> dict[str, StateRecord | None]:
        """What the state holds for the keys of ``rows`` that their fingerprint does not settle.

        A key is settled when the state holds it ``created`` or ``updated`` with the very
        fingerprint given (``planner.fingerprint_matches``): such keys are left out, so that a
        no-change run reads no row of the state at all. Every other key is in the result: its
        record, or ``None`` when the state has none. A ``None`` fingerprint settles nothing.
        The join that leaves the settled keys out is made on SQLite and PostgreSQL; on other
        databases every key is returned, and ``planner.plan`` settles them from their records.

        :param rows: ``(digest, fingerprint)`` of each row of one batch.
        """
        found: dict[str, StateRecord | None] = {}
        if not rows:
            return found
        name = self.dialect.name
        if name not in ("sqlite", "postgresql"):
            # Elsewhere every key is returned, settled or not: the planner settles them itself.
            records = self.lookup([digest for digest, _ in rows])
            return {digest: records.get(digest) for digest, _ in rows}
        columns = _JOINED_RECORD_COLUMNS
        cursor = self.connection.cursor()
        try:
            if name == "postgresql":
                from airflow_opportunity_provider.transfers.postgres_state import binds_binary_arrays

                # In binary the server parses the arrays in a third of the time text arrays
                # take, which is most of what a no-change batch costs.
                array = "%b" if binds_binary_arrays(self.connection) else "%s"
                # LATERAL ... LIMIT 1 keeps the join a probe of the primary key per row whatever
                # the statistics say: a table never analyzed yet (right after its first load)
                # is otherwise hashed whole for every batch.
                cursor.execute(
                    f"SELECT b.d, {columns} FROM unnest({array}::text[], {array}::text[]) AS b(d, f) "
                    f"LEFT JOIN LATERAL (SELECT * FROM {self.table} x WHERE x.sync_name = %s "
                    f"AND x.key_digest = b.d LIMIT 1) s ON true WHERE {_UNSETTLED}",
                    [
                        [digest for digest, _ in rows],
                        [fingerprint for _, fingerprint in rows],
                        self.sync_name,
                    ],
                )
                self._collect_unsettled(cursor.fetchall(), found)
            else:
                for start in range(0, len(rows), _SETTLED_BATCH):
                    batch = rows[start : start + _SETTLED_BATCH]
                    values = ", ".join(["(?, ?)"] * len(batch))
                    cursor.execute(
                        f"WITH b(d, f) AS (VALUES {values}) SELECT b.d, {columns} FROM b "
                        f"LEFT JOIN {self.table} s ON s.sync_name = ? AND s.key_digest = b.d "
                        f"WHERE {_UNSETTLED}",
                        [*(value for row in batch for value in row), self.sync_name],
                    )
                    self._collect_unsettled(cursor.fetchall(), found)
        finally:
            cursor.close()
        return found

    @staticmethod
    def _collect_unsettled(rows: Iterable[Sequence[Any]], found: dict[str, StateRecord | None]) -> None:
        for row in rows:
            found[_text(row[0])] = None if row[1] is None else _record(row[1:])

    def unresolved(self) -> list[StateRecord]:
        """Every record of this partition whose create's outcome is unknown or still in flight."""
        p = self.dialect.placeholder
        # The outcomes as literals, as the partial index names them: with bound parameters
        # SQLite cannot prove the index applies and scans every row of the sync.
        rows = self._read(
            f"SELECT {_RECORD_COLUMNS} FROM {self.table} WHERE sync_name = {p} AND outcome IN {UNRESOLVED_SQL}",
            [self.sync_name],
        )
        records = [_record(row) for row in rows]
        return [
            record
            for record in records
            if partition_of(record.key, self.partition_count) == self.partition_index
        ]

    def keys_with_outcome(self, outcome: str) -> list[str]:
        """The keys of this partition whose last outcome is ``outcome``.

        :param outcome: the outcome to look for.
        """
        p = self.dialect.placeholder
        rows = self._read(
            f"SELECT source_key FROM {self.table} WHERE sync_name = {p} AND outcome = {p}",
            [self.sync_name, str(outcome)],
        )
        keys = [_text(row[0]) for row in rows]
        return [key for key in keys if partition_of(key, self.partition_count) == self.partition_index]

    def rejects(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """The rejects of this sync (of one run when ``run_id`` is given), oldest first.

        :param run_id: a sync run id, or ``None`` for every run.
        """
        p = self.dialect.placeholder
        query = (
            "SELECT sync_run_id, dag_run_id, key_digest, source_key, outcome, error_code, error_message, "
            f"recorded_at FROM {self.rejects_table} WHERE sync_name = {p}"
        )
        parameters: list[Any] = [self.sync_name]
        if run_id is not None:
            query += f" AND sync_run_id = {p}"
            parameters.append(run_id)
        names = [
            "sync_run_id",
            "dag_run_id",
            "key_digest",
            "source_key",
            "outcome",
            "error_code",
            "error_message",
            "recorded_at",
        ]
        rows = self._read(query + " ORDER BY recorded_at, source_key", parameters)
        return [dict(zip(names, map(_text, row), strict=True)) for row in rows]

    def runs(self, limit: int = 50) -> list[RunRecord]:
        """The latest runs of this sync (every partition), newest first.

        :param limit: how many at most.
        """
        p = self.dialect.placeholder
        columns = ", ".join(self.dialect.quote(name) for name in _RUN_COLUMNS)
        rows = self._read(
            f"SELECT {columns} FROM {self.runs_table} WHERE sync_name = {p} "
            f"ORDER BY started_at DESC, sync_run_id DESC LIMIT {int(limit)}",
            [self.sync_name],
        )
        records = []
        for row in rows:
            values = dict(zip(_RUN_COLUMNS, map(_text, row), strict=True))
            values["max_rejected"] = _threshold(values["max_rejected"])
            values["max_unknown"] = _threshold(values["max_unknown"])
            values["summary"] = json.loads(values["summary"]) if values["summary"] else {}
            for name in ("partition_index", "partition_count"):
                values[name] = int(values[name])
            records.append(RunRecord(**values))
        return records

    def list_syncs(self, *, per_partition: bool = False) -> list[SyncOverview]:
        """Every sync in the state table with its rows per outcome, and the partitions its runs used.

        :param per_partition: also count each partition of a partitioned sync (reads every key).
        """
        counts: dict[str, dict[str, int]] = {}
        for name, outcome, count in self._read(
            f"SELECT sync_name, outcome, COUNT(*) FROM {self.table} GROUP BY sync_name, outcome", []
        ):
            counts.setdefault(_text(name), {})[_text(outcome)] = int(count)
        partitions: dict[str, set[tuple[int, int]]] = {}
        for table in (self.runs_table, self.leases_table):
            for name, index, count in self._read(
                f"SELECT DISTINCT sync_name, partition_index, partition_count FROM {table}", []
            ):
                partitions.setdefault(_text(name), set()).add((int(index), int(count)))
        overviews = []
        for name in sorted(set(counts) | set(partitions)):
            pairs = tuple(sorted(partitions.get(name, ())))
            overviews.append(SyncOverview(name, counts.get(name, {}), pairs))
            partition_count = max((count for _, count in pairs), default=1)
            if per_partition and partition_count > 1:
                overviews.extend(self._partition_counts(name, pairs, partition_count))
        return overviews

    def _partition_counts(
        self, name: str, pairs: tuple[tuple[int, int], ...], partition_count: int
    ) -> list[SyncOverview]:
        by_partition: list[dict[str, int]] = [{} for _ in range(partition_count)]
        p = self.dialect.placeholder
        for key, outcome in self._read(
            f"SELECT source_key, outcome FROM {self.table} WHERE sync_name = {p}", [name]
        ):
            bucket = by_partition[partition_of(_text(key), partition_count)]
            bucket[_text(outcome)] = bucket.get(_text(outcome), 0) + 1
        return [SyncOverview(name, counts, pairs, index) for index, counts in enumerate(by_partition)]

    # -- writing ---------------------------------------------------------------------------

    def apply(self, writes: Iterable[StateWrite]) -> None:
        """Write a group of changes in one transaction, which also checks this run's lease.

        :param writes: the changes, in order; a key may appear more than once (the later
            write wins, its ``None`` fields keeping the earlier write's values).
        :raises LeaseLostError: another run took the lease over; nothing was written.
        """
        group = self.group_rows(writes)
        if group is None:
            return
        upserts, rejects, durable = group
        if self.dialect.name == "postgresql":
            from airflow_opportunity_provider.transfers.postgres_state import apply_in_one_statement

            apply_in_one_statement(self, upserts, rejects, durable)
            return
        with self._write() as cursor:
            if upserts:
                self._upsert(cursor, upserts)
            if rejects:
                cursor.executemany(self._statement("reject"), rejects)

    def group_rows(
        self, writes: Iterable[StateWrite]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], bool] | None:
        """The state rows and reject rows a group of writes stores, and whether the group holds
        a create's intent (so must reach the disk before it is answered); ``None`` for nothing.

        :param writes: the changes, as :meth:`apply` takes them.
        """
        now = utc_now()
        merged: dict[str, StateWrite] = {}
        rejects: list[tuple[Any, ...]] = []
        for write in writes:
            if write.update_state:
                earlier = merged.get(write.digest)
                merged[write.digest] = write if earlier is None else _merge(earlier, write)
            if write.reject:
                rejects.append(
                    (
                        self.sync_name,
                        self.run_id,
                        self.dag_run_id,
                        write.digest,
                        write.key,
                        str(write.outcome),
                        write.error_code,
                        write.error_message,
                        now,
                    )
                )
        if not merged and not rejects:
            return None
        upserts = [
            (
                self.sync_name,
                write.digest,
                write.key,
                write.crm_id,
                write.payload_hash,
                str(write.outcome),
                now,
                self.run_id,
                write.error_code,
                write.error_message,
                write.attempted_at,
                None if write.create_hint is None else _hint_text(write.create_hint),
                write.source_hash,
            )
            for write in merged.values()
        ]
        durable = any(write.outcome == Outcome.IN_FLIGHT for write in merged.values())
        return upserts, rejects, durable

    def _statement(self, name: str) -> str:
        statement = self._sql.get(name)
        if statement is None:
            if name == "upsert":
                statement = self.dialect.upsert(
                    self.table, _STATE_COLUMNS, ("sync_name", "key_digest"), _KEPT_WHEN_NULL
                )
            elif name == "reject":
                statement = (
                    f"INSERT INTO {self.rejects_table} ({', '.join(_REJECT_COLUMNS)}) "
                    f"VALUES ({self.dialect.markers(len(_REJECT_COLUMNS))})"
                )
            else:
                raise KeyError(name)
            self._sql[name] = statement
        return statement

    def _upsert(self, cursor: Any, rows: list[tuple[Any, ...]]) -> None:
        if self.dialect.name != "generic":
            cursor.executemany(self._statement("upsert"), rows)
            return
        # Any other database: update, and insert the keys that had no row yet.
        p = self.dialect.placeholder
        for row in rows:
            (
                sync_name,
                digest,
                key,
                crm_id,
                payload_hash,
                outcome,
                at,
                run_id,
                code,
                message,
                attempted,
                hint,
                source_hash,
            ) = row
            cursor.execute(
                f"UPDATE {self.table} SET source_key = {p}, crm_id = COALESCE({p}, crm_id), "
                f"payload_hash = COALESCE({p}, payload_hash), outcome = {p}, outcome_at = {p}, "
                f"run_id = {p}, error_code = {p}, error_message = {p}, "
                f"attempted_at = COALESCE({p}, attempted_at), create_hint = COALESCE({p}, create_hint), "
                f"source_hash = {p} WHERE sync_name = {p} AND key_digest = {p}",
                (
                    key,
                    crm_id,
                    payload_hash,
                    outcome,
                    at,
                    run_id,
                    code,
                    message,
                    attempted,
                    hint,
                    source_hash,
                    sync_name,
                    digest,
                ),
            )
            if cursor.rowcount == 0:
                cursor.execute(
                    f"INSERT INTO {self.table} ({', '.join(_STATE_COLUMNS)}) "
                    f"VALUES ({self.dialect.markers(len(_STATE_COLUMNS))})",
                    row,
                )

    def mark_unknown(self, records_or_digests: Iterable[StateRecord | str], code: str, message: str) -> int:
        """Turn ``in_flight`` intents into ``unknown`` outcomes, keeping their run id and ``attempted_at``.

        :param records_or_digests: records (or their digests) whose create was in flight when an
            earlier run stopped.
        :param code: the reason code to record.
        :param message: the reason to record.
        :returns: how many rows changed.
        """
        digests = [item.digest if isinstance(item, StateRecord) else item for item in records_or_digests]
        if not digests:
            return 0
        p = self.dialect.placeholder
        changed = 0
        with self._write() as cursor:
            for digest in digests:
                cursor.execute(
                    f"UPDATE {self.table} SET outcome = {p}, outcome_at = {p}, error_code = {p}, "
                    f"error_message = {p} WHERE sync_name = {p} AND key_digest = {p} AND outcome = {p}",
                    (
                        Outcome.UNKNOWN.value,
                        utc_now(),
                        code,
                        message,
                        self.sync_name,
                        digest,
                        IN_FLIGHT.value,
                    ),
                )
                changed += max(cursor.rowcount, 0)
        return changed

    def resolve(self, key_or_digest: str, crm_id: str | int) -> None:
        """Record the CRM id of a row whose create had an unknown outcome, once found in the CRM.

        The next run then sends that row as an update of ``crm_id`` (when it changed) instead
        of reporting it as unknown.

        :param key_or_digest: the row's key text, or the digest of a row the state holds.
        :param crm_id: the id the CRM gave the record.
        """
        if is_digest(key_or_digest):
            known = self.lookup([key_or_digest]).get(key_or_digest)
            if known is not None:
                self.apply([StateWrite(known.key, known.digest, Outcome.CREATED, crm_id=str(crm_id))])
                return
        self.apply(
            [StateWrite(key_or_digest, key_digest(key_or_digest), Outcome.CREATED, crm_id=str(crm_id))]
        )

    def resend(self, digests: Sequence[str], *, create_again: bool = False) -> int:
        """Mark rows to be sent again by the next run: their payload hash is forgotten.

        A row with a CRM id is then sent as an update of it. A row whose create is unresolved
        (``unknown`` or ``in_flight``) may already be stored in the CRM: sending it means
        creating it again, a possible duplicate, so it is only marked with ``create_again=True``
        (its outcome becomes ``failed``, code ``resend``, and its id is forgotten).

        :param digests: the rows' digests.
        :param create_again: accept creating unresolved rows again.
        :raises UnresolvedCreateError: an unresolved row is among them and ``create_again`` is
            not set; nothing was changed.
        :returns: how many rows were marked.
        """
        records = self.lookup(list(digests))
        unresolved = [record for record in records.values() if record.outcome in UNRESOLVED]
        if unresolved and not create_again:
            keys = ", ".join(record.key for record in unresolved[:10])
            raise UnresolvedCreateError(
                f"{len(unresolved)} of these rows have a create whose outcome is unknown ({keys}): it "
                "may be stored in the CRM already. Find it there and resolve() its id, or pass "
                "create_again=True to create it again, accepting a possible duplicate.",
                [record.digest for record in unresolved],
            )
        p = self.dialect.placeholder
        marked = 0
        with self._write() as cursor:
            for record in records.values():
                if record.outcome in UNRESOLVED:
                    cursor.execute(
                        f"UPDATE {self.table} SET payload_hash = NULL, source_hash = NULL, crm_id = NULL, outcome = {p}, "
                        f"error_code = {p}, error_message = {p}, outcome_at = {p} "
                        f"WHERE sync_name = {p} AND key_digest = {p}",
                        (
                            Outcome.FAILED.value,
                            "resend",
                            "marked to be created again",
                            utc_now(),
                            self.sync_name,
                            record.digest,
                        ),
                    )
                else:
                    cursor.execute(
                        f"UPDATE {self.table} SET payload_hash = NULL, source_hash = NULL "
                        f"WHERE sync_name = {p} AND key_digest = {p}",
                        (self.sync_name, record.digest),
                    )
                marked += max(cursor.rowcount, 0)
        return marked

    def retry_code(self, code: str) -> int:
        """Mark every row of this sync whose last error had ``code`` to be sent again (not the
        unresolved creates: see :meth:`resend`).

        :param code: the error code, e.g. ``24224``.
        :returns: how many rows were marked.
        """
        p = self.dialect.placeholder
        with self._write() as cursor:
            cursor.execute(
                f"UPDATE {self.table} SET payload_hash = NULL, source_hash = NULL WHERE sync_name = {p} "
                f"AND error_code = {p} "
                f"AND outcome NOT IN ({p}, {p})",
                (self.sync_name, code, Outcome.UNKNOWN.value, Outcome.IN_FLIGHT.value),
            )
            return max(cursor.rowcount, 0)

    def forget(self) -> int:
        """Delete this sync's state, leases, runs and rejects (every partition).

        :raises LeaseHeldError: another run holds a live lease of this sync.
        :returns: how many state rows were deleted.
        """
        p = self.dialect.placeholder
        with self._transaction() as cursor:
            parameters: list[Any] = []
            now = self.dialect.clock(parameters)
            cursor.execute(
                f"SELECT holder_run_id, dag_run_id, host, expires_at, partition_index FROM {self.leases_table} "
                f"WHERE sync_name = {p} AND holder_run_id IS NOT NULL AND holder_run_id <> {p} "
                f"AND expires_at > {now}",
                [self.sync_name, self.run_id, *parameters],
            )
            live = cursor.fetchone()
            if live is not None:
                raise self._held(live, int(live[4]))
            cursor.execute(f"DELETE FROM {self.table} WHERE sync_name = {p}", [self.sync_name])
            deleted = max(cursor.rowcount, 0)
            for table in (self.rejects_table, self.runs_table, self.leases_table):
                cursor.execute(f"DELETE FROM {table} WHERE sync_name = {p}", [self.sync_name])
        self._leases.lease = None
        return deleted

    def record_run(self, run: RunRecord) -> None:
        """Write (or rewrite) this run's row in ``<table>_runs``; needs no lease (a run that lost
        its lease still records itself).

        :param run: the run; its sync name and partition are taken from this state.
        """
        run = replace(
            run,
            sync_name=self.sync_name,
            partition_index=self.partition_index,
            partition_count=self.partition_count,
        )
        values = []
        for name in _RUN_COLUMNS:
            value = getattr(run, name)
            if name == "summary":
                value = json.dumps(dict(value), default=str, sort_keys=True)
            elif name in ("max_rejected", "max_unknown"):
                value = None if value is None else repr(value)
            values.append(value)
        p = self.dialect.placeholder
        columns = ", ".join(self.dialect.quote(name) for name in _RUN_COLUMNS)
        with self._transaction() as cursor:
            cursor.execute(f"DELETE FROM {self.runs_table} WHERE sync_run_id = {p}", [run.sync_run_id])
            cursor.execute(
                f"INSERT INTO {self.runs_table} ({columns}) VALUES ({self.dialect.markers(len(values))})",
                values,
            )

    # -- the lease -------------------------------------------------------------------------

    @property
    def lease_generation(self) -> int | None:
        """The generation of the lease this state holds, or ``None``."""
        lease = self._leases.lease
        return None if lease is None else lease.generation

    def acquire_lease(self, ttl_seconds: float, *, wait_seconds: float = 0.0) -> int:
        """Take this sync partition's lease (when free or expired) and return its new generation.

        Every write of this state from now on checks, in its own transaction, that the lease
        still has this generation, and renews it; :meth:`renew_lease` renews it without writing.
        Times are the database's clock, so workers' clocks need not agree.

        :param ttl_seconds: how long the lease lasts without a renewal.
        :param wait_seconds: how long to wait for another run's lease to be freed or expire.
        :raises LeaseHeldError: another run holds it (or a live lease of this sync with another
            ``partition_count``), after ``wait_seconds``.
        """
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        deadline = time.monotonic() + max(wait_seconds, 0.0)
        while True:
            generation, held = self._try_acquire(float(ttl_seconds))
            if generation is not None:
                self._leases.lease = _Lease(generation, float(ttl_seconds))
                self._leases.lost = None
                self._leases.renewed_at = time.monotonic()
                return generation
            assert held is not None
            left = deadline - time.monotonic()
            if left <= 0:
                raise held
            time.sleep(min(_LEASE_POLL_SECONDS, left))

    def _try_acquire(self, ttl: float) -> tuple[int | None, LeaseHeldError | None]:
        """One compare-and-set attempt: ``(generation, None)`` when taken, else ``(None, why not)``."""
        try:
            return self._compare_and_set(ttl)
        except _Refused as refused:
            return None, refused.held

    def _compare_and_set(self, ttl: float) -> tuple[int | None, LeaseHeldError | None]:
        p = self.dialect.placeholder
        key = [self.sync_name, self.partition_index]
        with self._transaction() as cursor:
            cursor.execute(
                self.dialect.insert_if_absent(
                    self.leases_table,
                    ("sync_name", "partition_index", "partition_count", "generation", "expires_at"),
                    ("sync_name", "partition_index"),
                ),
                [*key, self.partition_count, 0, 0.0],
            )
            parameters: list[Any] = [self.run_id, self.dag_run_id, socket.gethostname(), os.getpid()]
            parameters += [self.partition_count, ttl]
            acquired = self.dialect.clock(parameters)
            heartbeat = self.dialect.clock(parameters)
            expires = self.dialect.clock(parameters)
            parameters += [ttl, *key]
            now = self.dialect.clock(parameters)
            parameters.append(self.run_id)
            # Compare-and-set: only a free or expired lease (or this run's own) is taken.
            cursor.execute(
                f"UPDATE {self.leases_table} SET holder_run_id = {p}, dag_run_id = {p}, host = {p}, pid = {p}, "
                f"partition_count = {p}, ttl_seconds = {p}, generation = generation + 1, "
                f"acquired_at = {acquired}, heartbeat_at = {heartbeat}, expires_at = {expires} + {p} "
                f"WHERE sync_name = {p} AND partition_index = {p} "
                f"AND (holder_run_id IS NULL OR expires_at <= {now} OR holder_run_id = {p})",
                parameters,
            )
            taken = cursor.rowcount == 1
            cursor.execute(
                f"SELECT holder_run_id, dag_run_id, host, expires_at, generation FROM {self.leases_table} "
                f"WHERE sync_name = {p} AND partition_index = {p}",
                key,
            )
            row = cursor.fetchone()
            if not taken:
                return None, self._held(row, self.partition_index)
            # Partitions of another count overlap every one of ours: refuse while one is live.
            other: list[Any] = [self.sync_name, self.partition_count]
            now = self.dialect.clock(other)
            cursor.execute(
                f"SELECT holder_run_id, dag_run_id, host, expires_at, partition_index FROM {self.leases_table} "
                f"WHERE sync_name = {p} AND partition_count <> {p} AND holder_run_id IS NOT NULL "
                f"AND expires_at > {now}",
                other,
            )
            overlapping = cursor.fetchone()
            if overlapping is not None:
                raise _Refused(self._held(overlapping, int(overlapping[4])))
            return int(row[4]), None

    def _held(self, row: Sequence[Any], partition_index: int) -> LeaseHeldError:
        holder, dag_run, host, expires_at = (_text(row[0]), _text(row[1]), _text(row[2]), row[3])
        expires = None if expires_at is None else float(expires_at)
        left = (
            "" if expires is None else f" (in {max(expires - time.time(), 0):.0f} s by this machine's clock)"
        )
        return LeaseHeldError(
            f"sync {self.sync_name!r} partition {partition_index} is being loaded by sync run {holder} "
            f"(dag run {dag_run or 'unknown'}, host {host or 'unknown'}); its lease expires at "
            f"{_iso(expires)}{left} unless renewed. Two runs of one partition at once could create "
            "records twice: wait for it to finish (max_active_runs=1), or for its lease to expire.",
            holder_run_id=holder,
            dag_run_id=dag_run,
            host=host,
            expires_at=expires,
        )

    def renew_lease(self) -> None:
        """Extend this run's lease by its time to live from now.

        :raises LeaseLostError: another run took it over.
        """
        if self._leases.lease is None and self._leases.lost is None:
            raise RuntimeError("renew_lease() needs acquire_lease() first")
        with self._write():
            pass

    def _renew_if_due(self) -> None:
        # A run that only reads (a no-change run) renews its lease now and then as it goes.
        lease = self._leases.lease
        if lease is not None and time.monotonic() - self._leases.renewed_at > lease.ttl_seconds / 3:
            self.renew_lease()

    def release_lease(self) -> bool:
        """Free this run's lease, if it still holds it; returns whether it did."""
        lease = self._leases.lease
        if lease is None:
            return False
        self._leases.lease = None
        p = self.dialect.placeholder
        with self._transaction() as cursor:
            cursor.execute(
                f"UPDATE {self.leases_table} SET holder_run_id = NULL, expires_at = 0 "
                f"WHERE sync_name = {p} AND partition_index = {p} AND generation = {p} AND holder_run_id = {p}",
                [self.sync_name, self.partition_index, lease.generation, self.run_id],
            )
            return cursor.rowcount == 1

    # -- reading for the people who operate syncs (the command line, the Opportunity syncs page) --

    def open_existing(self) -> bool:
        """Connect without creating or migrating any table, and tell whether the state's tables exist.

        Looking at a state must not change it: a database whose tables are missing holds no sync.
        """
        self._connection = self._connect()
        self._prepare_connection()
        return all(
            self._table_exists(table)
            for table in (self.table, self.rejects_table, self.runs_table, self.leases_table)
        )

    def _table_exists(self, table: str) -> bool:
        # Asked of the catalogue where there is one, so that a broken database is an error, not
        # a missing table.
        p = self.dialect.placeholder
        if self.dialect.name == "sqlite":
            name = table.rsplit(".", 1)[-1]
            return bool(
                self._read(f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = {p}", [name])
            )
        if self.dialect.name == "postgresql":
            return bool(self._read(f"SELECT to_regclass({p}) IS NOT NULL", [table])[0][0])
        cursor = self.connection.cursor()
        try:
            cursor.execute(f"SELECT 1 FROM {table} WHERE 1 = 0")
            cursor.fetchall()
        except Exception:
            self._rollback(cursor)
            return False
        finally:
            cursor.close()
        if not self.dialect.autocommit:
            self.connection.commit()
        return True

    def has_sync(self) -> bool:
        """Whether this sync has a row in the state table or a run in the runs table."""
        p = self.dialect.placeholder
        return any(
            self._read(f"SELECT 1 FROM {table} WHERE sync_name = {p} LIMIT 1", [self.sync_name])
            for table in (self.table, self.runs_table)
        )

    def partitions_used(self) -> tuple[tuple[int, int], ...]:
        """The ``(partition_index, partition_count)`` pairs this sync's runs and leases used."""
        p = self.dialect.placeholder
        pairs: set[tuple[int, int]] = set()
        for table in (self.runs_table, self.leases_table):
            for index, count in self._read(
                f"SELECT DISTINCT partition_index, partition_count FROM {table} WHERE sync_name = {p}",
                [self.sync_name],
            ):
                pairs.add((int(index), int(count)))
        return tuple(sorted(pairs))

    def outcome_counts(self, partition: tuple[int, int] | None = None) -> dict[str, int]:
        """This sync's state rows per outcome, of one ``(index, count)`` partition or of all.

        :param partition: the partition, or ``None`` for the whole sync (a partition reads every key).
        """
        p = self.dialect.placeholder
        counts: dict[str, int] = {}
        if partition is None:
            for outcome, count in self._read(
                f"SELECT outcome, COUNT(*) FROM {self.table} WHERE sync_name = {p} GROUP BY outcome",
                [self.sync_name],
            ):
                counts[_text(outcome)] = int(count)
            return counts
        index, partition_count = partition
        for key, outcome in self._read(
            f"SELECT source_key, outcome FROM {self.table} WHERE sync_name = {p}", [self.sync_name]
        ):
            if partition_of(_text(key), partition_count) == index:
                counts[_text(outcome)] = counts.get(_text(outcome), 0) + 1
        return counts

    def records_with_outcomes(
        self, outcomes: Iterable[str], *, code: str | None = None
    ) -> list[tuple[StateRecord, str | None]]:
        """This sync's rows whose last outcome is one of ``outcomes``, newest first, each with its
        error message.

        :param outcomes: the outcomes to look for (``unknown``, ``rejected``, ...).
        :param code: only the rows whose last error code is this one.
        """
        wanted = [str(outcome) for outcome in outcomes]
        if not wanted:
            return []
        p = self.dialect.placeholder
        query = (
            f"SELECT {_RECORD_COLUMNS}, error_message FROM {self.table} "
            f"WHERE sync_name = {p} AND outcome IN ({self.dialect.markers(len(wanted))})"
        )
        parameters: list[Any] = [self.sync_name, *wanted]
        if code is not None:
            query += f" AND error_code = {p}"
            parameters.append(code)
        rows = self._read(query + " ORDER BY outcome_at DESC, source_key", parameters)
        return [(_record(row[:_RECORD_WIDTH]), _text(row[_RECORD_WIDTH])) for row in rows]

    def last_runs(self) -> list[RunRecord]:
        """The newest run of every sync and partition in the runs table, by sync name and partition."""
        columns = ", ".join(f"r.{self.dialect.quote(name)}" for name in _RUN_COLUMNS)
        rows = self._read(
            f"SELECT {columns} FROM {self.runs_table} r WHERE r.started_at = (SELECT MAX(o.started_at) "
            f"FROM {self.runs_table} o WHERE o.sync_name = r.sync_name AND o.partition_index = r.partition_index)",
            [],
        )
        newest: dict[tuple[str, int], RunRecord] = {}
        for row in rows:
            run = _run_of(row)
            key = (run.sync_name, run.partition_index)
            # Two runs started in the same microsecond: the later id, so every reader picks the same.
            if key not in newest or run.sync_run_id > newest[key].sync_run_id:
                newest[key] = run
        return [newest[key] for key in sorted(newest)]


def _run_of(row: Sequence[Any]) -> RunRecord:
    """A row of ``<table>_runs`` (its columns in ``_RUN_COLUMNS`` order) as a :class:`RunRecord`."""
    values = dict(zip(_RUN_COLUMNS, map(_text, row), strict=True))
    values["max_rejected"] = _threshold(values["max_rejected"])
    values["max_unknown"] = _threshold(values["max_unknown"])
    values["summary"] = json.loads(values["summary"]) if values["summary"] else {}
    for name in ("partition_index", "partition_count"):
        values[name] = int(values[name])
    return RunRecord(**values)


class _Refused(Exception):
    """Rolls an acquisition back (see :meth:`SyncState._try_acquire`), carrying the reason."""

    def __init__(self, held: LeaseHeldError) -> None:
        super().__init__(str(held))
        self.held = held


def _merge(earlier: StateWrite, later: StateWrite) -> StateWrite:
    """Two writes of one key in a group as one: what applying both in order would leave."""
    return replace(
        later,
        reject=False,
        crm_id=later.crm_id if later.crm_id is not None else earlier.crm_id,
        payload_hash=later.payload_hash if later.payload_hash is not None else earlier.payload_hash,
        attempted_at=later.attempted_at if later.attempted_at is not None else earlier.attempted_at,
        create_hint=later.create_hint if later.create_hint is not None else earlier.create_hint,
    )


def _hint_text(hint: Mapping[str, Any]) -> str:
    text = dumps(dict(hint), sort_keys=True)
    if len(text) > MAX_CREATE_HINT:
        raise ValueError(
            f"a create hint must be at most {MAX_CREATE_HINT} characters of JSON, not {len(text)}"
        )
    return text


_OUTCOMES = {outcome.value: outcome for outcome in Outcome}


def _record(row: Sequence[Any]) -> StateRecord:
    # Called once per looked-up row, in the no-change run's critical path: kept lean.
    digest, key, crm_id, payload_hash, outcome, run_id, code, outcome_at, attempted_at, hint, source = row
    if type(key) is not str:  # a driver that hands back bytes for binary-collated columns
        digest, key, crm_id, payload_hash, outcome, run_id, code, outcome_at, hint, source = map(
            _text, (digest, key, crm_id, payload_hash, outcome, run_id, code, outcome_at, hint, source)
        )
    return StateRecord(
        key,
        digest,
        crm_id,
        payload_hash,
        _OUTCOMES[outcome],
        run_id,
        code,
        outcome_at or "",
        None if attempted_at is None else float(attempted_at),
        # Only an unresolved create is ever looked up by its hint: the others skip the decoding.
        json.loads(hint) if hint and outcome in _UNRESOLVED_VALUES else None,
        source,
    )
