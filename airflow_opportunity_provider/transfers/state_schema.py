"""The sync state's tables: their DDL for each dialect, and the in-place migration of a state
table made by the first release (keyed by the key's text, truncated at 500 characters).

Several partitions may open one state at once: creating is idempotent, and a migration runs
under a lock and checks again, inside it, whether another partition has already done it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from airflow_opportunity_provider.transfers.keys import key_digest
from airflow_opportunity_provider.transfers.outcomes import UNRESOLVED_SQL
from airflow_opportunity_provider.transfers.state_sql import StateDialect

if TYPE_CHECKING:
    from airflow_opportunity_provider.transfers.state import SyncState

log = logging.getLogger(__name__)

# Appended to a table's name for the copy a migration builds (and for MySQL's old table).
_NEW_SUFFIX = "__v2"
_OLD_SUFFIX = "__v1"
_COPY_BATCH = 2000
_LEGACY_COLUMNS = (
    "sync_name, source_key, crm_id, payload_hash, outcome, outcome_at, run_id, error_code, error_message"
)


def state_table_ddl(dialect: StateDialect, table: str) -> str:
    """``CREATE TABLE`` of the state table: one row per sync and key digest.

    :param dialect: the database's dialect.
    :param table: the table's name.
    """
    d = dialect
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ("
        f"sync_name {d.sync_name} NOT NULL, "
        f"key_digest {d.digest} NOT NULL, "
        f"source_key {d.text} NOT NULL, "
        "crm_id VARCHAR(100), "
        "payload_hash VARCHAR(64), "
        "outcome VARCHAR(16) NOT NULL, "
        "outcome_at VARCHAR(32) NOT NULL, "
        "run_id VARCHAR(64), "
        "error_code VARCHAR(64), "
        f"error_message {d.text}, "
        f"attempted_at {d.float}, "
        f"create_hint {d.text}, "
        # The fingerprint of the source row last loaded (see source.SqlSource): a cache of
        # "these values made that payload", so an unchanged row is known without mapping it.
        f"source_hash {d.digest}, "
        f"PRIMARY KEY (sync_name, key_digest)){d.table_options}"
    )


def rejects_table_ddl(dialect: StateDialect, table: str) -> str:
    """``CREATE TABLE`` of the rejects table: one row per problem row and run.

    :param dialect: the database's dialect.
    :param table: the table's name.
    """
    d = dialect
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ("
        f"sync_name {d.sync_name} NOT NULL, "
        "sync_run_id VARCHAR(64) NOT NULL, "
        "dag_run_id VARCHAR(250), "
        f"key_digest {d.digest}, "
        f"source_key {d.text} NOT NULL, "
        "outcome VARCHAR(16) NOT NULL, "
        "error_code VARCHAR(64), "
        f"error_message {d.text}, "
        f"recorded_at VARCHAR(32) NOT NULL){d.table_options}"
    )


def runs_table_ddl(dialect: StateDialect, table: str) -> str:
    """``CREATE TABLE`` of the runs table: one row per sync run (columns as ``RunRecord``).

    :param dialect: the database's dialect.
    :param table: the table's name.
    """
    d = dialect
    q = d.quote
    counts = [
        "rows_read",
        "rows",
        "created",
        "updated",
        "unchanged",
        "rejected",
        "unknown",
        "failed",
        "reconciled",
        "adopted",
        "missing",
        "requests_sent",
        "retries",
        "rate_limited_answers",
    ]
    columns = [
        f"{q('sync_run_id')} VARCHAR(64) NOT NULL PRIMARY KEY",
        f"{q('sync_name')} {d.sync_name} NOT NULL",
        f"{q('partition_index')} INTEGER NOT NULL",
        f"{q('partition_count')} INTEGER NOT NULL",
        f"{q('dag_id')} VARCHAR(250)",
        f"{q('task_id')} VARCHAR(250)",
        f"{q('dag_run_id')} VARCHAR(250)",
        f"{q('started_at')} VARCHAR(32)",
        f"{q('finished_at')} VARCHAR(32)",
        f"{q('duration_seconds')} {d.float}",
        f"{q('verdict')} VARCHAR(32)",
        f"{q('failure_reason')} {d.text}",
        *(f"{q(name)} BIGINT NOT NULL DEFAULT 0" for name in counts),
        # A threshold is a count (an int) or a share (a float): kept as its Python text.
        f"{q('max_rejected')} VARCHAR(32)",
        f"{q('max_unknown')} VARCHAR(32)",
        f"{q('summary')} {d.text}",
    ]
    return f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(columns)}){d.table_options}"


def leases_table_ddl(dialect: StateDialect, table: str) -> str:
    """``CREATE TABLE`` of the leases table: one row per sync partition (times in epoch seconds
    of the database's clock).

    :param dialect: the database's dialect.
    :param table: the table's name.
    """
    d = dialect
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ("
        f"sync_name {d.sync_name} NOT NULL, "
        "partition_index INTEGER NOT NULL, "
        "partition_count INTEGER NOT NULL, "
        "holder_run_id VARCHAR(64), "
        "dag_run_id VARCHAR(250), "
        "host VARCHAR(255), "
        "pid INTEGER, "
        "generation BIGINT NOT NULL, "
        f"ttl_seconds {d.float}, "
        f"acquired_at {d.float}, "
        f"heartbeat_at {d.float}, "
        f"expires_at {d.float} NOT NULL, "
        f"PRIMARY KEY (sync_name, partition_index)){d.table_options}"
    )


def index_ddl(state: SyncState) -> list[str]:
    """The indexes the state's queries need (beyond the primary keys).

    :param state: the sync state.
    """
    d = state.dialect
    bare = _bare(state.table)
    exists = "" if d.name == "mysql" else "IF NOT EXISTS "
    if d.partial_indexes:
        # Only the few unresolved rows are in it: no cost on the writes of loaded rows.
        unresolved = (
            f"CREATE INDEX {exists}{bare}_unresolved_idx ON {state.table} (sync_name) "
            f"WHERE outcome IN {UNRESOLVED_SQL}"
        )
    else:
        unresolved = f"CREATE INDEX {exists}{bare}_unresolved_idx ON {state.table} (sync_name, outcome)"
    return [
        unresolved,
        f"CREATE INDEX {exists}{_bare(state.rejects_table)}_run_idx ON {state.rejects_table} (sync_name, sync_run_id)",
        f"CREATE INDEX {exists}{_bare(state.runs_table)}_sync_idx ON {state.runs_table} (sync_name, started_at)",
    ]


def ensure_tables(state: SyncState) -> None:
    """Create the four tables and their indexes when missing, and migrate older ones.

    :param state: the sync state, connected.
    """
    d = state.dialect
    tables = [
        (state.table, state_table_ddl(d, state.table)),
        (state.rejects_table, rejects_table_ddl(d, state.rejects_table)),
        (state.runs_table, runs_table_ddl(d, state.runs_table)),
        (state.leases_table, leases_table_ddl(d, state.leases_table)),
    ]
    for name, statement in tables:
        _create(state, name, statement)
    columns = columns_of(state, state.table)
    if "key_digest" not in columns:
        migrate_state_table(state)
    elif "source_hash" not in columns:
        _add_column(state, state.table, f"source_hash {d.digest}")
    if "key_digest" not in columns_of(state, state.rejects_table):
        _migrate_rejects_table(state)
    for statement in index_ddl(state):
        try:
            _run(state, statement)
        except Exception as error:  # an index is an optimisation; MySQL has no IF NOT EXISTS
            if "duplicate key name" not in str(error).lower():
                log.warning("Could not create an index of the sync state (%s): %s", statement, error)


def columns_of(state: SyncState, table: str) -> set[str]:
    """The lower-case column names of ``table``.

    :param state: the sync state, connected.
    :param table: a table that exists.
    """
    cursor = state.connection.cursor()
    try:
        cursor.execute(f"SELECT * FROM {table} WHERE 1 = 0")
        cursor.fetchall()
        names = {str(column[0]).lower() for column in cursor.description or ()}
    finally:
        cursor.close()
    if not state.dialect.autocommit:
        state.connection.commit()
    return names


def _run(state: SyncState, statement: str) -> None:
    connection = state.connection
    cursor = connection.cursor()
    try:
        cursor.execute(statement)
    except Exception:
        if not state.dialect.autocommit:
            connection.rollback()
        raise
    finally:
        cursor.close()
    if not state.dialect.autocommit:
        connection.commit()


def _create(state: SyncState, table: str, statement: str) -> None:
    try:
        _run(state, statement)
    except Exception:
        # Two partitions starting together may race to create the same table; PostgreSQL
        # then refuses one of them. The table exists either way: check (this raises if it
        # does not), and go on.
        columns_of(state, table)


def _bare(table: str) -> str:
    return table.rsplit(".", 1)[-1]


@contextmanager
def _migration(state: SyncState) -> Iterator[Any]:
    """A cursor holding the migration lock: the whole migration is one transaction where DDL is
    transactional (SQLite, PostgreSQL); MySQL commits each DDL statement, so it takes a named lock."""
    d = state.dialect
    if d.name == "mysql":
        cursor = state.connection.cursor()
        lock = f"opportunity_state_migration:{state.table}"
        try:
            cursor.execute("SELECT GET_LOCK(%s, 600)", [lock])
            cursor.fetchall()
            yield cursor
        finally:
            cursor.execute("SELECT RELEASE_LOCK(%s)", [lock])
            cursor.fetchall()
            cursor.close()
        return
    with state._transaction() as cursor:
        if d.name == "postgresql":
            cursor.execute(f"LOCK TABLE {state.table} IN ACCESS EXCLUSIVE MODE")
        yield cursor


def migrate_state_table(state: SyncState) -> int:
    """Rebuild a first-release state table (key: ``(sync_name, source_key)``) keyed by digest.

    Every row keeps its CRM id, hash, outcome and run; its digest is computed from the stored
    key text. Returns how many rows were copied (0 when another partition migrated it first).

    :param state: the sync state, connected.
    """
    d = state.dialect
    new = state.table + _NEW_SUFFIX
    copied = 0
    with _migration(state) as cursor:
        cursor.execute(f"SELECT * FROM {state.table} WHERE 1 = 0")
        cursor.fetchall()
        if "key_digest" in {str(column[0]).lower() for column in cursor.description or ()}:
            return 0  # another partition migrated it while this one waited for the lock
        log.warning("Migrating the sync state table %s to key digests (one time)", state.table)
        cursor.execute(f"DROP TABLE IF EXISTS {new}")  # a copy a crashed MySQL migration left
        cursor.execute(state_table_ddl(d, new))
        insert = (
            f"INSERT INTO {new} (key_digest, {_LEGACY_COLUMNS}, attempted_at, create_hint) "
            f"VALUES ({d.markers(12)})"
        )
        p = d.placeholder
        after: tuple[Any, Any] | None = None
        while True:
            # Keyset pages: memory stays flat however large the table is.
            if after is None:
                where, parameters = "", []
            else:
                where = f"WHERE sync_name > {p} OR (sync_name = {p} AND source_key > {p}) "
                parameters = [after[0], after[0], after[1]]
            cursor.execute(
                f"SELECT {_LEGACY_COLUMNS} FROM {state.table} {where}"
                f"ORDER BY sync_name, source_key LIMIT {_COPY_BATCH}",
                parameters,
            )
            rows = cursor.fetchall()
            if not rows:
                break
            cursor.executemany(insert, [(key_digest(str(row[1])), *row, None, None) for row in rows])
            copied += len(rows)
            after = (rows[-1][0], rows[-1][1])
        if d.name == "mysql":
            old = state.table + _OLD_SUFFIX
            cursor.execute(f"RENAME TABLE {state.table} TO {old}, {new} TO {state.table}")
            cursor.execute(f"DROP TABLE {old}")
        else:
            cursor.execute(f"DROP TABLE {state.table}")
            cursor.execute(f"ALTER TABLE {new} RENAME TO {_bare(state.table)}")
    log.warning("Migrated %d rows of %s", copied, state.table)
    return copied


def _add_column(state: SyncState, table: str, definition: str) -> None:
    """Add a nullable column that a table of an earlier release lacks (another partition may add it first).

    :param state: the sync state, connected.
    :param table: the table.
    :param definition: the column's name and type.
    """
    name = definition.split()[0]
    try:
        _run(state, f"ALTER TABLE {table} ADD COLUMN {definition}")
    except Exception:
        if name not in columns_of(state, table):
            raise


def _migrate_rejects_table(state: SyncState) -> None:
    """Give a first-release rejects table a digest column and keys of any length (old rows keep a
    NULL digest: the rejects are a record, never looked up by it)."""
    d = state.dialect
    table = state.rejects_table
    statements = [f"ALTER TABLE {table} ADD COLUMN key_digest {d.digest}"]
    if d.name == "postgresql":
        statements.append(f"ALTER TABLE {table} ALTER COLUMN source_key TYPE TEXT")
    elif d.name == "mysql":
        statements.append(f"ALTER TABLE {table} MODIFY source_key {d.text} NOT NULL")
        statements.append(f"ALTER TABLE {table} MODIFY sync_name {d.sync_name} NOT NULL")
    for statement in statements:
        try:
            _run(state, statement)
        except Exception:
            if "key_digest" not in columns_of(state, table):
                raise
            # another partition added it first
