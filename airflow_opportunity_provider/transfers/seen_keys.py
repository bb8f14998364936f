"""The keys a run has already read, so that a second row of one key is never sent, in flat memory.

The first ``memory_keys`` digests are kept in a set (about 8 MiB for the default 100,000): most
syncs never go past it, and a set answers in a fraction of a SQLite statement's time. Past it,
every digest moves to a private temporary SQLite database that spills to disk past a fixed page
cache, so a table of ten million rows costs the same memory as one of a million. Use it from one
thread only (a SQLite connection does not change threads).

On disk, a batch costs one statement per 500 digests, run in one step: ``INSERT OR IGNORE`` of
them all, each with the batch's number. When the count of rows it added is the number of
digests (nearly always), none of them was there before; otherwise a ``SELECT`` of those stored by
an earlier batch names the duplicates. Few steps matter as much as few B-tree descents: the
bulk load marks the keys on its lookup thread, and each step lets go of the GIL and has to win
it back from the thread that reads the warehouse. Asking first (``SELECT ... IN``) and inserting after (``executemany``, one step a
digest) cost three times as much per digest, and ten times as much once the page cache held more
than a few MiB. Digests are stored as their 16 raw bytes (half the pages of their hex), in one
transaction as long as the database lives: nothing here outlives the run, so a commit per batch
would only cost. With a SQLite state, only the keys the state did not hold when the run began
come here: ``sqlite_state.SqliteKeyLookup`` marks the others by their row's rowid.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

# Digests per statement, under the limit on bound parameters of every SQLite (999 before 3.32).
_BATCH = 500
# Digests held in memory before they move to the temporary database.
MEMORY_KEYS = 100_000
# The page cache in KiB (negative: KiB rather than pages); beyond it pages go to the temp file.
_CACHE_KIB = 16 * 1024


class KeyedRow(Protocol):
    """A row with a key digest that can be marked as a duplicate."""

    digest: str
    duplicate: bool


Row = TypeVar("Row", bound=KeyedRow)


def first_of_each(rows: Iterable[Row]) -> tuple[dict[str, Row], int]:
    """The first row of each digest among ``rows``, with ``duplicate`` set on every later one.

    :param rows: the rows of one batch that have a usable key.
    :return: the first rows by digest, in order, and how many rows were later ones.
    """
    first: dict[str, Row] = {}
    duplicates = 0
    for row in rows:
        if row.digest in first:
            row.duplicate = True
            duplicates += 1
        else:
            first[row.digest] = row
    return first, duplicates


class SeenKeys:
    """Every key digest read so far in one run.

    :param memory_keys: how many digests to hold in memory before moving them all to disk.
    """

    def __init__(self, memory_keys: int = MEMORY_KEYS) -> None:
        self._memory_keys = memory_keys
        self._memory: set[str] | None = set()
        self._connection: sqlite3.Connection | None = None
        # The number of the last batch stored on disk; the digests moved from memory are batch 0.
        self._batch = 0
        # The insert statement for each size of chunk, built once.
        self._inserts: dict[int, str] = {}
        #: Distinct digests read so far.
        self.count = 0

    def _spill(self) -> sqlite3.Connection:
        """Move the digests held in memory to a new temporary database and use it from now on."""
        # "" opens a private temporary database on disk, deleted when the connection closes.
        connection = sqlite3.connect("", isolation_level=None, check_same_thread=True)
        connection.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute(
            "CREATE TABLE seen (digest BLOB PRIMARY KEY, batch INTEGER NOT NULL) WITHOUT ROWID"
        )
        connection.execute("BEGIN")
        # Sorted, the B-tree is built by appending to its last page.
        connection.executemany(
            "INSERT INTO seen (digest, batch) VALUES (?, 0)",
            [(bytes.fromhex(digest),) for digest in sorted(self._memory or ())],
        )
        self._memory = None
        self._connection = connection
        return connection

    def mark(self, rows: Iterable[KeyedRow]) -> int:
        """Set ``duplicate`` on every row whose key was read before (earlier or in this batch).

        :param rows: the rows of one batch that have a usable key.
        :return: how many rows were duplicates.
        """
        first, duplicates = first_of_each(rows)
        memory = self._memory
        if memory is not None and len(memory) + len(first) <= self._memory_keys:
            for digest, row in first.items():
                if digest in memory:
                    row.duplicate = True
                    duplicates += 1
            memory.update(first)
            self.count = len(memory)
            return duplicates
        connection = self._connection or self._spill()
        self._batch += 1
        raws = [bytes.fromhex(digest) for digest in first]
        added = 0
        for start in range(0, len(raws), _BATCH):
            chunk = raws[start : start + _BATCH]
            before = connection.total_changes
            connection.execute(self._insert(len(chunk)), [self._batch, *chunk])
            added += connection.total_changes - before
        self.count += added
        if added == len(raws):
            return duplicates
        for raw in self._stored_before(connection, raws):
            first[raw.hex()].duplicate = True
            duplicates += 1
        return duplicates

    def _insert(self, size: int) -> str:
        """The statement that stores ``size`` digests (parameters 2 on) as batch parameter 1."""
        statement = self._inserts.get(size)
        if statement is None:
            values = ",".join(f"(?{number}, ?1)" for number in range(2, size + 2))
            statement = f"INSERT OR IGNORE INTO seen (digest, batch) VALUES {values}"
            self._inserts[size] = statement
        return statement

    def _stored_before(self, connection: sqlite3.Connection, raws: Sequence[bytes]) -> list[bytes]:
        """The digests of ``raws`` that a batch before this one stored."""
        known: list[bytes] = []
        for start in range(0, len(raws), _BATCH):
            chunk = raws[start : start + _BATCH]
            markers = ",".join("?" * len(chunk))
            known += [
                raw
                for (raw,) in connection.execute(
                    f"SELECT digest FROM seen WHERE batch < ? AND digest IN ({markers})",
                    [self._batch, *chunk],
                )
            ]
        return known

    def close(self) -> None:
        """Drop the digests and the temporary database."""
        self._memory = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None
