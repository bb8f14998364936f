"""The keys a run has already read, so that a second row of one key is never sent, in flat memory.

The first ``memory_keys`` digests are kept in a set (about 8 MiB for the default 100,000): most
syncs never go past it, and a set answers in a fraction of a SQLite statement's time. Past it,
every digest moves to a private temporary SQLite database that spills to disk past a small page
cache, so a table of ten million rows costs the same memory as one of a hundred thousand. Use
it from one thread only (a SQLite connection does not change threads).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Protocol

# Digests per statement, under SQLite's limit on bound parameters.
_BATCH = 500
# Digests held in memory before they move to the temporary database.
MEMORY_KEYS = 100_000
# The page cache in KiB (negative: KiB rather than pages); beyond it pages go to the temp file.
_CACHE_KIB = 4096


class KeyedRow(Protocol):
    """A row with a key digest that can be marked as a duplicate."""

    digest: str
    duplicate: bool


class SeenKeys:
    """Every key digest read so far in one run.

    :param memory_keys: how many digests to hold in memory before moving them all to disk.
    """

    def __init__(self, memory_keys: int = MEMORY_KEYS) -> None:
        self._memory_keys = memory_keys
        self._memory: set[str] | None = set()
        self._connection: sqlite3.Connection | None = None
        #: Distinct digests read so far.
        self.count = 0

    def _spill(self) -> sqlite3.Connection:
        """Move the digests held in memory to a new temporary database and use it from now on."""
        # "" opens a private temporary database on disk, deleted when the connection closes.
        connection = sqlite3.connect("", isolation_level=None, check_same_thread=True)
        connection.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("CREATE TABLE seen (digest TEXT PRIMARY KEY) WITHOUT ROWID")
        connection.executemany("INSERT INTO seen (digest) VALUES (?)", [(d,) for d in self._memory or ()])
        self._memory = None
        self._connection = connection
        return connection

    def mark(self, rows: Iterable[KeyedRow]) -> int:
        """Set ``duplicate`` on every row whose key was read before (earlier or in this batch).

        :param rows: the rows of one batch that have a usable key.
        :return: how many rows were duplicates.
        """
        first: dict[str, KeyedRow] = {}
        duplicates = 0
        for row in rows:
            if row.digest in first:
                row.duplicate = True
                duplicates += 1
            else:
                first[row.digest] = row
        digests = list(first)
        memory = self._memory
        if memory is not None and len(memory) + len(digests) <= self._memory_keys:
            for digest in digests:
                if digest in memory:
                    first[digest].duplicate = True
                    duplicates += 1
            memory.update(digests)
            self.count = len(memory)
            return duplicates
        connection = self._connection or self._spill()
        known = self._known(connection, digests)
        for digest in known:
            first[digest].duplicate = True
            duplicates += 1
        connection.executemany(
            "INSERT OR IGNORE INTO seen (digest) VALUES (?)", [(digest,) for digest in digests]
        )
        self.count += len(digests) - len(known)
        return duplicates

    @staticmethod
    def _known(connection: sqlite3.Connection, digests: Sequence[str]) -> list[str]:
        known: list[str] = []
        for start in range(0, len(digests), _BATCH):
            batch = digests[start : start + _BATCH]
            markers = ",".join("?" * len(batch))
            known += [
                row[0]
                for row in connection.execute(f"SELECT digest FROM seen WHERE digest IN ({markers})", batch)
            ]
        return known

    def close(self) -> None:
        """Drop the digests and the temporary database."""
        self._memory = None
        if self._connection is not None:
            self._connection.close()
