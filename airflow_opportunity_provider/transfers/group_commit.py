"""The one thread that owns the sync-state connection: runs every state call and commits writes in groups.

Workers on the event loop hand it writes and await their commit; while one group commits the
next gathers, so the more workers wait, the fewer commits per row. A DB-API connection never
changes threads, and the event loop never waits on a database lock or a disk sync.

A local SQLite state in WAL mode gets a second connection, on the event loop's thread: a
commit there appends to the WAL without a sync (tens of microseconds), far less than waking
the thread and getting the answer back (half a millisecond to several under load, in the
critical path of every create). Writes requested in one pass of the event loop still commit
together. Such a commit is only made while the thread has nothing queued or running, so every
change and call keeps the order the event loop asked for them in; when another process holds
the lock, the writes go to the thread instead. The thread makes the checkpoints (which sync).

A state on PostgreSQL through psycopg 3 gets a second connection too, an asynchronous one on
the event loop: its group commits wait on the server like every other socket of the loop, with
no hand-off to the thread and back. One task on the loop takes everything asked of the state
in order: it commits each run of writes as one group there, and hands each call to the thread
and waits for it, so calls and writes still keep their order and never overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from airflow_opportunity_provider.errors import OpportunityError
from airflow_opportunity_provider.transfers.sqlite_state import is_busy
from airflow_opportunity_provider.transfers.state import LeaseLostError, StateWrite, SyncState

T = TypeVar("T")

_Future = asyncio.Future[Any]
_Write = tuple[StateWrite, _Future | None]

# Commits on the event loop's thread between two checkpoints of the WAL (by the state thread).
CHECKPOINT_EVERY = 200


class _Call:
    """A state method to run on the thread, and the future that gets its result."""

    __slots__ = ("args", "function", "future")

    def __init__(self, function: Callable[..., Any], args: tuple[Any, ...], future: _Future) -> None:
        self.function = function
        self.args = args
        self.future = future


class StateThread:
    """Runs ``state``'s methods on one thread of its own, and its writes in group commits.

    :param state: the sync state (opened and closed on this thread).
    :param loop: the event loop whose futures the thread resolves.
    """

    def __init__(self, state: SyncState, loop: asyncio.AbstractEventLoop) -> None:
        self.state = state
        self._loop = loop
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        # Writes (each with the future that waits for its commit, or None) and calls, in order.
        self._queue: list[_Write | _Call] = []
        # Whether the thread is running items it took from the queue.
        self._running = False
        self._checkpoint_wanted = False
        self._closing = False
        self._stopped: _Future = loop.create_future()
        # Writes gathered on the event loop for one commit there (see the module's docstring).
        self._loop_writer: SyncState | None = None
        self._pending: list[_Write] = []
        self._flush_handle: asyncio.Handle | None = None
        # PostgreSQL's connection on the event loop, what is asked of the state in order, and
        # the task that carries it out (see the module's docstring).
        self._async_writer: Any = None
        self._sequence: list[_Write | _Call] = []
        self._sequencer: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.commits = 0
        self.writes = 0
        # Of the commits, those made on the event loop's thread.
        self.loop_commits = 0
        self._thread = threading.Thread(target=self._run, name="opportunity-sync-state", daemon=True)
        self._thread.start()

    # -- from the event loop -----------------------------------------------------------------

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(*args)`` on the state thread (after every write queued before it).

        :param function: a method of the state.
        :param args: its arguments.
        """
        future: _Future = self._loop.create_future()
        self._put([_Call(function, args, future)])
        result: T = await future
        return result

    def submit(self, *writes: StateWrite) -> None:
        """Queue writes without waiting for their commit (rows that were never sent).

        :param writes: the changes.
        """
        self.raise_if_failed()
        self._put([(write, None) for write in writes])

    async def write(self, *writes: StateWrite) -> None:
        """Queue writes and return once they are committed.

        :param writes: the changes, committed together.
        """
        self.raise_if_failed()
        future: _Future = self._loop.create_future()
        items: list[_Write] = [(write, None) for write in writes[:-1]]
        items.append((writes[-1], future))
        if self._loop_writer is None:
            self._put(items)
        else:
            self._pending.extend(items)
            if self._flush_handle is None:
                # After the other callbacks of this pass: workers answered together commit together.
                self._flush_handle = self._loop.call_soon(self._flush)
        await future

    async def start_loop_writer(self) -> bool:
        """Commit groups from the event loop's thread from now on, when the state allows it: on a
        local SQLite file in WAL mode, or through PostgreSQL's asynchronous connection.

        Call it once the state is open; returns whether it does (see :attr:`commits_locally`).
        """
        from airflow_opportunity_provider.transfers.postgres_state import connect_loop_writer

        try:
            self._async_writer = await connect_loop_writer(self.state)
        except Exception:
            self._async_writer = None  # the thread commits, as it would without one
        if self._async_writer is not None:
            return True
        writer = self.state.loop_writer()
        if writer is None:
            return False
        try:
            writer.open_writer()
        except Exception:
            writer.close()
            return False
        self._loop_writer = writer
        return True

    @property
    def commits_locally(self) -> bool:
        """Whether a commit costs less than a hand-off: a local SQLite file, committed on the loop
        (not a server, whose commits cost a round trip and a disk sync wherever they are made)."""
        return self._loop_writer is not None

    def raise_if_failed(self) -> None:
        """Raise when an earlier group could not be committed: nothing more may be sent.

        A lost lease is raised as a :class:`LeaseLostError`, so the caller can tell that another
        run took the partition over.
        """
        error = self.error
        if error is None:
            return
        if isinstance(error, LeaseLostError):
            raise LeaseLostError(str(error)) from error
        raise OpportunityError(f"The sync state could not be written: {error}") from error

    def stop_loop_writer(self) -> None:
        """Commit what the event loop gathered and close its connection; every write goes to the thread after.

        Call it before the state's own connection closes, so that the last connection to close,
        which copies the WAL into the file and syncs, is the thread's.
        """
        self._flush()
        writer, self._loop_writer = self._loop_writer, None
        if writer is not None:
            writer.close()

    async def close(self) -> None:
        """Commit what is queued, then stop the thread (without blocking the event loop)."""
        while self._sequencer is not None:
            await asyncio.wait([self._sequencer])
        writer, self._async_writer = self._async_writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer.close()
        self.stop_loop_writer()
        with self._lock:
            self._closing = True
        self._wakeup.set()
        await self._stopped

    def _put(self, items: Sequence[_Write | _Call]) -> None:
        if self._async_writer is not None:
            self._sequence.extend(items)
            if self._sequencer is None:
                self._sequencer = self._loop.create_task(self._carry_out_sequence())
            return
        self._to_thread(items)

    async def _carry_out_sequence(self) -> None:
        """Commit the runs of writes asked of the state on the loop's connection, and run its
        calls on the thread, one after another in the order they were asked."""
        try:
            while self._sequence:
                items, self._sequence = self._sequence, []
                group: list[_Write] = []
                for item in items:
                    if isinstance(item, _Call):
                        await self._commit_on_loop(group)
                        group = []
                        self._to_thread([item])
                        await asyncio.wait([item.future])
                    else:
                        group.append(item)
                await self._commit_on_loop(group)
        finally:
            self._sequencer = None

    async def _commit_on_loop(self, group: list[_Write]) -> None:
        from airflow_opportunity_provider.transfers.postgres_state import apply_on_loop

        if not group:
            return
        error = self.error
        if error is None:
            writes = [write for write, _ in group]
            try:
                await apply_on_loop(self.state, self._async_writer, writes)
                self._count_commit(len(writes), on_loop=True)
            except BaseException as failure:  # handed to every waiting worker
                self.error = error = failure
        _settle([(future, None, error) for _, future in group if future is not None])

    def _count_commit(self, writes: int, *, on_loop: bool) -> None:
        self.commits += 1
        self.writes += writes
        if on_loop:
            self.loop_commits += 1

    def _to_thread(self, items: Sequence[_Write | _Call]) -> None:
        # Writes still gathered on the loop go first: everything keeps the order it was asked in.
        self._flush()
        with self._lock:
            if self._closing:
                raise RuntimeError("the state thread is closed")
            self._queue.extend(items)
        self._wakeup.set()

    def _flush(self) -> None:
        """Commit the writes gathered on the event loop: here when the thread is idle, else there."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        items = self._pending
        if not items:
            return
        self._pending = []
        writer = self._loop_writer
        with self._lock:
            idle = not self._queue and not self._running
        if writer is not None and idle and self.error is None:
            group = [write for write, _ in items]
            try:
                writer.apply(group)
            except Exception as failure:
                if not is_busy(failure):
                    self.error = failure
                    _settle([(future, None, failure) for _, future in items if future is not None])
                    return
                # Another process holds the lock: the thread waits for it instead of the loop.
            else:
                self._count_commit(len(group), on_loop=True)
                _settle([(future, None, None) for _, future in items if future is not None])
                if self.loop_commits % CHECKPOINT_EVERY == 0:
                    self._want_checkpoint()
                return
        with self._lock:
            self._queue.extend(items)
        self._wakeup.set()

    def _want_checkpoint(self) -> None:
        with self._lock:
            self._checkpoint_wanted = True
        self._wakeup.set()

    # -- on the state thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                self._wakeup.wait()
                with self._lock:
                    self._wakeup.clear()
                    queue, self._queue = self._queue, []
                    self._running = bool(queue)
                    checkpoint, self._checkpoint_wanted = self._checkpoint_wanted, False
                    closing = self._closing
                if queue:
                    settled = self._drain(queue)
                    with self._lock:
                        self._running = False
                    if settled:
                        # One hand-over to the event loop for the whole group, once the thread
                        # is idle again: the workers it wakes may then commit on the loop.
                        self._loop.call_soon_threadsafe(_settle, settled)
                if checkpoint:
                    # Not in the order of the writes: the loop's writer may commit meanwhile.
                    self._checkpoint()
                if closing and not self._queue:
                    return
        finally:
            with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody waits
                self._loop.call_soon_threadsafe(_set_done, self._stopped)

    def _checkpoint(self) -> None:
        # A failed checkpoint loses nothing: the next one (or closing) copies the WAL.
        with contextlib.suppress(Exception):
            self.state.checkpoint()

    def _drain(self, queue: list[_Write | _Call]) -> list[tuple[_Future, Any, BaseException | None]]:
        """Run the queued items in order, committing runs of writes in one group each; return the results."""
        settled: list[tuple[_Future, Any, BaseException | None]] = []
        group: list[StateWrite] = []
        waiting: list[_Future] = []

        def commit() -> None:
            if not group:
                return
            error = self.error
            if error is None:
                try:
                    self.state.apply(group)
                    self._count_commit(len(group), on_loop=False)
                except BaseException as failure:  # handed to every waiting worker
                    self.error = error = failure
            settled.extend((future, None, error) for future in waiting)
            group.clear()
            waiting.clear()

        for item in queue:
            if isinstance(item, _Call):
                commit()  # a call sees every write queued before it
                try:
                    settled.append((item.future, item.function(*item.args), None))
                except BaseException as failure:
                    settled.append((item.future, None, failure))
                continue
            write, future = item
            group.append(write)
            if future is not None:
                waiting.append(future)
        commit()
        return settled


def _settle(settled: list[tuple[_Future, Any, BaseException | None]]) -> None:
    for future, result, error in settled:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _set_done(future: _Future) -> None:
    if not future.done():
        future.set_result(None)
