"""The source reader: payload hashes, chunked reading and mapping, keys that name no row (the key
encoding and partitions themselves are in test_keys)."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from typing import Any

import pytest

from airflow_opportunity_provider.errors import OpportunityConfigurationError
from airflow_opportunity_provider.transfers.source import SqlSource, payload_hash


def test_payload_hash_ignores_key_order_and_sees_every_digit() -> None:
    assert payload_hash({"a": 1, "b": "x"}) == payload_hash({"b": "x", "a": 1})
    assert payload_hash({"v": Decimal("1.10")}) != payload_hash({"v": Decimal("1.1")})
    assert len(payload_hash({})) == 32


class _FakeHook:
    """Enough of a DbApiHook for SqlSource: a connection factory."""

    def __init__(self, connect: Any) -> None:
        self.get_conn = connect


class _CountingCursor:
    def __init__(self, cursor: sqlite3.Cursor, calls: list[int]) -> None:
        self._cursor = cursor
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def fetchall(self) -> Any:
        raise AssertionError("the source must never fetch the whole result")

    def fetchmany(self, size: int) -> Any:
        self._calls.append(size)
        return self._cursor.fetchmany(size)


class _CountingConnection:
    def __init__(self, connection: sqlite3.Connection, calls: list[int]) -> None:
        self._connection = connection
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def cursor(self) -> _CountingCursor:
        return _CountingCursor(self._connection.cursor(), self._calls)


@pytest.fixture
def database(tmp_path: Any) -> str:
    path = str(tmp_path / "source.db")
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (ref TEXT, name TEXT, amount TEXT)")
        connection.executemany(
            "INSERT INTO t VALUES (?, ?, ?)",
            [(f"R{n:03d}", None if n == 3 else f"Name {n}", f"{n}.50") for n in range(1, 26)]
            + [(None, "no key", "1")],
        )
    return path


def _source(database: str, calls: list[int], **options: Any) -> SqlSource:
    hook = _FakeHook(lambda: _CountingConnection(sqlite3.connect(database), calls))
    defaults: dict[str, Any] = {"key_columns": ["ref"], "mapping": {"name": "name"}, "chunk_size": 10}
    defaults.update(options)
    return SqlSource(hook, "SELECT * FROM t ORDER BY ref", **defaults)  # type: ignore[arg-type]


def _read_all(source: SqlSource) -> list[Any]:
    source.open()
    rows = []
    while (chunk := source.read_chunk()) is not None:
        rows.extend(chunk)
    source.close()
    return rows


def test_rows_are_read_in_chunks_with_fetchmany(database: str) -> None:
    calls: list[int] = []
    rows = _read_all(_source(database, calls))
    assert calls == [10, 10, 10, 10]  # 26 rows: 10 + 10 + 6, then the empty fetch
    assert len(rows) == 26
    by_key = {row.key: row for row in rows}
    assert by_key["R001"].payload == {"name": "Name 1"}
    assert by_key["R003"].payload == {}  # a NULL column leaves its field out
    assert by_key[""].problem == (
        "key",
        "row 1 of the query: key column 'ref' is NULL: a row needs every key column to name it",
    )


def test_a_callable_mapping_gets_the_row_as_a_dict_and_its_errors_reject_one_row(database: str) -> None:
    def mapping(row: dict[str, Any]) -> dict[str, Any]:
        if row["ref"] == "R002":
            raise ValueError("bad row")
        return {"OpportunityName": row["name"], "AcctPotential": Decimal(row["amount"])}

    rows = {row.key: row for row in _read_all(_source(database, [], mapping=mapping))}
    assert rows["R001"].payload == {"OpportunityName": "Name 1", "AcctPotential": Decimal("1.50")}
    assert rows["R002"].problem == ("mapping", "mapping failed: ValueError: bad row")


def test_partitions_split_the_rows_without_overlap(database: str) -> None:
    seen: list[str] = []
    for index in range(3):
        seen += [
            row.key for row in _read_all(_source(database, [], partition_index=index, partition_count=3))
        ]
    # The NULL-key row is reported once, by partition 0.
    assert sorted(seen) == sorted([f"R{n:03d}" for n in range(1, 26)] + [""])


def test_unknown_columns_are_named_with_the_columns_there_are(database: str) -> None:
    source = _source(database, [], key_columns=["id"], mapping={"name": "title"})
    with pytest.raises(OpportunityConfigurationError, match=r"'id', 'title'.*ref, name, amount"):
        source.open()


def test_count_rows_counts_the_whole_query_on_its_own_connection(database: str) -> None:
    assert _source(database, []).count_rows() == 26
    broken = SqlSource(
        _FakeHook(lambda: sqlite3.connect(database)), "SELECT nonsense", key_columns=["a"], mapping={}
    )  # type: ignore[arg-type]
    assert broken.count_rows() is None


def test_a_key_that_names_no_row_is_a_problem_of_that_row_and_long_keys_stay_whole(tmp_path: Any) -> None:
    path = str(tmp_path / "keys.db")
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (ref, name TEXT)")
        connection.executemany(
            "INSERT INTO t VALUES (?, ?)", [("x" * 10_000, "long"), (float("inf"), "inf"), ("ok", "fine")]
        )
    hook = _FakeHook(lambda: sqlite3.connect(path))
    rows = _read_all(SqlSource(hook, "SELECT * FROM t", key_columns=["ref"], mapping={"name": "name"}))  # type: ignore[arg-type]
    keys = [row.key for row in rows]
    assert "x" * 10_000 in keys
    problems = [row.problem for row in rows if row.problem]
    assert len(problems) == 1
    assert problems[0][0] == "key"
    assert problems[0][1].endswith("of the query: key column 'ref' is inf, which names no row")


def _fingerprints(database: str, sql: str = "SELECT * FROM t ORDER BY ref", **options: Any) -> dict[str, Any]:
    hook = _FakeHook(lambda: sqlite3.connect(database))
    defaults: dict[str, Any] = {"key_columns": ["ref"], "mapping": {"name": "name"}, "chunk_size": 10}
    defaults.update(options)
    source = SqlSource(hook, sql, **defaults)  # type: ignore[arg-type]
    source.open()
    rows = []
    while (chunk := source.read_chunk(defer_mapping=True)) is not None:
        rows.extend(chunk)
    source.close()
    return {row.key: row for row in rows if row.key}


def test_a_fingerprint_is_the_same_for_the_same_values_query_and_mapping(database: str) -> None:
    first, again = _fingerprints(database), _fingerprints(database)
    assert {key: row.fingerprint for key, row in first.items()} == {
        key: row.fingerprint for key, row in again.items()
    }
    assert len({row.fingerprint for row in first.values()}) == len(first)  # one per distinct row
    assert all(row.fingerprint and len(row.fingerprint) == 32 for row in first.values())


def test_a_fingerprint_changes_with_any_value_the_mapping_or_the_columns(database: str) -> None:
    """Equal fingerprints must mean equal payloads: whatever could change the payload changes it."""
    base = _fingerprints(database)["R001"].fingerprint
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE t SET amount = '1.5' WHERE ref = 'R001'")  # a column not mapped
    assert _fingerprints(database)["R001"].fingerprint != base
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE t SET amount = '1.50' WHERE ref = 'R001'")
    assert _fingerprints(database)["R001"].fingerprint == base
    # Another mapping of the same values.
    assert _fingerprints(database, mapping={"name": "name", "amount": "amount"})["R001"].fingerprint != base
    assert _fingerprints(database, mapping={"title": "name"})["R001"].fingerprint != base
    # The same values under swapped column names map to another payload.
    swapped = _fingerprints(database, sql="SELECT ref, amount AS name, name AS amount FROM t ORDER BY ref")
    assert swapped["R001"].fingerprint != base
    # A type the driver hands back differently is another fingerprint too (never a false match).
    typed = _fingerprints(
        database, sql="SELECT ref, name, CAST(amount AS REAL) AS amount FROM t ORDER BY ref"
    )
    assert typed["R001"].fingerprint != base


def test_deferred_rows_are_mapped_on_demand_and_a_callable_mapping_gets_no_fingerprint(database: str) -> None:
    rows = _fingerprints(database)
    row = rows["R001"]
    assert (row.payload, row.payload_hash, row.raw) == (None, None, ("R001", "Name 1", "1.50"))
    hook = _FakeHook(lambda: sqlite3.connect(database))
    source = SqlSource(hook, "SELECT * FROM t ORDER BY ref", key_columns=["ref"], mapping={"name": "name"})  # type: ignore[arg-type]
    source.open()
    source.map(row)
    source.close()
    assert (row.payload, row.raw) == ({"name": "Name 1"}, None)
    assert row.payload_hash == payload_hash({"name": "Name 1"})
    by_callable = _fingerprints(database, mapping=lambda values: {"name": values["name"]})
    assert all(row.fingerprint is None and row.payload is not None for row in by_callable.values())


def test_a_value_that_cannot_be_pickled_leaves_the_row_without_a_fingerprint(database: str) -> None:
    class Unpicklable:
        def __reduce__(self) -> Any:
            raise TypeError("no")

    class Cursor:
        description = (("ref",), ("name",))

        def __init__(self) -> None:
            self.rows = [("R1", Unpicklable())]

        def execute(self, sql: str) -> None:
            pass

        def fetchmany(self, size: int) -> list[Any]:
            rows, self.rows = self.rows, []
            return rows

        def close(self) -> None:
            pass

    class Connection:
        def cursor(self) -> Cursor:
            return Cursor()

        def rollback(self) -> None:
            pass

        def close(self) -> None:
            pass

    source = SqlSource(_FakeHook(Connection), "SELECT", key_columns=["ref"], mapping={"name": "name"})  # type: ignore[arg-type]
    source.open()
    chunk = source.read_chunk(defer_mapping=True)
    assert chunk is not None
    (row,) = chunk
    # No fingerprint: mapped at once, and the payload's hash (here: a mapping problem) decides.
    assert (row.fingerprint, row.raw) == (None, None)
    assert row.problem is not None
    assert row.problem[0] == "mapping"
