"""The bulk-load engine: plan each source row against the sync state, send with bounded concurrency.

One asyncio event loop runs a planner (diffs each chunk against the state and validates) and
``concurrency`` workers that share one HTTP client and one rate limiter. Every state change
goes through the state thread, which commits in groups (a local SQLite state commits small
groups on the event loop's thread instead, see ``group_commit``); a worker waits for its row's
commit before its next request leaves, so a killed run leaves at most ``concurrency`` creates
in flight. The client paces the requests over the round trip (``RequestPacer``), so that the
workers do not send, and get their answers, in bursts.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from airflow_opportunity_provider.errors import (
    OpportunityApiError,
    OpportunityConfigurationError,
    OpportunityConnectionError,
    OpportunityError,
    OpportunityOutcomeUnknownError,
    PayloadValidationError,
)
from airflow_opportunity_provider.hooks.async_client import AsyncOpportunityClient
from airflow_opportunity_provider.schemas import (
    CheckedPutRequest,
    CheckedV1Payload,
    check_add_or_update_payload,
    check_put_request,
)
from airflow_opportunity_provider.transfers.group_commit import StateThread
from airflow_opportunity_provider.transfers.keys import key_digest, partition_of
from airflow_opportunity_provider.transfers.outcomes import LOADED, UNRESOLVED, Outcome
from airflow_opportunity_provider.transfers.progress import ProgressReporter
from airflow_opportunity_provider.transfers.rate_limit import SharedRateLimiter
from airflow_opportunity_provider.transfers.source import SourceRow, SqlSource
from airflow_opportunity_provider.transfers.state import StateRecord, StateWrite, SyncState
from airflow_opportunity_provider.transfers.summary import RunCounts

T = TypeVar("T")
Target = Literal["v1", "v2"]

log = logging.getLogger(__name__)

# Let the event loop serve the workers' sockets after this many planned rows.
_YIELD_EVERY = 64
# Rows read, mapped and looked up in the state at a time (the first batch is small).
_PLAN_BATCH = 500
_FIRST_BATCH = 50


@dataclass
class EngineSettings:
    """How one run behaves; the operator fills it from its parameters.

    :param target: ``"v1"`` (add-or-update) or ``"v2"`` (put).
    :param concurrency: requests in flight at most.
    :param rate_limit: requests per second across all workers, or ``None``.
    :param burst: requests that may go at once.
    :param on_unknown: ``"skip"`` or ``"resend"`` rows whose create had an unknown outcome.
    :param dry_run: plan and count, send and write nothing.
    :param progress_interval: seconds between progress lines.
    :param total_rows: the query's row count for the progress estimate, when known.
    """

    target: Target
    concurrency: int = 16
    rate_limit: float | None = None
    burst: int | None = None
    on_unknown: Literal["skip", "resend"] = "skip"
    dry_run: bool = False
    progress_interval: float = 10.0
    total_rows: int | None = None


@dataclass(slots=True)
class _Work:
    """A row to send: the request as checked once against its schema, and whether it creates a record."""

    key: str
    request: CheckedV1Payload | CheckedPutRequest
    payload_hash: str
    creates: bool


@dataclass
class RunResult:
    """What :func:`run_sync` hands back: the counts, the client's request figures, a fatal error."""

    counts: RunCounts
    requests_sent: int = 0
    retries: int = 0
    rate_limited_answers: int = 0
    rate_limit_pauses: int = 0
    fatal: BaseException | None = None
    interrupted_creates: int = 0
    #: ``time.monotonic()`` when the first request left, and when the last row's state was
    #: committed after it: the load itself, without setting up or closing anything.
    first_request_at: float | None = None
    last_commit_at: float | None = None

    @property
    def load_seconds(self) -> float | None:
        """Seconds from the first request to the last row's committed state; ``None`` when nothing was sent."""
        if self.first_request_at is None or self.last_commit_at is None:
            return None
        return self.last_commit_at - self.first_request_at


