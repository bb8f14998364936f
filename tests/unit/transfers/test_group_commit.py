"""The state thread: small commits on the event loop's thread for a local SQLite state, in the
order they were asked for, through the thread when the file is locked, and failures that stop
the load."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_opportunity_provider.errors import OpportunityError
from airflow_opportunity_provider.transfers import group_commit
from airflow_opportunity_provider.transfers.group_commit import StateThread
from airflow_opportunity_provider.transfers.keys import key_digest
from airflow_opportunity_provider.transfers.outcomes import Outcome
from airflow_opportunity_provider.transfers.state import LeaseLostError, StateWrite, SyncState

IN_FLIGHT = Outcome.IN_FLIGHT

Body = Callable[[StateThread, SyncState], Awaitable[Any]]


def _with_state_thread(state: SyncState, body: Body) -> Any:
    """Open ``state`` on a state thread with its loop writer, run ``body``, close everything."""

    async def main() -> Any:
        thread = StateThread(state, asyncio.get_running_loop())
        await thread.call(state.open)
        await thread.start_loop_writer()
        try:
            return await body(thread, state)
        finally:
            thread.stop_loop_writer()
            await thread.call(state.close)
            await thread.close()

    return asyncio.run(main())


def _write(key: str, outcome: str, **fields: Any) -> StateWrite:
    return StateWrite(key, key_digest(key), Outcome(outcome), **fields)


def _found(records: dict[str, Any]) -> dict[str, Any]:
    """Records by key instead of digest."""
    return {record.key: record for record in records.values()}


def _local(path: Path) -> SyncState:
    return SyncState.local(path, sync_name="dag.task", run_id="run-1")


def _applying_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the name of the thread that runs each ``SyncState.apply``."""
    names: list[str] = []
    apply = SyncState.apply

    def recording(self: SyncState, writes: Any) -> None:
        names.append(threading.current_thread().name)
        apply(self, writes)

    monkeypatch.setattr(SyncState, "apply", recording)
    return names


def test_writes_to_a_local_sqlite_state_commit_on_the_event_loop_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = _applying_threads(monkeypatch)

    async def body(thread: StateThread, state: SyncState) -> Any:
        assert thread.loop_commits == 0
        await thread.write(_write("A", IN_FLIGHT, payload_hash="h"))
        await thread.write(_write("A", "created", payload_hash="h", crm_id="7"), _write("B", IN_FLIGHT))
        # Writes asked for in one pass of the event loop go in one commit.
        await asyncio.gather(*(thread.write(_write(f"K{n}", IN_FLIGHT)) for n in range(5)))
        return thread.loop_commits, _found(
            await thread.call(state.lookup, [key_digest(k) for k in ("A", "B", "K4")])
        )

    loop_commits, found = _with_state_thread(_local(tmp_path / "state.db"), body)
    assert loop_commits == 3
    assert threads == [threading.current_thread().name] * 3
    assert (found["A"].outcome, found["A"].crm_id) == ("created", "7")
    assert found["B"].outcome == IN_FLIGHT
    assert found["K4"].outcome == IN_FLIGHT
    # Committed for good: another connection sees every row.
    with sqlite3.connect(tmp_path / "state.db") as other:
        assert other.execute("SELECT COUNT(*) FROM opportunity_sync_state").fetchone() == (7,)


def test_a_call_sees_every_write_asked_for_before_it(tmp_path: Path) -> None:
    async def body(thread: StateThread, state: SyncState) -> Any:
        writing = asyncio.ensure_future(thread.write(_write("A", "created", crm_id="1")))
        await asyncio.sleep(0)  # the write is gathered, its commit not made yet
        found = await thread.call(state.lookup, [key_digest("A")])
        await writing
        return _found(found)

    found = _with_state_thread(_local(tmp_path / "state.db"), body)
    assert found["A"].outcome == "created"


