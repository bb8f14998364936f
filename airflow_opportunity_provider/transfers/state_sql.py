"""The SQL of the sync state for each database it runs on: column types, the database's clock,
upserts, and how a transaction is begun.

A dialect is chosen by name (``DbApiHook.dialect_name``), never guessed from a driver. Every
value is a bound parameter; only checked table names and this module's own text go into SQL.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

# Names ``DbApiHook.dialect_name`` (SQLAlchemy's dialect names) gives for each database.
_POSTGRES_NAMES = frozenset({"postgresql", "postgres", "psycopg", "psycopg2"})
_MYSQL_NAMES = frozenset({"mysql", "mariadb"})


@dataclass(frozen=True)
class StateDialect:
    """What differs between databases in the state's SQL.

    :param name: ``sqlite``, ``postgresql``, ``mysql`` or ``generic``.
    :param placeholder: the driver's parameter marker.
    :param text: a column type for text of any length.
    :param float: a column type for epoch seconds.
    :param sync_name: the column type of a sync name, compared byte for byte.
    :param digest: the column type of a key digest.
    :param table_options: appended to ``CREATE TABLE``.
    :param now: an SQL expression for the database's clock in epoch seconds, or ``""`` when the
        database has no portable one (the writer's clock is bound instead).
    :param begin: the statement that opens a write transaction, or ``""`` for the driver's own
        implicit transactions (the connection then stays out of autocommit).
    :param partial_indexes: whether ``CREATE INDEX ... WHERE`` is understood.
    """

    name: str
    placeholder: str
    text: str = "TEXT"
    float: str = "DOUBLE PRECISION"
    sync_name: str = "VARCHAR(250)"
    digest: str = "CHAR(32)"
    table_options: str = ""
    now: str = ""
    begin: str = ""
    partial_indexes: bool = False

    @property
    def autocommit(self) -> bool:
        """Whether the connection runs in autocommit mode, with explicit transactions for writes."""
        return bool(self.begin)

    def markers(self, count: int) -> str:
        """``count`` parameter markers separated by commas.

        :param count: how many.
        """
        return ", ".join([self.placeholder] * count)

    def clock(self, parameters: list[object]) -> str:
        """The SQL for "now" in epoch seconds; binds the writer's clock when the database has none.

        :param parameters: the statement's parameters, in order; a bound clock is appended.
        """
        if self.now:
            return self.now
        parameters.append(time.time())
        return self.placeholder

    def quote(self, identifier: str) -> str:
        """A column name quoted for this database (for names some databases reserve, e.g. ``rows``).

        :param identifier: a name made of letters, digits and underscores.
        """
        if self.name == "mysql":
            return f"`{identifier}`"
        return f'"{identifier}"'

    def upsert(self, table: str, columns: Sequence[str], key: Sequence[str], keep: Sequence[str]) -> str:
        """An insert that updates the row with the same ``key`` instead; ``keep`` columns keep
        their stored value when the new one is NULL.

        :param table: the table.
        :param columns: every column written, in parameter order.
        :param key: the columns of the primary key.
        :param keep: the columns whose NULL means "keep what is stored".
        """
        names = ", ".join(columns)
        values = self.markers(len(columns))
        others = [column for column in columns if column not in key]
        if self.name == "mysql":
            sets = ", ".join(
                f"{c} = COALESCE(VALUES({c}), {c})" if c in keep else f"{c} = VALUES({c})" for c in others
            )
            return f"INSERT INTO {table} ({names}) VALUES ({values}) ON DUPLICATE KEY UPDATE {sets}"
        sets = ", ".join(
            f"{c} = COALESCE(excluded.{c}, s.{c})" if c in keep else f"{c} = excluded.{c}" for c in others
        )
        return (
            f"INSERT INTO {table} AS s ({names}) VALUES ({values}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}"
        )

    def insert_if_absent(self, table: str, columns: Sequence[str], key: Sequence[str]) -> str:
        """An insert that does nothing when a row with the same ``key`` exists.

        :param table: the table.
        :param columns: the columns written.
        :param key: the columns of the primary key.
        """
        names = ", ".join(columns)
        values = self.markers(len(columns))
        if self.name == "mysql":
            return (
                f"INSERT INTO {table} ({names}) VALUES ({values}) ON DUPLICATE KEY UPDATE {key[0]} = {key[0]}"
            )
        return f"INSERT INTO {table} ({names}) VALUES ({values}) ON CONFLICT ({', '.join(key)}) DO NOTHING"


SQLITE = StateDialect(
    name="sqlite",
    placeholder="?",
    float="REAL",
    # SQLite's default BINARY collation compares bytes; julianday('now') has millisecond precision.
    now="((julianday('now') - 2440587.5) * 86400.0)",
    begin="BEGIN IMMEDIATE",
    partial_indexes=True,
)
POSTGRES = StateDialect(
    name="postgresql",
    placeholder="%s",
    # "C" compares bytes (memcmp), much faster than a locale's rules on every index probe, and
    # VARCHAR, not CHAR: a text parameter or text[] array then still uses the primary key.
    sync_name='VARCHAR(250) COLLATE "C"',
    digest='VARCHAR(32) COLLATE "C"',
    now="CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)",
    begin="BEGIN",
    partial_indexes=True,
)


def mysql_dialect(mariadb: bool) -> StateDialect:
    """The MySQL or MariaDB dialect: binary, no-pad collations, so that ``"a"`` and ``"A "`` differ.

    ``utf8mb4_bin`` is a PAD SPACE collation (``'a' = 'a '``); MariaDB calls its no-pad binary
    collation ``utf8mb4_nopad_bin``, MySQL 8 ``utf8mb4_0900_bin``.

    :param mariadb: whether the server is MariaDB.
    """
    collation = "utf8mb4_nopad_bin" if mariadb else "utf8mb4_0900_bin"
    return StateDialect(
        name="mysql",
        placeholder="%s",
        text=f"MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE {collation}",
        float="DOUBLE",
        sync_name=f"VARCHAR(250) CHARACTER SET utf8mb4 COLLATE {collation}",
        digest="CHAR(32) CHARACTER SET ascii COLLATE ascii_bin",
        table_options=f" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={collation}",
        # The session's time zone is set to UTC when the state connects.
        now="UNIX_TIMESTAMP(NOW(6))",
        begin="START TRANSACTION",
    )


def dialect_for(name: str, placeholder: str = "%s") -> StateDialect:
    """The dialect for a ``DbApiHook.dialect_name`` (``mysql`` stands for MySQL and MariaDB alike
    until the server says which, see :func:`mysql_dialect`).

    :param name: the dialect name.
    :param placeholder: the driver's parameter marker, for a database this module does not know.
    """
    name = name.lower().split("+")[0]
    if name == "sqlite":
        return SQLITE
    if name in _POSTGRES_NAMES:
        return POSTGRES
    if name in _MYSQL_NAMES:
        return mysql_dialect(mariadb=name == "mariadb")
    return StateDialect(name="generic", placeholder=placeholder)