def _outcome_of_error(error: OpportunityError) -> tuple[Outcome, str, str]:
    """``(outcome, code, message)`` of a row whose send raised ``error``: its type decides (``errors``)."""
    if isinstance(error, PayloadValidationError):
        return Outcome(error.row_outcome), "schema", error.summary
    if isinstance(error, OpportunityOutcomeUnknownError):
        return Outcome(error.row_outcome), error.code, str(error)
    if isinstance(error, OpportunityApiError):
        return Outcome(error.row_outcome), str(error.code) if error.code is not None else "error", str(error)
    if isinstance(error, OpportunityConnectionError):
        return Outcome(error.row_outcome), "connection", str(error)
    if isinstance(error, OpportunityConfigurationError):
        return Outcome(error.row_outcome), "configuration", str(error)
    return Outcome(error.row_outcome), "error", str(error)


class _Run:
    """One run of the engine; see :func:`run_sync`."""

    def __init__(
        self,
        settings: EngineSettings,
        source: SqlSource,
        state: SyncState,
        client: AsyncOpportunityClient | None,
        progress: ProgressReporter,
    ) -> None:
        self.settings = settings
        self.source = source
        self.state = state
        self.client = client
        self.progress = progress
        self.counts = RunCounts()
        self.result = RunResult(self.counts)
        # A DB-API connection must stay on the thread that opened it: the source gets one thread,
        # the state another (created in run(), on the event loop).
        self._source_thread = ThreadPoolExecutor(1, thread_name_prefix="opportunity-sync-source")
        self.state_thread: StateThread | None = None
        self._queue: asyncio.Queue[_Work | None] = asyncio.Queue(maxsize=settings.concurrency * 4)
        # A key found twice in the source must never be sent twice (two creates). Once its first
        # outcome is in the state, the state's run id tells; until a lookup can see that write,
        # the key is kept here: key -> None while in flight, or the lookup generation current
        # when its outcome write was queued (lookups from the next generation on see it).
        self._pending_keys: dict[str, int | None] = {}
        self._lookup_generation = 0
        self._abort: BaseException | None = None

    async def _on_state_thread(self, function: Callable[..., T], *args: Any) -> T:
        assert self.state_thread is not None
        return await self.state_thread.call(function, *args)

    async def _on_source_thread(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._source_thread, function, *args)

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> RunResult:
        self.state_thread = StateThread(self.state, asyncio.get_running_loop())
        try:
            await self._on_state_thread(self.state.open)
            if not self.settings.dry_run and self.client is not None:
                await self.state_thread.start_loop_writer()
            await self._on_source_thread(self.source.open)
            await self._mark_interrupted_creates()
            if self.settings.dry_run or self.client is None:
                await self._plan_all()
            else:
                await self._send_all(self.client)
        except BaseException as error:
            self.result.fatal = error
        finally:
            self.counts.rows_read = self.source.rows_read
            self.counts.finished = time.monotonic()
            await self._on_source_thread(self.source.close)
            self.state_thread.stop_loop_writer()
            await self._on_state_thread(self.state.close)
            await self.state_thread.close()
            self._source_thread.shutdown(wait=True)
        if self.client is not None:
            self.result.requests_sent = self.client.requests_sent
            self.result.retries = self.client.retries
            self.result.rate_limited_answers = self.client.rate_limited
            gate = self.client.gate
            if isinstance(gate, SharedRateLimiter):
                self.result.rate_limit_pauses = gate.pauses
        return self.result

    async def _mark_interrupted_creates(self) -> None:
        """Turn creates a killed run left in flight into unknowns (of this partition only)."""
        records = await self._on_state_thread(self.state.unresolved)
        source = self.source
        mine = [
            record
            for record in records
            if record.outcome == Outcome.IN_FLIGHT
            and partition_of(record.key, source.partition_count) == source.partition_index
        ]
        if not mine:
            return
        keys = [record.key for record in mine]
        self.result.interrupted_creates = len(mine)
        log.warning(
            "%d create(s) were in flight when an earlier run of this sync stopped; their outcome is "
            "unknown and they are not sent again (on_unknown=%r). Keys: %s",
            len(mine),
            self.settings.on_unknown,
            ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""),
        )
        if not self.settings.dry_run:
            message = "the create was in flight when an earlier run stopped; it may or may not be stored"
            await self._on_state_thread(self.state.mark_unknown, mine, "interrupted", message)

    async def _plan_all(self) -> None:
        progress = asyncio.create_task(self.progress.run(self.counts))
        try:
            await self._plan(sending=False)
        finally:
            progress.cancel()

    async def _send_all(self, client: AsyncOpportunityClient) -> None:
        progress = asyncio.create_task(self.progress.run(self.counts))
        async with client:
            workers = [asyncio.create_task(self._worker(client)) for _ in range(self.settings.concurrency)]
            try:
                await self._plan(sending=True)
            except BaseException as error:
                self._abort = self._abort or error
            finally:
                for _ in workers:
                    await self._queue.put(None)
                await asyncio.gather(*workers, return_exceptions=True)
                progress.cancel()
        if self._abort is not None:
            raise self._abort
        assert self.state_thread is not None
        # Rows never sent were queued without waiting; make sure their writes are in.
        await self._on_state_thread(lambda: None)
        self.state_thread.raise_if_failed()
        if self.result.first_request_at is not None:
            self.result.last_commit_at = time.monotonic()

    # -- planning --------------------------------------------------------------------------

    async def _plan(self, *, sending: bool) -> None:
        """Read every batch of rows, diff it against the state, and queue the rows to send.

        The next batch is read and mapped on the source thread while this one is planned, and
        the first batch is small, so that the first requests leave at once.
        """
        batch = max(1, min(self.source.chunk_size, _PLAN_BATCH))
        reading = asyncio.ensure_future(
            self._on_source_thread(self.source.read_chunk, min(batch, _FIRST_BATCH))
        )
        try:
            while self._abort is None:
                rows = await reading
                if rows is None:
                    return
                reading = asyncio.ensure_future(self._on_source_thread(self.source.read_chunk, batch))
                await self._plan_batch(rows, sending)
        finally:
            if not reading.done():
                # The source thread is still reading: let it finish before the source is closed.
                await asyncio.wait([reading])
            if not reading.cancelled():
                # Mark a failed read as seen: the load already stopped for a reason of its own.
                reading.exception()

    async def _plan_batch(self, rows: list[SourceRow], sending: bool) -> None:
        digests = {row.key: key_digest(row.key) for row in rows if row.problem is None}
        self._lookup_generation += 1
        generation = self._lookup_generation
        found = await self._on_state_thread(self.state.lookup, list(digests.values())) if digests else {}
        records = {key: found[digest] for key, digest in digests.items() if digest in found}
        # Keys whose outcome was queued before this lookup are visible in it from now on.
        for key, queued_at in list(self._pending_keys.items()):
            if queued_at is not None and queued_at < generation:
                del self._pending_keys[key]
        for number, row in enumerate(rows, 1):
            if self._abort is not None:
                return
            self.counts.rows += 1
            work = self._plan_row(row, records.get(row.key), sending)
            if work is not None:
                self._pending_keys[work.key] = None
                await self._queue.put(work)
            elif number % _YIELD_EVERY == 0:
                await asyncio.sleep(0)

    def _plan_row(self, row: SourceRow, record: StateRecord | None, sending: bool) -> _Work | None:
        """Decide one row's fate: counted now, or returned as work for a worker."""
        if row.problem is not None:
            code, message = row.problem
            self._finish_unsent(sending, row.key, Outcome.REJECTED, code, message, row.payload_hash)
            return None
        payload, digest = row.payload, row.payload_hash
        assert payload is not None
        assert digest is not None
        if row.key in self._pending_keys or (
            record is not None and record.run_id == self.state.run_id and not self.settings.dry_run
        ):
            # The same key twice in one run: sending both could create the record twice.
            message = "the key appears more than once in the query result; only its first row is loaded"
            self._finish_unsent(
                sending, row.key, Outcome.REJECTED, "duplicate_key", message, None, update_state=False
            )
            return None
        if record is not None and record.outcome in UNRESOLVED and self.settings.on_unknown == "skip":
            message = (
                "an earlier create of this row may or may not be stored; it is not sent again. Check the "
                "CRM and record the id (SyncState.resolve), or set on_unknown='resend'"
            )
            self._finish_unsent(
                sending, row.key, Outcome.UNKNOWN, "outcome_unknown", message, None, update_state=False
            )
            return None
        if record is not None and record.outcome in LOADED and record.payload_hash == digest:
            self.counts.add(Outcome.UNCHANGED)
            return None
        work = self._work_for(row.key, payload, digest, record)
        if isinstance(work, str):
            self._finish_unsent(sending, row.key, Outcome.REJECTED, "schema", work, digest)
            return None
        if not sending:  # dry run: count what would happen
            self.counts.add(Outcome.CREATED if work.creates else Outcome.UPDATED)
            return None
        return work

    def _work_for(
        self, key: str, payload: dict[str, Any], digest: str, record: StateRecord | None
    ) -> _Work | str:
        """The request as it will be sent, checked once; or the validation problems as text."""
        try:
            if self.settings.target == "v1":
                if (
                    "id" not in payload
                    and record is not None
                    and record.crm_id
                    and record.outcome not in UNRESOLVED
                ):
                    # Create-once: a row created before is from now on an update of that record.
                    payload = {**payload, "id": record.crm_id}
                checked = check_add_or_update_payload(payload)
                return _Work(key, checked, digest, checked.creates)
            return _Work(key, check_put_request(payload), digest, False)
        except PayloadValidationError as error:
            return error.summary

    def _finish_unsent(
        self,
        sending: bool,
        key: str,
        outcome: Outcome,
        code: str,
        message: str,
        digest: str | None,
        *,
        update_state: bool = True,
    ) -> None:
        self.counts.add(outcome, key, code, message)
        if sending and key and self.state_thread is not None:
            if update_state:
                self._pending_keys[key] = self._lookup_generation
            self.state_thread.submit(
                StateWrite(
                    key,
                    key_digest(key),
                    outcome,
                    payload_hash=digest,
                    error_code=code,
                    error_message=message,
                    reject=True,
                    update_state=update_state,
                )
            )

    # -- sending ---------------------------------------------------------------------------

    async def _worker(self, client: AsyncOpportunityClient) -> None:
        writer = self.state_thread
        assert writer is not None
        # The outcome of this worker's previous row, not yet committed. It is committed together
        # with the next row's intent (one commit per row instead of two) and always before the
        # next request leaves, so at most one row per worker is ever uncommitted.
        carry: list[StateWrite] = []
        while True:
            try:
                if carry and self._queue.empty():
                    # Nothing to pair it with right now: commit it rather than let it wait.
                    await self._write(writer, *carry)
                    carry = []
                work = await self._queue.get()
                if work is None:
                    if carry:
                        await self._write(writer, *carry)
                    return
                if self._abort is not None:
                    self._pending_keys.pop(work.key, None)
                    continue  # drain: rows not sent are simply read again next run
                carry = await self._send_one(client, writer, work, carry)
            except Exception as error:
                # Stop the load; this worker keeps draining the queue so the planner never blocks.
                carry = []
                self._abort = self._abort or error

    async def _write(
        self, writer: StateThread, *outcomes: StateWrite, intent: StateWrite | None = None
    ) -> None:
        """Commit rows' outcomes (and the next row's intent) in one group.

        A row's key stays pending until a lookup queued after its outcome can see it.
        """
        for outcome in outcomes:
            self._pending_keys[outcome.key] = self._lookup_generation
        await writer.write(*outcomes, *([intent] if intent is not None else []))

    async def _send_one(
        self, client: AsyncOpportunityClient, writer: StateThread, work: _Work, carry: list[StateWrite]
    ) -> list[StateWrite]:
        """Send one row and return its outcome write, which the caller must commit."""
        if work.creates:
            # Durable before the request leaves: a kill from here on leaves an in-flight trace.
            await self._write(
                writer,
                *carry,
                intent=StateWrite(
                    work.key,
                    key_digest(work.key),
                    Outcome.IN_FLIGHT,
                    payload_hash=work.payload_hash,
                    attempted_at=time.time(),
                ),
            )
        elif carry:
            await self._write(writer, *carry)
        outcome, crm_id, code, message = Outcome.UPDATED, None, "", ""
        fatal: BaseException | None = None
        if self.result.first_request_at is None:
            self.result.first_request_at = time.monotonic()
        try:
            request = work.request
            if isinstance(request, CheckedV1Payload):
                new_id = await client.add_or_update_opportunity(request)
                outcome, crm_id = (Outcome.CREATED if work.creates else Outcome.UPDATED), str(new_id)
            else:
                await client.put_opportunity_request(request)
                outcome, crm_id = Outcome.UPDATED, f"{request.opportunity_id}/{request.opportunity_type}"
        except OpportunityError as error:
            outcome, code, message = _outcome_of_error(error)
            if error.stops_load:
                # Every other row would fail the same way: record this one, then stop the load.
                fatal = error
        if outcome in (Outcome.CREATED, Outcome.UPDATED):
            self.counts.add(outcome)
            result = StateWrite(
                work.key, key_digest(work.key), outcome, payload_hash=work.payload_hash, crm_id=crm_id
            )
        else:
            self.counts.add(outcome, work.key, code, message)
            result = StateWrite(
                work.key,
                key_digest(work.key),
                outcome,
                payload_hash=work.payload_hash,
                error_code=code,
                error_message=message,
                reject=True,
            )
        if fatal is not None:
            await self._write(writer, result)
            raise fatal
        return [result]


