"""A group commit of the sync state on PostgreSQL in one statement, so one round trip.

The lease check, the upserts and the rejects are data-modifying CTEs of a single statement
run in autocommit mode: it is its own transaction, all or nothing, and one network round trip
however many rows the group holds (each column is bound as one array and ``unnest``-ed).

Durability. A group holding a create's intent (``in_flight``) commits with the server's
``synchronous_commit`` (on by default): the intent is on disk before the create is sent, so even
a crash of the database server cannot forget that a create may have been made. A group of
outcomes only commits with ``synchronous_commit = off`` for that one transaction: the server
answers before its WAL reaches the disk. What that can lose, and why create-once still holds:
- a killed or crashed worker loses nothing: the commit is in the server's memory, visible to
  every session at once, and written by the WAL writer within ``wal_writer_delay``;
- a crash of the server itself (or of its machine) can lose the outcome groups committed in
  the last ``3 x wal_writer_delay`` (600 ms by default). A lost ``created`` leaves that row's
  durable intent (``in_flight``), which the next run reports as unknown and never sends again;
  a lost ``updated``, ``rejected`` or ``failed`` leaves the earlier hash, so the row is sent
  again as an update of its stored id. Nothing is created twice.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow_opportunity_provider.transfers.state_sql import POSTGRES

if TYPE_CHECKING:
    from airflow_opportunity_provider.transfers.state import StateWrite, SyncState

_UPSERT_ARRAYS = (
    ("key_digest", "text"),
    ("source_key", "text"),
    ("crm_id", "text"),
    ("payload_hash", "text"),
    ("outcome", "text"),
    ("error_code", "text"),
    ("error_message", "text"),
    ("attempted_at", "float8"),
    ("create_hint", "text"),
    ("source_hash", "text"),
)
_REJECT_ARRAYS = (
    ("key_digest", "text"),
    ("source_key", "text"),
    ("outcome", "text"),
    ("error_code", "text"),
    ("error_message", "text"),
)
_KEEP = ("crm_id", "payload_hash", "attempted_at", "create_hint")
_UPDATED_ON_CONFLICT = (
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
# Positions in the tuples SyncState.apply builds (see _STATE_COLUMNS and _REJECT_COLUMNS).
_UPSERT_POSITIONS = (1, 2, 3, 4, 5, 8, 9, 10, 11, 12)
_REJECT_POSITIONS = (3, 4, 5, 6, 7)


def binds_binary_arrays(connection: Any) -> bool:
    """Whether ``connection`` can bind arrays in binary (psycopg 3's ``%b``; psycopg2 has text only).

    Binary arrays cost the client, and the server, a fraction of what text ones do to encode.

    :param connection: a DB-API connection to PostgreSQL.
    """
    return type(connection).__module__.split(".")[0] == "psycopg"


def group_statement(
    state: SyncState, upserts: bool, rejects: bool, lease: bool, durable: bool = True, binary: bool = False
) -> str:
    """The one statement of a group commit (one of 32 shapes, each built once per state).

    :param state: the sync state.
    :param upserts: the group changes state rows.
    :param rejects: the group appends rejects.
    :param lease: the state holds a lease to check and renew.
    :param durable: wait for the commit to reach the disk (see the module's docstring).
    :param binary: bind the arrays in binary (psycopg 3's ``%b``; psycopg2 has text only).
    """
    name = f"pg_group_{int(upserts)}{int(rejects)}{int(lease)}{int(durable)}{int(binary)}"
    cached = state._sql.get(name)
    if cached is not None:
        return cached
    now = POSTGRES.now
    ctes = []
    gate = "WHERE EXISTS (SELECT 1 FROM lease)" if lease else "WHERE true"
    if lease:
        ctes.append(
            f"lease AS (UPDATE {state.leases_table} SET heartbeat_at = {now}, "
            f"expires_at = {now} + ttl_seconds WHERE sync_name = %s AND partition_index = %s "
            "AND generation = %s AND holder_run_id = %s RETURNING 1)"
        )
    array = "%b" if binary else "%s"
    if upserts:
        arrays = ", ".join(f"{array}::{kind}[]" for _, kind in _UPSERT_ARRAYS)
        names = ", ".join(column for column, _ in _UPSERT_ARRAYS)
        sets = ", ".join(
            f"{column} = COALESCE(excluded.{column}, s.{column})"
            if column in _KEEP
            else f"{column} = excluded.{column}"
            for column in _UPDATED_ON_CONFLICT
        )
        ctes.append(
            f"upserted AS (INSERT INTO {state.table} AS s (sync_name, key_digest, source_key, crm_id, "
            "payload_hash, outcome, error_code, error_message, attempted_at, create_hint, source_hash, outcome_at, "
            "run_id) SELECT %s, w.key_digest, w.source_key, w.crm_id, w.payload_hash, w.outcome, w.error_code, "
            "w.error_message, w.attempted_at, w.create_hint, w.source_hash, %s, %s "
            f"FROM unnest({arrays}) AS w({names}) {gate} "
            f"ON CONFLICT (sync_name, key_digest) DO UPDATE SET {sets} RETURNING 1)"
        )
    if rejects:
        arrays = ", ".join(f"{array}::{kind}[]" for _, kind in _REJECT_ARRAYS)
        names = ", ".join(column for column, _ in _REJECT_ARRAYS)
        ctes.append(
            f"rejected AS (INSERT INTO {state.rejects_table} (sync_name, sync_run_id, dag_run_id, key_digest, "
            "source_key, outcome, error_code, error_message, recorded_at) "
            "SELECT %s, %s, %s, r.key_digest, r.source_key, r.outcome, r.error_code, r.error_message, %s "
            f"FROM unnest({arrays}) AS r({names}) {gate} RETURNING 1)"
        )
    relaxed = ""
    if not durable:
        # Local to this statement's own transaction; read when it commits.
        ctes.append("relaxed AS (SELECT set_config('synchronous_commit', 'off', true) AS setting)")
        relaxed = ", (SELECT setting FROM relaxed)"
    held = "(SELECT COUNT(*) FROM lease)" if lease else "1"
    statement = f"WITH {', '.join(ctes)} SELECT {held}{relaxed}"
    state._sql[name] = statement
    return statement


def group_call(
    state: SyncState,
    upserts: list[tuple[Any, ...]],
    rejects: list[tuple[Any, ...]],
    durable: bool,
    binary: bool,
) -> tuple[str, list[Any]]:
    """The one statement of a group commit and its parameters.

    :param state: the sync state.
    :param upserts: state rows, as :meth:`SyncState.group_rows` builds them.
    :param rejects: reject rows, likewise.
    :param durable: the group holds a create's intent: wait for the disk.
    :param binary: bind the arrays in binary (psycopg 3).
    :raises LeaseLostError: the run lost its lease before: nothing may be written.
    """
    state._leases.refuse_if_lost()
    lease = state._leases.lease
    parameters: list[Any] = []
    if lease is not None:
        parameters += [state.sync_name, state.partition_index, lease.generation, state.run_id]
    if upserts:
        parameters.append(state.sync_name)
        parameters += [upserts[0][6], state.run_id]  # one outcome_at and run id for the group
        parameters += [[row[i] for row in upserts] for i in _UPSERT_POSITIONS]
    if rejects:
        first = rejects[0]
        parameters += [first[0], first[1], first[2], first[8]]
        parameters += [[row[i] for row in rejects] for i in _REJECT_POSITIONS]
    statement = group_statement(state, bool(upserts), bool(rejects), lease is not None, durable, binary)
    return statement, parameters


def check_held(state: SyncState, row: Any) -> None:
    """Raise :class:`LeaseLostError` unless a group statement's answer ``row`` shows the lease held.

    :param state: the sync state.
    :param row: the one row the statement answered.
    """
    lease = state._leases.lease
    if lease is None:
        return
    if not row or int(row[0]) != 1:
        raise state._lease_lost(lease)
    state._leases.renewed_at = time.monotonic()


def apply_in_one_statement(
    state: SyncState, upserts: list[tuple[Any, ...]], rejects: list[tuple[Any, ...]], durable: bool = True
) -> None:
    """Commit a group: check and renew the lease, upsert, append rejects, in one statement.

    :param state: the sync state (on PostgreSQL, connected in autocommit mode).
    :param upserts: state rows, as :meth:`SyncState.group_rows` builds them.
    :param rejects: reject rows, likewise.
    :param durable: the group holds a create's intent: wait for the disk.
    :raises LeaseLostError: another run took the lease over; nothing was written.
    """
    statement, parameters = group_call(
        state, upserts, rejects, durable, binds_binary_arrays(state.connection)
    )
    cursor = state.connection.cursor()
    try:
        cursor.execute(statement, parameters)
        row = cursor.fetchone()
    finally:
        cursor.close()
    check_held(state, row)


async def connect_loop_writer(state: SyncState) -> Any | None:
    """A psycopg 3 ``AsyncConnection`` to the state's own database, for group commits made on the
    event loop; ``None`` unless the state is on PostgreSQL through psycopg 3 (psycopg2 has no
    such connection).

    The state thread would otherwise make each commit, and wait for the interpreter's lock
    after each of its waits on the server while the event loop holds it: measured during a
    first load, a commit took several milliseconds more there than on the loop, and varied more.

    :param state: the open sync state.
    """
    connection = state.connection
    if state.dialect.name != "postgresql" or not binds_binary_arrays(connection):
        return None
    import psycopg

    info = connection.info
    # The thread's own connection parameters (the DSN leaves the password out).
    return await psycopg.AsyncConnection.connect(info.dsn, password=info.password, autocommit=True)


async def apply_on_loop(state: SyncState, connection: Any, writes: list[StateWrite]) -> None:
    """:meth:`SyncState.apply` through ``connection`` (from :func:`connect_loop_writer`).

    :param state: the sync state.
    :param connection: its ``AsyncConnection``.
    :param writes: the changes, as :meth:`SyncState.apply` takes them.
    :raises LeaseLostError: another run took the lease over; nothing was written.
    """
    group = state.group_rows(writes)
    if group is None:
        return
    statement, parameters = group_call(state, *group, binary=True)
    async with connection.cursor() as cursor:
        await cursor.execute(statement, parameters)
        row = await cursor.fetchone()
    check_held(state, row)
