"""The sync state of a bulk load, and its rejects, in two tables on any SQL database.

Per sync name and source key the state keeps the CRM id, a hash of the last payload sent, the
last outcome and its time. A v1 create is recorded as ``in_flight`` before it is sent, so that a
run killed mid-request leaves a trace the next run reports as an unknown outcome.
Every method runs on the caller's thread; the bulk load calls them from one thread only.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow_opportunity_provider.errors import OpportunityConfigurationError

DEFAULT_STATE_TABLE = "opportunity_sync_state"
REJECTS_SUFFIX = "_rejects"
IN_FLIGHT = "in_flight"

# Lengths of the key columns; a longer source key is rejected with a clear reason.
MAX_SYNC_NAME = 250
MAX_SOURCE_KEY = 500
# Keys per lookup query, under every database's limit on bound parameters.
_LOOKUP_BATCH = 500
# How long opening a new SQLite state file keeps trying to switch it to WAL while another
# partition is switching it too.
_WAL_SWITCH_SECONDS = 10.0
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StateRecord:
    """What the state holds for one source key.

    :param crm_id: the CRM's id of the record (v1 id, or the v2 ``Id/Type`` route).
    :param payload_hash: the hash of the last payload sent.
    :param outcome: the last outcome (``created``, ``updated``, ``rejected``, ``failed``,
        ``unknown`` or ``in_flight``).
    :param run_id: the sync run that wrote it.
    """

    crm_id: str | None
    payload_hash: str | None
    outcome: str
    run_id: str | None


@dataclass(slots=True)
class StateWrite:
    """One change to the state of a key, and optionally a row for the rejects table.

    ``crm_id`` and ``payload_hash`` left as ``None`` keep what the state already holds.

    :param source_key: the row's key.
    :param outcome: the outcome to record.
    :param payload_hash: the hash of the payload this outcome is for.
    :param crm_id: the CRM id learnt from the answer.
    :param error_code: the platform's error code (or this package's reason code).
    :param error_message: the platform's message (or this package's reason).
    :param reject: also append a row to the rejects table.
    :param update_state: write the state row (``False`` to add only a reject row).
    """

    source_key: str
    outcome: str
    payload_hash: str | None = None
    crm_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    reject: bool = False
    update_state: bool = True


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


def is_busy(error: BaseException) -> bool:
    """Whether ``error`` is SQLite saying another connection holds the lock (nothing was written).

    :param error: what a call on a SQLite connection raised.
    """
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(error, sqlite3.OperationalError) and code is not None and code & 0xFF in (5, 6)


def _switch_to_wal(connection: Any) -> list[Any]:
    """Put a SQLite state file in WAL mode, and return what the pragma answered.

    Two partitions opening a new file in the same instant race to switch it; SQLite then answers
    "database is locked" at once instead of waiting for its busy timeout, so try again briefly.
    """
    deadline = time.monotonic() + _WAL_SWITCH_SECONDS
    while True:
        try:
            return list(connection.execute("PRAGMA journal_mode=WAL").fetchall())
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dialect_of(connection: Any) -> str:
    module = type(connection).__module__.split(".")[0]
    if module == "sqlite3":
        return "sqlite"
    if module in ("psycopg", "psycopg2", "pg8000", "asyncpg"):
        return "postgres"
    if module in ("MySQLdb", "pymysql", "mysql"):
        return "mysql"
    return "generic"


class SyncState:
    """The state and rejects tables of one sync, reached through one DB-API connection.

    :param connect: returns a new DB-API connection (``DbApiHook.get_conn`` or ``sqlite3.connect``).
    :param placeholder: the driver's parameter marker (``?`` or ``%s``).
    :param sync_name: the sync whose rows this state holds.
    :param run_id: this run's id, written with every change.
    :param table: the state table (``table`` or ``schema.table``).
    :param rejects_table: the rejects table; ``<table>_rejects`` by default.
    :param location: where the state lives, for messages (never a password).
    :param dag_run_id: the Airflow run, written with every reject.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        placeholder: str,
        *,
        sync_name: str,
        run_id: str,
        table: str = DEFAULT_STATE_TABLE,
        rejects_table: str | None = None,
        location: str = "",
        dag_run_id: str | None = None,
    ) -> None:
        if len(sync_name) > MAX_SYNC_NAME:
            raise OpportunityConfigurationError(f"sync_name must be at most {MAX_SYNC_NAME} characters.")
        self._connect = connect
        self._p = placeholder
        self.sync_name = sync_name
        self.run_id = run_id
        self.table = check_table_name(table)
        self.rejects_table = check_table_name(rejects_table or table + REJECTS_SUFFIX)
        self.location = location
        self.dag_run_id = dag_run_id
        self._connection: Any = None
        self.dialect = "generic"
        # The file of a SQLite state in WAL mode, which a second connection may write as well.
        self._wal_file: str | None = None

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

        return cls(connect, "?", location=f"sqlite file {file}", **kwargs)

    @classmethod
    def from_conn_id(cls, conn_id: str, **kwargs: Any) -> SyncState:
        """State on the database of an Airflow SQL connection (any ``DbApiHook``).

        :param conn_id: the Airflow connection id.
        :param kwargs: passed on to the constructor.
        """
        from airflow.providers.common.sql.hooks.sql import DbApiHook

        from airflow_opportunity_provider.transfers.source import get_db_hook

        hook: DbApiHook = get_db_hook(conn_id, purpose="state_conn_id")
        return cls(hook.get_conn, hook.placeholder, location=f"connection {conn_id!r}", **kwargs)

    # -- set-up ----------------------------------------------------------------------------

    def open(self) -> None:
        """Connect and create both tables when they are missing."""
        connection = self._connect()
        self._connection = connection
        self.dialect = _dialect_of(connection)
        if self.dialect == "sqlite":
            # WAL lets partitions on one machine read while another writes; NORMAL still
            # survives a killed process (only a power cut can lose the last commits).
            connection.execute("PRAGMA busy_timeout=60000")
            mode = _switch_to_wal(connection)
            connection.execute("PRAGMA synchronous=NORMAL")
            files = {row[1]: row[2] for row in connection.execute("PRAGMA database_list")}
            if mode and str(mode[0][0]).lower() == "wal" and files.get("main"):
                self._wal_file = str(files["main"])
        self._create_tables()

    def loop_writer(self) -> SyncState | None:
        """A second writer of this state for small commits made without a thread hand-off, or ``None``.

        Only a SQLite state in a file in WAL mode has one: such a commit appends to the WAL
        without a sync (about 50 microseconds), less than handing it to another thread costs.
        The writer has a connection of its own (a DB-API connection never changes threads)
        that never waits for a lock: :meth:`apply` raises :func:`is_busy` errors instead, and
        never checkpoints (a checkpoint syncs the disk): call :meth:`checkpoint` on this state's
        own connection now and then. Call this after :meth:`open`, and :meth:`open_writer` on
        the result from the thread that will write.
        """
        if self._wal_file is None:
            return None
        file = self._wal_file

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(file, timeout=0.0)

        return SyncState(
            connect,
            "?",
            sync_name=self.sync_name,
            run_id=self.run_id,
            table=self.table,
            rejects_table=self.rejects_table,
            location=self.location,
            dag_run_id=self.dag_run_id,
        )

    def open_writer(self) -> None:
        """Connect a :meth:`loop_writer` (the tables exist already): no lock waits, no checkpoints."""
        connection = self._connect()
        self._connection = connection
        self.dialect = _dialect_of(connection)
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=0")
        connection.execute("PRAGMA wal_autocheckpoint=0")

    def checkpoint(self) -> None:
        """Copy what the WAL holds into a SQLite state's file, without waiting for anyone."""
        if self._wal_file is not None:
            self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close(self) -> None:
        """Close the connection."""
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

    def _create_tables(self) -> None:
        text = "TEXT"
        statements = [
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            f"sync_name VARCHAR({MAX_SYNC_NAME}) NOT NULL, "
            f"source_key VARCHAR({MAX_SOURCE_KEY}) NOT NULL, "
            "crm_id VARCHAR(100), "
            "payload_hash VARCHAR(64), "
            "outcome VARCHAR(16) NOT NULL, "
            "outcome_at VARCHAR(32) NOT NULL, "
            "run_id VARCHAR(64), "
            "error_code VARCHAR(64), "
            f"error_message {text}, "
            "PRIMARY KEY (sync_name, source_key))",
            f"CREATE TABLE IF NOT EXISTS {self.rejects_table} ("
            f"sync_name VARCHAR({MAX_SYNC_NAME}) NOT NULL, "
            "sync_run_id VARCHAR(64) NOT NULL, "
            "dag_run_id VARCHAR(250), "
            f"source_key VARCHAR({MAX_SOURCE_KEY}) NOT NULL, "
            "outcome VARCHAR(16) NOT NULL, "
            "error_code VARCHAR(64), "
            f"error_message {text}, "
            "recorded_at VARCHAR(32) NOT NULL)",
        ]
        if self.dialect in ("sqlite", "postgres"):
            index = self.rejects_table.rsplit(".", 1)[-1] + "_run_idx"
            statements.append(
                f"CREATE INDEX IF NOT EXISTS {index} ON {self.rejects_table} (sync_name, sync_run_id)"
            )
        for statement in statements:
            self._execute_ddl(statement)

    def _execute_ddl(self, statement: str) -> None:
        connection = self.connection
        try:
            cursor = connection.cursor()
            cursor.execute(statement)
            cursor.close()
            connection.commit()
        except Exception:
            # Two partitions starting together may race to create the same table; PostgreSQL
            # then refuses one of them. The table exists either way: check, and go on.
            connection.rollback()
            if not self._table_exists(statement):
                raise

    def _table_exists(self, statement: str) -> bool:
        if " INDEX " in statement:
            return True  # an index is an optimisation; the tables are what matter
        name = statement.split()[5]
        try:
            cursor = self.connection.cursor()
            cursor.execute(f"SELECT 1 FROM {name} WHERE 1 = 0")
            cursor.close()
            self.connection.rollback()
        except Exception:
            self.connection.rollback()
            return False
        return True

    # -- reading ---------------------------------------------------------------------------

    def lookup(self, source_keys: Sequence[str]) -> dict[str, StateRecord]:
        """The state of each of ``source_keys`` that has one.

        :param source_keys: the keys of one chunk of source rows.
        """
        found: dict[str, StateRecord] = {}
        connection = self.connection
        cursor = connection.cursor()
        try:
            for start in range(0, len(source_keys), _LOOKUP_BATCH):
                batch = list(source_keys[start : start + _LOOKUP_BATCH])
                markers = ", ".join([self._p] * len(batch))
                cursor.execute(
                    f"SELECT source_key, crm_id, payload_hash, outcome, run_id FROM {self.table} "
                    f"WHERE sync_name = {self._p} AND source_key IN ({markers})",
                    [self.sync_name, *batch],
                )
                for key, crm_id, payload_hash, outcome, run_id in cursor.fetchall():
                    found[key] = StateRecord(crm_id, payload_hash, outcome, run_id)
        finally:
            cursor.close()
        # End the read transaction, so that PostgreSQL does not hold a snapshot open.
        connection.commit()
        return found

    def keys_with_outcome(self, outcome: str) -> list[str]:
        """Every key of this sync whose last outcome is ``outcome`` (e.g. ``in_flight``).

        :param outcome: the outcome to look for.
        """
        cursor = self.connection.cursor()
        try:
            cursor.execute(
                f"SELECT source_key FROM {self.table} WHERE sync_name = {self._p} AND outcome = {self._p}",
                [self.sync_name, outcome],
            )
            keys = [row[0] for row in cursor.fetchall()]
        finally:
            cursor.close()
        self.connection.commit()
        return keys

    def rejects(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """The rejects of this sync (of one run when ``run_id`` is given), oldest first.

        :param run_id: a sync run id, or ``None`` for every run.
        """
        query = (
            "SELECT sync_run_id, dag_run_id, source_key, outcome, error_code, error_message, recorded_at "
            f"FROM {self.rejects_table} WHERE sync_name = {self._p}"
        )
        parameters: list[Any] = [self.sync_name]
        if run_id is not None:
            query += f" AND sync_run_id = {self._p}"
            parameters.append(run_id)
        cursor = self.connection.cursor()
        try:
            cursor.execute(query + " ORDER BY recorded_at, source_key", parameters)
            names = [column[0] for column in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        finally:
            cursor.close()
        self.connection.commit()
        return rows

    # -- writing ---------------------------------------------------------------------------

    def apply(self, writes: Iterable[StateWrite]) -> None:
        """Write a group of changes in one transaction (one commit for the whole group).

        :param writes: the changes, in order; a key may appear more than once.
        """
        now = _now()
        upserts: list[tuple[Any, ...]] = []
        rejects: list[tuple[Any, ...]] = []
        for write in writes:
            if write.update_state:
                upserts.append(
                    (
                        self.sync_name,
                        write.source_key,
                        write.crm_id,
                        write.payload_hash,
                        write.outcome,
                        now,
                        self.run_id,
                        write.error_code,
                        write.error_message,
                    )
                )
            if write.reject:
                rejects.append(
                    (
                        self.sync_name,
                        self.run_id,
                        self.dag_run_id,
                        write.source_key,
                        write.outcome,
                        write.error_code,
                        write.error_message,
                        now,
                    )
                )
        if not upserts and not rejects:
            return
        connection = self.connection
        with self._transaction(connection) as cursor:
            if upserts:
                self._upsert(cursor, upserts)
            if rejects:
                markers = ", ".join([self._p] * 8)
                cursor.executemany(
                    f"INSERT INTO {self.rejects_table} (sync_name, sync_run_id, dag_run_id, source_key, "
                    f"outcome, error_code, error_message, recorded_at) VALUES ({markers})",
                    rejects,
                )

    @staticmethod
    @contextmanager
    def _transaction(connection: Any) -> Iterator[Any]:
        """A cursor whose statements are committed together, or rolled back together on any error."""
        cursor = connection.cursor()
        try:
            yield cursor
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
        finally:
            cursor.close()

    def _upsert(self, cursor: Any, rows: list[tuple[Any, ...]]) -> None:
        p = self._p
        columns = "sync_name, source_key, crm_id, payload_hash, outcome, outcome_at, run_id, error_code, error_message"
        values = ", ".join([p] * 9)
        if self.dialect in ("sqlite", "postgres"):
            # A NULL crm_id or hash keeps the stored one: a rejected update keeps the record's id.
            cursor.executemany(
                f"INSERT INTO {self.table} ({columns}) VALUES ({values}) "
                "ON CONFLICT (sync_name, source_key) DO UPDATE SET "
                f"crm_id = COALESCE(excluded.crm_id, {self._bare_table}.crm_id), "
                f"payload_hash = COALESCE(excluded.payload_hash, {self._bare_table}.payload_hash), "
                "outcome = excluded.outcome, outcome_at = excluded.outcome_at, run_id = excluded.run_id, "
                "error_code = excluded.error_code, error_message = excluded.error_message",
                rows,
            )
            return
        if self.dialect == "mysql":
            cursor.executemany(
                f"INSERT INTO {self.table} ({columns}) VALUES ({values}) ON DUPLICATE KEY UPDATE "
                "crm_id = COALESCE(VALUES(crm_id), crm_id), "
                "payload_hash = COALESCE(VALUES(payload_hash), payload_hash), "
                "outcome = VALUES(outcome), outcome_at = VALUES(outcome_at), run_id = VALUES(run_id), "
                "error_code = VALUES(error_code), error_message = VALUES(error_message)",
                rows,
            )
            return
        # Any other database: update, and insert the keys that had no row yet.
        for row in rows:
            sync_name, key, crm_id, payload_hash, outcome, at, run_id, code, message = row
            cursor.execute(
                f"UPDATE {self.table} SET crm_id = COALESCE({p}, crm_id), "
                f"payload_hash = COALESCE({p}, payload_hash), outcome = {p}, outcome_at = {p}, "
                f"run_id = {p}, error_code = {p}, error_message = {p} "
                f"WHERE sync_name = {p} AND source_key = {p}",
                (crm_id, payload_hash, outcome, at, run_id, code, message, sync_name, key),
            )
            if cursor.rowcount == 0:
                cursor.execute(f"INSERT INTO {self.table} ({columns}) VALUES ({values})", row)

    @property
    def _bare_table(self) -> str:
        # ON CONFLICT names the existing row by the table's name without its schema.
        return self.table.rsplit(".", 1)[-1]

    def mark_unknown(self, source_keys: Sequence[str], code: str, message: str) -> None:
        """Turn the ``in_flight`` intents of ``source_keys`` into ``unknown`` outcomes.

        The run id is left as it was, naming the run whose create was interrupted.

        :param source_keys: keys whose create was in flight when an earlier run stopped.
        :param code: the reason code to record.
        :param message: the reason to record.
        """
        p = self._p
        connection = self.connection
        with self._transaction(connection) as cursor:
            cursor.executemany(
                f"UPDATE {self.table} SET outcome = {p}, outcome_at = {p}, error_code = {p}, "
                f"error_message = {p} WHERE sync_name = {p} AND source_key = {p} AND outcome = {p}",
                [("unknown", _now(), code, message, self.sync_name, key, IN_FLIGHT) for key in source_keys],
            )

    def resolve(self, source_key: str, crm_id: str | int) -> None:
        """Record the CRM id of a row whose create had an unknown outcome, once found in the CRM.

        The next run then sends that row as an update of ``crm_id`` (when it changed) instead
        of reporting it as unknown.

        :param source_key: the row's key.
        :param crm_id: the id the CRM gave the record.
        """
        self.apply([StateWrite(source_key, "created", crm_id=str(crm_id), error_code=None)])