async def run_sync(
    settings: EngineSettings,
    source: SqlSource,
    state: SyncState,
    client: AsyncOpportunityClient | None,
    progress: ProgressReporter | None = None,
) -> RunResult:
    """Run one sync to the end (or to a fatal error, after writing the state of every sent row).

    :param settings: how the run behaves.
    :param source: the rows (not yet opened).
    :param state: the sync state (not yet opened).
    :param client: the HTTP client, ``None`` for a dry run.
    :param progress: what logs progress; a default reporter when ``None``.
    """
    reporter = progress or ProgressReporter(settings.progress_interval, settings.total_rows)
    with _older_objects_frozen():
        return await _Run(settings, source, state, client, reporter).run()


@contextlib.contextmanager
def _older_objects_frozen() -> Iterator[None]:
    """Keep the garbage collector's full passes off the objects that existed before the load.

    A task process holds Airflow and every provider it imported: a full collection walks all of
    it and stops every thread for about 100 ms, with ``concurrency`` requests waiting on this
    event loop. Frozen (as Airflow does before forking workers), those objects are left out of
    every pass until the load ends; the load's own objects are collected as usual. Nothing is
    done when the collector is off or something else froze objects already.
    """
    if not gc.isenabled() or gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run_sync_blocking(
    settings: EngineSettings,
    source: SqlSource,
    state: SyncState,
    client_factory: Callable[[SharedRateLimiter], AsyncOpportunityClient] | None,
    progress: ProgressReporter | None = None,
) -> RunResult:
    """Run :func:`run_sync` in a new event loop (uvloop when installed) and wait for it.

    :param settings: how the run behaves.
    :param source: the rows.
    :param state: the sync state.
    :param client_factory: builds the client around the shared limiter; ``None`` for a dry run.
    :param progress: what logs progress.
    """

    async def main() -> RunResult:
        client = None
        if client_factory is not None and not settings.dry_run:
            client = client_factory(SharedRateLimiter(settings.rate_limit, settings.burst))
        return await run_sync(settings, source, state, client, progress)

    with event_loop_runner() as runner:
        return runner.run(main())


def event_loop_runner() -> asyncio.Runner:
    """An event loop runner: uvloop when installed (it made bulk loads about 15% faster here), else asyncio."""
    with contextlib.suppress(ImportError):
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def new_run_id() -> str:
    """A fresh id for one sync run."""
    return uuid.uuid4().hex
