"""SqliteKeyLookup: every batch's lookup answers what the state holds, and its keys seen by rowid
are exactly the keys read before, whatever the order of the rows and whether a window of rowids
found them, beside another sync's rows and rows this run inserts."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from airflow_opportunity_provider.transfers.keys import key_digest
from airflow_opportunity_provider.transfers.outcomes import Outcome
from airflow_opportunity_provider.transfers.sqlite_state import SqliteKeyLookup
from airflow_opportunity_provider.transfers.state import StateWrite, SyncState

LOADED = 600


def _fingerprint(key: str) -> str:
    return key_digest(f"values of {key}")


def _states(path: Path) -> tuple[SyncState, SyncState]:
    """This sync's state with LOADED keys, loaded in order, another sync's rows between them."""
    state = SyncState.local(path, sync_name="dag.task", run_id="run-1")
    other = SyncState.local(path, sync_name="dag.other", run_id="run-9")
    state.open()
    other.open()
    for number in range(LOADED):
        key = f"K{number:04d}"
        # A few keys are not loaded (rejected) or not fingerprinted: never settled.
        outcome = Outcome.REJECTED if number % 97 == 0 else Outcome.CREATED
        fingerprint = None if number % 89 == 0 else _fingerprint(key)
        state.apply(
            [
                StateWrite(
                    key,
                    key_digest(key),
                    outcome,
                    payload_hash="h",
                    crm_id=str(number),
                    source_hash=fingerprint,
                )
            ]
        )
        if number % 7 == 0:
            other.apply([StateWrite(key, key_digest(key), Outcome.CREATED, source_hash=_fingerprint(key))])
    return state, other


def _run(
    state: SyncState, batches: list[list[str]], insert_after: dict[int, list[str]]
) -> tuple[list[tuple[set[str], set[str], set[str], set[str]]], SqliteKeyLookup]:
    """Look each batch up; after batch ``i``, write the keys ``insert_after[i]`` (as this run's
    creates). Returns, per batch, the keys found, seen before and unmarked, and the keys that
    the fingerprint did not settle, as the state held them at that moment."""
    reader = state.reader()
    assert reader is not None
    reader.open_reader()
    lookup = SqliteKeyLookup.open(reader)
    assert lookup is not None
    answers = []
    for number, batch in enumerate(batches):
        pairs = [(key_digest(key), _fingerprint(key)) for key in batch]
        stored = state.lookup([digest for digest, _ in pairs])
        unsettled = {
            key
            for key, (digest, fingerprint) in zip(batch, pairs, strict=True)
            if digest not in stored
            or stored[digest].source_hash != fingerprint
            or stored[digest].outcome not in (Outcome.CREATED, Outcome.UPDATED)
        }
        found, seen, unmarked = lookup.lookup(pairs)
        by_digest = {key_digest(key): key for key in batch}
        for digest, record in found.items():
            # What the state holds, or None where it holds nothing.
            assert record == stored.get(digest), by_digest[digest]
        answers.append(
            (
                {by_digest[digest] for digest in found},
                {batch[index] for index in seen},
                {batch[index] for index in unmarked},
                unsettled,
            )
        )
        for key in insert_after.get(number, []):
            state.apply(
                [
                    StateWrite(
                        key, key_digest(key), Outcome.CREATED, crm_id="new", source_hash=_fingerprint(key)
                    )
                ]
            )
    reader.close()
    return answers, lookup


def _expected(batches: list[list[str]], loaded: set[str]) -> list[tuple[set[str], set[str]]]:
    """Per batch: the keys held at the start that an earlier batch read, and the keys not held."""
    read: set[str] = set()
    expected = []
    for batch in batches:
        expected.append(
            (
                {key for key in batch if key in loaded and key in read},
                {key for key in batch if key not in loaded},
            )
        )
        read.update(batch)
    return expected


@pytest.mark.parametrize("order", ["as loaded", "shuffled", "reversed"])
def test_each_batch_answers_what_the_state_holds_and_seen_keys_are_exact(tmp_path: Path, order: str) -> None:
    state, other = _states(tmp_path / "state.db")
    keys = [f"K{number:04d}" for number in range(LOADED)]
    if order == "shuffled":
        random.Random(7).shuffle(keys)
    elif order == "reversed":
        keys.reverse()
    # New keys among them, keys read again in a later batch, and a new key read again after
    # this run wrote its row (its rowid is past the start's: it stays marked by digest).
    keys[100:100] = ["N0001", "N0002"]
    keys += [keys[5], keys[300], "N0001", "N0003", keys[301]]
    batches = [keys[start : start + 37] for start in range(0, len(keys), 37)]
    # No batch holds a key twice (the engine passes each digest of a batch once).
    batches = [list(dict.fromkeys(batch)) for batch in batches]
    answers, lookup = _run(state, batches, insert_after={3: ["N0001", "N0002"]})
    loaded = {f"K{number:04d}" for number in range(LOADED)}
    for number, ((found, seen, unmarked, unsettled), (seen_expected, unmarked_expected)) in enumerate(
        zip(answers, _expected(batches, loaded), strict=True)
    ):
        assert seen == seen_expected, number
        assert unmarked == unmarked_expected, number
        # The settled keys that are neither are left out: a no-change batch reads no record.
        assert found == unsettled | seen | unmarked, number
    if order == "as loaded":
        assert lookup.found_in_windows >= 0.9 * LOADED  # nearly every key was found in a window
    else:
        assert lookup.found_in_windows <= 0.1 * LOADED
        assert lookup.windows <= len(batches) // 4  # windows that miss are soon stopped
    state.close()
    other.close()


def test_a_key_loaded_before_the_start_is_found_again_after_this_run_updates_it(tmp_path: Path) -> None:
    state, other = _states(tmp_path / "state.db")
    batches = [
        [f"K{number:04d}" for number in range(0, 50)],
        [f"K{number:04d}" for number in range(50, 100)],
        ["K0010", "K0060"],
    ]
    # This run writes K0010 again (an upsert keeps its rowid): still marked by rowid, still seen.
    answers, _ = _run(state, batches, insert_after={0: ["K0010"]})
    assert answers[2][1] == {"K0010", "K0060"}
    assert answers[2][2] == set()
    state.close()
    other.close()
