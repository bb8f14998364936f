"""A local SQLite state in WAL mode, and its second writer for commits made on the event loop's thread.

In WAL mode with ``synchronous=NORMAL`` a commit appends to the WAL without a disk sync (tens
of microseconds), less than handing it to another thread costs. It survives a killed process
(the OS holds the WAL); only a power cut can lose the last commits. Checkpoints do sync.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from airflow_opportunity_provider.transfers.state import (
    _JOINED_RECORD_COLUMNS,
    _RECORD_WIDTH,
    _SETTLED_BATCH,
    _UNSETTLED,
    StateRecord,
    SyncState,
    _record,
)

# How long opening a new SQLite state file keeps trying to switch it to WAL while another
# partition is switching it too.
_WAL_SWITCH_SECONDS = 10.0


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


def enable_wal(connection: Any) -> str | None:
    """Set up a state connection: wait for locks, WAL mode, ``synchronous=NORMAL``.

    Returns the database file when it is in WAL mode (a second connection may then write it
    too), else ``None`` (an in-memory database, or a file system without WAL support).

    :param connection: a ``sqlite3`` connection.
    """
    connection.execute("PRAGMA busy_timeout=60000")
    mode = _switch_to_wal(connection)
    # WAL lets partitions on one machine read while another writes; NORMAL still survives a
    # killed process (only a power cut can lose the last commits).
    connection.execute("PRAGMA synchronous=NORMAL")
    files = {row[1]: row[2] for row in connection.execute("PRAGMA database_list")}
    if mode and str(mode[0][0]).lower() == "wal" and files.get("main"):
        return str(files["main"])
    return None


class SqliteLoopWriter(SyncState):
    """A second writer of a SQLite state in WAL mode, for the event loop's thread.

    It has a connection of its own (a DB-API connection never changes threads) that never waits
    for a lock: :meth:`apply` raises :func:`is_busy` errors instead, and never checkpoints
    (a checkpoint syncs the disk): the state's own connection does that. It checks the very
    lease its state holds, so a run that lost its lease cannot write here either.

    :param state: the state it writes for (opened).
    :param file: the state's database file.
    """

    def __init__(self, state: SyncState, file: str) -> None:
        super().__init__(lambda: sqlite3.connect(file, timeout=0.0), state.dialect, **state.sibling_options())
        self._leases = state._leases

    def open(self) -> None:
        """Connect (the tables exist already); see :meth:`open_writer`."""
        self.open_writer()

    def open_writer(self) -> None:
        """Connect from the thread that will write: no lock waits, no checkpoints."""
        connection = self._connect()
        self._connection = connection
        connection.isolation_level = None
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=0")
        connection.execute("PRAGMA wal_autocheckpoint=0")

    def loop_writer(self) -> SqliteLoopWriter | None:
        """A loop writer has none of its own."""
        return None


class SqliteKeyLookup:
    """A SQLite reader's lookups, which also mark the keys seen among the rows the state held
    when the run began.

    The keys seen must be exact and in flat memory; by digest (``seen_keys.SeenKeys``) each key
    past the first 100,000 costs a random insert into a B-tree of 16-byte digests, a third of
    a no-change run over a million rows. A key the state already held when the run began has
    a row whose ``rowid`` stays the same for the whole run: writes are upserts (they keep the
    rowid), and only ``forget``, which waits for the lease, deletes. So such a key is marked by
    its rowid, in a temporary table of this connection, by SQL run over the batch's lookup: the
    rowids come nearly in the order the rows were first loaded, so the insert appends to the
    B-tree's last pages, and no Python code runs per row.

    Invariant: a key is marked by rowid when its row's rowid is at most the table's largest
    rowid at the start (it existed then), and by digest otherwise (not in the state yet, or
    inserted by this run since), so each key is marked in one place for the whole run and a
    second row of it is always found there.

    (A ``VACUUM`` of the state file while a run goes may renumber rowids; nothing in this
    package runs one.)

    Looking a key up through the primary key's index, a random descent into a B-tree of a
    million digests, cost about 4.5 µs here. The rows mostly come in the order they were first
    loaded, which is the order of their rowids; so each batch first reads the range of rowids
    where its rows are expected (after where the last batch's rows lay, about as wide) in
    order, each row looked for among the batch's keys, and only the keys not found there go
    through the index: about 1 µs a key. When that finds fewer than half of a batch's keys, the
    window rests for a few batches. Whether a key is found in the window or through the index,
    it is the same row (the key is the primary key): the window changes only the speed.

    Per batch of keys, each statement handing the GIL back once: one puts the keys in a batch
    table, one looks them up (into a second one), one marks the rowids, one reads back the rows
    that need more than counting (few in a run with few changes) and where the batch's rows lay,
    and two empty the batch tables.

    :param reader: the reader (opened, on the thread that uses it).
    :param rowid: the table's largest rowid at the start.
    """

    # The temporary tables' page cache: a million rowids marked take about 8 MiB.
    _CACHE_KIB = 8 * 1024
    # A batch looked up in a window of rowids finding fewer of its keys than this share turns
    # the window off for _WINDOW_REST batches (the rows do not come in the order they were
    # first loaded), after which it is tried again.
    _WINDOW_HITS = 0.5
    _WINDOW_REST = 8

    def __init__(self, reader: SyncState, rowid: int) -> None:
        self._reader = reader
        self._start_rowid = rowid
        self._batch = 0
        self._statements: dict[int, str] = {}
        # Where the next batch's rows are expected to start, and rowids per key found.
        self._next_rowid: int | None = None
        self._spread = 1.0
        self._rest = 0
        self._windows = sqlite3.sqlite_version_info >= (3, 35)  # AS MATERIALIZED
        #: Batches looked up through a window of rowids, and the keys found in those windows
        #: rather than through the index (for tests and profiles).
        self.windows = 0
        self.found_in_windows = 0
        table = reader.table
        keys = "temp.opportunity_keys b"
        settled = f"CASE WHEN NOT ({_UNSETTLED}) THEN 1 ELSE 0 END"
        self._probe = (
            f"INSERT INTO temp.opportunity_lookup (n, rid, settled) SELECT b.n, s.rowid, {settled} "
            f"FROM {keys} LEFT JOIN {table} s ON s.sync_name = ? AND s.key_digest = b.d"
        )
        # The rows of a range of rowids, read in order, each looked for among the batch's keys;
        # only the keys not found there are looked up through the index.
        self._probe_window = (
            f"WITH w AS MATERIALIZED (SELECT b.n AS n, s.rowid AS rid, {settled} AS settled "
            f"FROM {table} s NOT INDEXED CROSS JOIN {keys} ON b.d = s.key_digest "
            "WHERE s.rowid BETWEEN ? AND ? AND s.sync_name = ?) "
            "INSERT INTO temp.opportunity_lookup (n, rid, settled) SELECT n, rid, settled FROM w "
            f"UNION ALL SELECT b.n, s.rowid, {settled} FROM {keys} "
            f"LEFT JOIN {table} s ON s.sync_name = ? AND s.key_digest = b.d "
            "WHERE b.n NOT IN (SELECT n FROM w)"
        )
        padding = ", NULL" * (_RECORD_WIDTH - 2)
        # The rows that need more than counting, and a last row (n = -1) that tells where this
        # batch's rows lie (for the next window): one statement, one hand-back of the GIL.
        self._results = (
            f"SELECT l.n, r.batch, l.rid <= ?, {_JOINED_RECORD_COLUMNS} FROM temp.opportunity_lookup l "
            "LEFT JOIN temp.opportunity_seen_rows r ON r.rid = l.rid "
            f"LEFT JOIN {table} s ON s.rowid = l.rid "
            "WHERE l.settled = 0 OR l.rid IS NULL OR l.rid > ? OR r.batch < ? "
            f"UNION ALL SELECT -1, min(rid), max(rid), count(rid), total(rid BETWEEN ? AND ?){padding} "
            "FROM temp.opportunity_lookup WHERE rid <= ?"
        )

    @classmethod
    def open(cls, reader: SyncState) -> SqliteKeyLookup | None:
        """The lookups of ``reader`` (a SQLite state), or ``None`` when its table has no rowid.

        :param reader: an opened reader of a SQLite state.
        """
        connection = reader.connection
        try:
            (rowid,) = connection.execute(f"SELECT coalesce(max(rowid), 0) FROM {reader.table}").fetchone()
        except sqlite3.OperationalError:
            return None  # a table made WITHOUT ROWID elsewhere: the digests mark every key
        connection.execute(f"PRAGMA temp.cache_size=-{cls._CACHE_KIB}")
        for name in ("opportunity_seen_rows", "opportunity_lookup", "opportunity_keys"):
            connection.execute(f"DROP TABLE IF EXISTS temp.{name}")
        connection.execute(
            "CREATE TEMP TABLE opportunity_seen_rows (rid INTEGER PRIMARY KEY, batch INTEGER NOT NULL)"
        )
        # One batch's keys (digest, number in the batch, fingerprint), and what the state holds
        # for each: its row, if any, and whether the fingerprint settles it.
        connection.execute(
            "CREATE TEMP TABLE opportunity_keys (d TEXT PRIMARY KEY, n INTEGER NOT NULL, f TEXT) WITHOUT ROWID"
        )
        connection.execute(
            "CREATE TEMP TABLE opportunity_lookup (n INTEGER PRIMARY KEY, rid INTEGER, settled INTEGER NOT NULL)"
        )
        return cls(reader, int(rowid))

    def lookup(
        self, rows: Sequence[tuple[str, str | None]]
    ) -> tuple[dict[str, StateRecord | None], list[int], list[int]]:
        """Look the distinct keys of one batch up and mark those the state held at the start.

        :param rows: ``(digest, fingerprint)`` of each row, every digest once.
        :return: what ``SyncState.lookup_unsettled`` returns (plus the records of the rows in
            the two lists, settled or not); the indexes in ``rows`` of the keys seen in an
            earlier batch; and the indexes of those not marked here (to be marked by digest).
        """
        connection = self._reader.connection
        found: dict[str, StateRecord | None] = {}
        seen: list[int] = []
        unmarked: list[int] = []
        start, sync_name = self._start_rowid, self._reader.sync_name
        # Each statement in autocommit: the settled test reads one snapshot, and a record read
        # for an unsettled row may be newer, which only this run can have written, and only for a
        # key it already marked (so that row is a duplicate either way).
        for offset in range(0, len(rows), _SETTLED_BATCH):
            chunk = rows[offset : offset + _SETTLED_BATCH]
            self._batch += 1
            batch = self._batch
            connection.execute(self._fill(len(chunk)), [value for row in chunk for value in row])
            try:
                window = self._window(len(chunk))
                if window is None:
                    window = (0, -1)
                    connection.execute(self._probe, (sync_name,))
                else:
                    self.windows += 1
                    connection.execute(self._probe_window, (*window, sync_name, sync_name))
                connection.execute(
                    "INSERT OR IGNORE INTO temp.opportunity_seen_rows (rid, batch) "
                    "SELECT rid, ? FROM temp.opportunity_lookup WHERE rid <= ?",
                    (batch, start),
                )
                # A key marked by an earlier batch was seen: a duplicate.
                for n, marked_in, marked, *record in connection.execute(
                    self._results, (start, start, batch, *window, start)
                ):
                    if n < 0:
                        self._place(len(chunk), window, marked_in, marked, record[0], record[1])
                        continue
                    index = offset + n
                    found[rows[index][0]] = None if record[0] is None else _record(record)
                    if marked_in is not None and marked_in < batch:
                        seen.append(index)
                    elif not marked:
                        unmarked.append(index)
            finally:
                connection.execute("DELETE FROM temp.opportunity_lookup")
                connection.execute("DELETE FROM temp.opportunity_keys")
        return found, seen, unmarked

    def _window(self, size: int) -> tuple[int, int] | None:
        """The range of rowids where the next ``size`` keys' rows are expected, or ``None``."""
        if not self._windows or self._next_rowid is None or self._rest > 0:
            self._rest = max(0, self._rest - 1)
            return None
        slack = 8 + size // 16
        width = int(size * self._spread * 1.1)
        return self._next_rowid - slack, self._next_rowid + width + slack

    def _place(
        self, size: int, window: tuple[int, int], low: int | None, high: int | None, found: int, hits: float
    ) -> None:
        """Learn where the batch's rows lay: the next window starts after them."""
        self.found_in_windows += int(hits)
        if window[1] >= window[0] and hits < size * self._WINDOW_HITS:
            self._rest = self._WINDOW_REST
        if not found or low is None or high is None:
            self._next_rowid = None
            return
        self._next_rowid = int(high) + 1
        self._spread = min(16.0, max(1.0, (int(high) - int(low) + 1) / int(found)))

    def _fill(self, size: int) -> str:
        """The statement that puts ``size`` keys in the batch table (built once a size)."""
        statement = self._statements.get(size)
        if statement is None:
            values = ", ".join(f"(?, {number}, ?)" for number in range(size))
            statement = f"INSERT INTO temp.opportunity_keys (d, n, f) VALUES {values}"
            self._statements[size] = statement
        return statement
