"""The rows of a bulk load: a SQL query read in chunks, each row named by its key and mapped to a payload.

The query runs on any Airflow SQL connection (``DbApiHook``) and is read with ``fetchmany``,
through a server-side cursor on PostgreSQL, so the whole result is never in memory. A row
belongs to partition ``stable_hash(key) % partition_count``: the same on every machine and run
(see ``keys``).

With a mapping of fields to columns, each row also gets a *fingerprint*: a keyed BLAKE2b of the
pickled row values, the key made of the query's column names, the mapping and
``FINGERPRINT_VERSION``. Equal fingerprints mean equal values under the same mapping, hence the
same payload, so a row whose fingerprint is the one stored with its loaded outcome is unchanged
without being mapped or serialized (three times cheaper). The converse need not hold (a driver
handing back another type, a column that is not mapped, a new Python): such a row is mapped
and its payload's hash decides, as it does for a mapping callable, which gets no fingerprint.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_opportunity_provider.errors import OpportunityConfigurationError
from airflow_opportunity_provider.serialization import dumps
from airflow_opportunity_provider.transfers.keys import KeyEncodingError, encode_key, key_digest, partition_of

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

Mapping_ = Mapping[str, str] | Callable[[dict[str, Any]], Mapping[str, Any]]

__all__ = ["SourceRow", "SqlSource", "get_db_hook", "partition_of", "payload_hash"]

#: Part of every fingerprint's key. Raise it whenever the payload a mapping makes of the same
#: values changes (``SqlSource._map``, ``serialization.dumps``, ``payload_hash``): stored
#: fingerprints then stop matching, and every row is compared by its payload's hash once more.
FINGERPRINT_VERSION = 1


def get_db_hook(conn_id: str, *, purpose: str) -> DbApiHook:
    """The ``DbApiHook`` of an Airflow SQL connection, or an error that names the parameter.

    :param conn_id: the Airflow connection id.
    :param purpose: the operator parameter that named it, for messages.
    """
    from airflow.providers.common.compat.sdk import BaseHook
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    hook = BaseHook.get_connection(conn_id).get_hook()
    if not isinstance(hook, DbApiHook):
        raise OpportunityConfigurationError(
            f"{purpose}={conn_id!r} is a {type(hook).__name__}, not a SQL connection: point it at a "
            "connection whose provider has a DbApiHook (sqlite, postgres, mysql, snowflake, ...)."
        )
    return hook


def payload_hash(payload: Mapping[str, Any]) -> str:
    """A hash of the canonical JSON of a payload (keys sorted), to tell a changed row from an unchanged one.

    :param payload: the mapped payload.
    """
    canonical = dumps(payload, sort_keys=True).encode("utf-8")
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


@dataclass(slots=True)
class SourceRow:
    """One row of this partition, mapped; or the reason it could not be.

    :param key: the row's key text (``""`` when the key itself is unusable).
    :param payload: the mapped payload (``None`` when mapping failed).
    :param payload_hash: the hash of ``payload``.
    :param problem: why the row cannot be sent, as ``(code, reason)``.
    :param digest: the key's digest, its identity in the sync state (``""`` without a key).
    :param number: the row's position in the query result, from 1.
    :param duplicate: set when an earlier row of the run had the same key.
    :param fingerprint: the fingerprint of the row's values (``None`` with a mapping callable).
    :param raw: the row's values while it waits to be mapped (:meth:`SqlSource.map`), else ``None``.
    """

    key: str
    payload: dict[str, Any] | None
    payload_hash: str | None
    problem: tuple[str, str] | None = None
    digest: str = ""
    number: int = 0
    duplicate: bool = False
    fingerprint: str | None = None
    raw: Sequence[Any] | None = None


class SqlSource:
    """Runs the query and yields the rows of one partition, a chunk at a time.

    All its methods must run on one thread (a DB-API connection may not move between threads).

    :param hook: the source connection's hook.
    :param sql: the query (already rendered).
    :param key_columns: the columns that name a row.
    :param mapping: payload field -> column name, or a callable from the row (a dict) to the payload.
    :param partition_index: which partition to keep.
    :param partition_count: how many partitions there are.
    :param chunk_size: rows per ``fetchmany``.
    """

    def __init__(
        self,
        hook: DbApiHook,
        sql: str,
        *,
        key_columns: Sequence[str],
        mapping: Mapping_,
        partition_index: int = 0,
        partition_count: int = 1,
        chunk_size: int = 5000,
    ) -> None:
        self.hook = hook
        self.sql = sql
        self.key_columns = list(key_columns)
        self.mapping = mapping
        self.partition_index = partition_index
        self.partition_count = partition_count
        self.chunk_size = chunk_size
        self.rows_read = 0
        self._connection: Any = None
        self._cursor: Any = None
        self._columns: list[str] | None = None
        self._key_indexes: list[int] = []
        self._field_indexes: list[tuple[str, int]] = []
        # The keyed hash every fingerprint of this query and mapping starts from (copied: a
        # copy costs less than keying a new one); None: no fingerprints.
        self._fingerprint_base: Any = None
        # Rows fetched but not yet handed out: one fetchmany() is handed out in smaller batches,
        # so the first requests leave before the whole first chunk is mapped.
        self._fetched: list[Any] = []
        self._handed_out = 0
        self._exhausted = False

    def count_rows(self) -> int | None:
        """How many rows the query returns in all (for progress), or ``None`` when counting fails.

        It uses a connection of its own, closed before returning, so it may run on any thread.
        """
        query = self.sql.strip().rstrip(";")
        connection = None
        try:
            connection = self.hook.get_conn()
            cursor = connection.cursor()
            try:
                cursor.execute(f"SELECT COUNT(*) FROM ({query}) opportunity_source_rows")
                row = cursor.fetchone()
            finally:
                cursor.close()
            return int(row[0]) if row else None
        except Exception:
            # A count is a nicety for the time-left estimate; the load itself will report a bad query.
            return None
        finally:
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.close()

    def _open_connection(self) -> Any:
        if self._connection is None:
            self._connection = self.hook.get_conn()
        return self._connection

    def open(self) -> None:
        """Run the query and check the key and mapped columns against its result."""
        connection = self._open_connection()
        module = type(connection).__module__.split(".")[0]
        if module in ("psycopg", "psycopg2"):
            # A named cursor is a server-side one: fetchmany pulls rows from the server as it
            # goes, where a plain cursor would load the whole result into memory first.
            cursor = connection.cursor(name=f"opportunity_sync_{uuid.uuid4().hex[:12]}")
        else:
            cursor = connection.cursor()
        cursor.execute(self.sql)
        self._cursor = cursor
        # Some drivers (PostgreSQL named cursors) describe the result only after a fetch.
        self._fetched = list(cursor.fetchmany(self.chunk_size))
        self._columns = [column[0] for column in cursor.description or ()]
        self._check_columns()

    def _check_columns(self) -> None:
        columns = self._columns or []
        index = {name: position for position, name in enumerate(columns)}
        missing = [name for name in self.key_columns if name not in index]
        if isinstance(self.mapping, Mapping):
            missing += [column for column in self.mapping.values() if column not in index]
        if missing:
            raise OpportunityConfigurationError(
                f"The query returns no column named {', '.join(repr(m) for m in dict.fromkeys(missing))}; "
                f"its columns are {', '.join(columns) or '(none)'}. Fix key_columns or mapping, or the SQL."
            )
        self._key_indexes = [index[name] for name in self.key_columns]
        if isinstance(self.mapping, Mapping):
            self._field_indexes = [(field, index[column]) for field, column in self.mapping.items()]
            described = repr((FINGERPRINT_VERSION, tuple(columns), tuple(self.mapping.items())))
            key = hashlib.blake2b(described.encode("utf-8"), digest_size=32).digest()
            self._fingerprint_base = hashlib.blake2b(digest_size=16, key=key)

    def read_chunk(self, limit: int | None = None, *, defer_mapping: bool = False) -> list[SourceRow] | None:
        """The next rows of this partition, mapped (possibly none); ``None`` at the end.

        :param limit: hand out at most this many source rows (default: a whole ``chunk_size``).
        :param defer_mapping: leave the rows that have a fingerprint unmapped (``raw`` set), for
            :meth:`map` to map the ones whose fingerprint does not settle them.
        """
        if self._cursor is None:
            raise RuntimeError("SqlSource.open() has not run")
        if self._handed_out >= len(self._fetched):
            if self._exhausted:
                return None
            self._fetched = self._cursor.fetchmany(self.chunk_size)
            self._handed_out = 0
            if not self._fetched:
                self._exhausted = True
                return None
        start = self._handed_out
        end = len(self._fetched) if limit is None else min(len(self._fetched), start + limit)
        self._handed_out = end
        raw = self._fetched[start:end]
        first_number = self.rows_read + 1
        self.rows_read += len(raw)
        if end >= len(self._fetched):
            self._fetched, self._handed_out = [], 0  # let the chunk go before the next fetch
        prepare = self._prepare
        deferring = [defer_mapping and self._fingerprint_base is not None] * len(raw)
        numbers = range(first_number, first_number + len(raw))
        return [row for row in map(prepare, raw, numbers, deferring) if row]

    def _prepare(self, raw: Sequence[Any], number: int, defer: bool = False) -> SourceRow | None:
        key_indexes = self._key_indexes
        try:
            if len(key_indexes) == 1 and type(key := raw[key_indexes[0]]) is str:
                pass  # one text key column, the common case: the key is its value
            else:
                key = encode_key([raw[i] for i in key_indexes], self.key_columns)
        except KeyEncodingError as error:
            # Every partition sees such a row; only partition 0 reports it.
            if self.partition_index:
                return None
            return SourceRow("", None, None, ("key", f"row {number} of the query: {error}"), number=number)
        if self.partition_count > 1 and partition_of(key, self.partition_count) != self.partition_index:
            return None
        digest = key_digest(key)
        fingerprint = self._fingerprint(raw)
        row = SourceRow(key, None, None, None, digest, number, False, fingerprint, raw)
        if not defer or fingerprint is None:
            self.map(row)
        return row

    def _fingerprint(self, raw: Sequence[Any]) -> str | None:
        base = self._fingerprint_base
        if base is None:
            return None
        try:
            values = pickle.dumps(raw if type(raw) is tuple else tuple(raw), protocol=5)
        except Exception:
            return None  # a driver's value that cannot be pickled: the payload's hash decides
        hasher = base.copy()
        hasher.update(values)
        return str(hasher.hexdigest())

    def map(self, row: SourceRow) -> None:
        """Map a row read with ``defer_mapping``: set its payload and hash, or its problem.

        :param row: a row of :meth:`read_chunk` whose ``raw`` is still set.
        """
        raw = row.raw
        if raw is None:
            return
        row.raw = None
        try:
            payload = self._map(raw)
            row.payload, row.payload_hash = payload, payload_hash(payload)
        except Exception as error:
            # One bad row (a mapping bug, a value JSON cannot hold) must not stop the load.
            row.problem = ("mapping", f"mapping failed: {type(error).__name__}: {error}")

    def _map(self, raw: Sequence[Any]) -> dict[str, Any]:
        mapping = self.mapping
        if isinstance(mapping, Mapping):
            # A NULL column leaves its field out: these APIs cannot clear a field anyway, and the
            # schema then says "required field is missing" where one is required.
            return {field: raw[i] for field, i in self._field_indexes if raw[i] is not None}
        row = dict(zip(self._columns or (), raw, strict=False))
        payload = mapping(row)
        if not isinstance(payload, Mapping):
            raise TypeError(f"the mapping callable returned {type(payload).__name__}, not a dict")
        return dict(payload)

    def close(self) -> None:
        """Close the cursor and the connection."""
        for thing in (self._cursor, self._connection):
            if thing is not None:
                try:
                    if thing is self._connection:
                        thing.rollback()
                    thing.close()
                except Exception:
                    pass
        self._cursor = None
        self._connection = None
