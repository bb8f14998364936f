"""The keys a run has already read, so that a second row of one key is never sent, in flat memory.

The digests live in a private temporary SQLite database that spills to disk past a small page
cache: a table of ten million rows costs the same memory as one of ten thousand. Use it from one
thread only (a SQLite connection does not change threads).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Protocol

# Digests per statement, under SQLite's limit on bound parameters.
_BATCH = 500
# The page cache in KiB (negative: KiB rather than pages); beyond it pages go to the temp file.
_CACHE_KIB = 4096


class KeyedRow(Protocol):
    """A row with a key digest that can be marked as a duplicate."""

    digest: str
    duplicate: bool


class SeenKeys:
    """Every key digest read so far in one run."""

    def __init__(self) -> None:
        # "" opens a private temporary database on disk, deleted when the connection closes.
        self._connection = sqlite3.connect("", isolation_level=None, check_same_thread=True)
        self._connection.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        self._connection.execute("PRAGMA journal_mode=OFF")
        self._connection.execute("PRAGMA synchronous=OFF")
        self._connection.execute("CREATE TABLE seen (digest TEXT PRIMARY KEY) WITHOUT ROWID")
        self.count = 0

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
        for known in self._known(digests):
            first[known].duplicate = True
            duplicates += 1
        self._connection.executemany(
            "INSERT OR IGNORE INTO seen (digest) VALUES (?)", [(digest,) for digest in digests]
        )
        self.count += len(digests)
        return duplicates

    def _known(self, digests: Sequence[str]) -> list[str]:
        known: list[str] = []
        for start in range(0, len(digests), _BATCH):
            batch = digests[start : start + _BATCH]
            markers = ",".join("?" * len(batch))
            known += [
                row[0]
                for row in self._connection.execute(
                    f"SELECT digest FROM seen WHERE digest IN ({markers})", batch
                )
            ]
        return known

    def close(self) -> None:
        """Drop the temporary database."""
        self._connection.close()
