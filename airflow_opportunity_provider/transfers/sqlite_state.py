"""A local SQLite state in WAL mode, and its second writer for commits made on the event loop's thread.

In WAL mode with ``synchronous=NORMAL`` a commit appends to the WAL without a disk sync (tens
of microseconds), less than handing it to another thread costs. It survives a killed process
(the OS holds the WAL); only a power cut can lose the last commits. Checkpoints do sync.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from airflow_opportunity_provider.transfers.state import SyncState

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
