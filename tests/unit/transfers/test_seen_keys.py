"""SeenKeys: a key read twice is a duplicate, in memory and after the digests moved to disk."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from airflow_opportunity_provider.transfers.keys import key_digest
from airflow_opportunity_provider.transfers.seen_keys import SeenKeys


@dataclass
class _Row:
    digest: str
    duplicate: bool = False


def _rows(*keys: str) -> list[_Row]:
    return [_Row(key_digest(key)) for key in keys]


def _duplicates(rows: list[_Row]) -> list[int]:
    return [number for number, row in enumerate(rows) if row.duplicate]


@pytest.mark.parametrize(
    "memory_keys", [0, 3, 4, 1_000], ids=["disk", "spills-mid-run", "fits-exactly", "memory"]
)
def test_every_second_read_of_a_key_is_a_duplicate_wherever_the_digests_are(memory_keys: int) -> None:
    seen = SeenKeys(memory_keys=memory_keys)
    try:
        first = _rows("a", "b", "a")
        assert seen.mark(first) == 1
        assert _duplicates(first) == [2]
        second = _rows("c", "b", "d")
        assert seen.mark(second) == 1
        assert _duplicates(second) == [1]
        # Past the memory bound for the small ones: keys from before the move are still known.
        third = _rows("e", "a", "d", "f", "f")
        assert seen.mark(third) == 3
        assert _duplicates(third) == [1, 2, 4]
        assert seen.count == 6
    finally:
        seen.close()


def test_the_digests_stay_in_memory_until_the_bound_then_move_to_disk() -> None:
    seen = SeenKeys(memory_keys=2)
    try:
        seen.mark(_rows("a", "b"))
        assert seen._connection is None
        seen.mark(_rows("c"))
        assert seen._connection is not None
        assert seen._memory is None
        (count,) = seen._connection.execute("SELECT COUNT(*) FROM seen").fetchone()
        assert count == 3
    finally:
        seen.close()


def test_a_long_run_with_repeats_marks_exactly_the_second_reads() -> None:
    generator = random.Random(7)
    keys = [str(generator.randrange(4_000)) for _ in range(9_000)]
    seen = SeenKeys(memory_keys=1_000)
    marked: list[bool] = []
    try:
        for start in range(0, len(keys), 700):
            batch = _rows(*keys[start : start + 700])
            duplicates = seen.mark(batch)
            assert duplicates == sum(row.duplicate for row in batch)
            marked += [row.duplicate for row in batch]
        assert seen._connection is not None
        expected: list[bool] = []
        read: set[str] = set()
        for key in keys:
            expected.append(key in read)
            read.add(key)
        assert marked == expected
        assert seen.count == len(read)
        (count,) = seen._connection.execute("SELECT COUNT(*) FROM seen").fetchone()
        assert count == len(read)
    finally:
        seen.close()