def test_a_state_locked_by_another_process_is_written_by_the_thread_without_blocking_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    threads = _applying_threads(monkeypatch)

    async def body(thread: StateThread, state: SyncState) -> Any:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # holds the write lock, as another partition's commit would
        try:
            writing = asyncio.ensure_future(thread.write(_write("A", IN_FLIGHT)))
            ticks = 0
            for _ in range(20):  # the event loop keeps running while the write waits
                await asyncio.sleep(0.005)
                ticks += 1
            assert not writing.done()
        finally:
            other.execute("COMMIT")
            other.close()
        await writing
        return ticks, thread.loop_commits, _found(await thread.call(state.lookup, [key_digest("A")]))

    ticks, loop_commits, found = _with_state_thread(_local(path), body)
    assert ticks == 20
    assert loop_commits == 0
    # The loop tried once and gave up at once; the thread waited for the lock and committed.
    assert threads == [threading.current_thread().name, "opportunity-sync-state"]
    assert found["A"].outcome == IN_FLIGHT


def test_a_state_without_a_file_is_written_by_the_thread_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = _applying_threads(monkeypatch)
    state = SyncState(lambda: sqlite3.connect(":memory:"), "sqlite", sync_name="dag.task", run_id="run-1")

    async def body(thread: StateThread, state: SyncState) -> Any:
        assert state.loop_writer() is None
        await thread.write(_write("A", IN_FLIGHT))
        return _found(await thread.call(state.lookup, [key_digest("A")]))

    found = _with_state_thread(state, body)
    assert found["A"].outcome == IN_FLIGHT
    assert threads == ["opportunity-sync-state"]


def test_the_thread_checkpoints_the_wal_that_the_loop_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group_commit, "CHECKPOINT_EVERY", 2)
    checkpoints: list[str] = []
    checkpoint = SyncState.checkpoint

    def recording(self: SyncState) -> None:
        checkpoints.append(threading.current_thread().name)
        checkpoint(self)

    monkeypatch.setattr(SyncState, "checkpoint", recording)

    async def body(thread: StateThread, state: SyncState) -> Any:
        for n in range(4):
            await thread.write(_write(f"K{n}", IN_FLIGHT))
        await thread.call(lambda: None)  # the thread has taken its wake-ups
        return thread.loop_commits

    assert _with_state_thread(_local(tmp_path / "state.db"), body) == 4
    assert checkpoints
    assert set(checkpoints) == {"opportunity-sync-state"}


def test_a_commit_that_fails_on_the_loop_fails_its_writers_and_every_later_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(thread: StateThread, state: SyncState) -> Any:
        writer = thread._loop_writer
        assert writer is not None

        def broken(writes: Any) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(writer, "apply", broken)
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
            await thread.write(_write("A", IN_FLIGHT))
        with pytest.raises(OpportunityError, match="could not be written"):
            await thread.write(_write("B", IN_FLIGHT))
        with pytest.raises(OpportunityError, match="could not be written"):
            thread.raise_if_failed()

    _with_state_thread(_local(tmp_path / "state.db"), body)


@pytest.mark.parametrize("on_the_loop", [True, False])
def test_a_lost_lease_fails_every_waiting_writer_and_every_later_write(
    tmp_path: Path, on_the_loop: bool
) -> None:
    path = tmp_path / "state.db"

    async def body(thread: StateThread, state: SyncState) -> Any:
        await thread.call(state.acquire_lease, 0.2)
        await thread.write(_write("A", IN_FLIGHT))
        if not on_the_loop:
            thread.stop_loop_writer()
        await asyncio.sleep(0.3)  # the lease expires, and another run takes it over
        rival = SyncState.local(path, sync_name="dag.task", run_id="run-2")
        rival.open()
        rival.acquire_lease(60)
        rival.close()
        writers = [thread.write(_write(f"K{n}", IN_FLIGHT)) for n in range(4)]
        results = await asyncio.gather(*writers, return_exceptions=True)
        assert all(isinstance(result, LeaseLostError) for result in results), results
        with pytest.raises(LeaseLostError):
            await thread.write(_write("B", IN_FLIGHT))
        with pytest.raises(LeaseLostError, match="no longer holds the lease"):
            thread.raise_if_failed()
        return _found(await thread.call(state.lookup, [key_digest(k) for k in ("A", "K0", "K3", "B")]))

    found = _with_state_thread(_local(path), body)
    assert set(found) == {"A"}  # nothing after the takeover was written
