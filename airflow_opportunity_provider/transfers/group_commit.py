"""The one thread that owns the sync-state connection: runs every state call and commits writes in groups.

Workers on the event loop hand it writes and await their commit; while one group commits the
next gathers, so the more workers wait, the fewer commits per row. The event loop never waits
on the database, and a DB-API connection never changes threads.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from airflow_opportunity_provider.errors import OpportunityError
from airflow_opportunity_provider.transfers.state import StateWrite, SyncState

T = TypeVar("T")

_Future = asyncio.Future[Any]


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
        self._queue: list[tuple[StateWrite, _Future | None] | _Call] = []
        self._closing = False
        self.error: BaseException | None = None
        self.commits = 0
        self.writes = 0
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
        items: list[tuple[StateWrite, _Future | None] | _Call] = [(write, None) for write in writes[:-1]]
        items.append((writes[-1], future))
        self._put(items)
        await future

    def raise_if_failed(self) -> None:
        """Raise when an earlier group could not be committed: nothing more may be sent."""
        if self.error is not None:
            raise OpportunityError(f"The sync state could not be written: {self.error}") from self.error

    async def close(self) -> None:
        """Commit what is queued, then stop the thread (without blocking the event loop)."""
        with self._lock:
            self._closing = True
        self._wakeup.set()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    def _put(self, items: list[tuple[StateWrite, _Future | None] | _Call]) -> None:
        with self._lock:
            if self._closing:
                raise RuntimeError("the state thread is closed")
            self._queue.extend(items)
        self._wakeup.set()

    # -- on the state thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wakeup.wait()
            with self._lock:
                self._wakeup.clear()
                queue, self._queue = self._queue, []
                closing = self._closing
            if queue:
                self._drain(queue)
            if closing and not self._queue:
                return

    def _drain(self, queue: list[tuple[StateWrite, _Future | None] | _Call]) -> None:
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
                    self.commits += 1
                    self.writes += len(group)
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
        if settled:
            # One hand-over to the event loop for the whole group.
            self._loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[_Future, Any, BaseException | None]]) -> None:
    for future, result, error in settled:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
