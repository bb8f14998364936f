"""The bulk-load engine: holds the sync partition's lease, carries out the planner's decision for
each row, and sends with bounded concurrency.

One asyncio event loop has batches of rows read and planned on the source thread, one batch
ahead: the thread reads them and marks keys seen before in the run; the lookup thread looks
their keys up in the state through a connection of its own (while the source thread reads the
next batch); the source thread then maps the rows that their fingerprint does not settle and
asks ``planner.plan`` what each row needs. Unchanged rows only come back as a count (a
no-change run never wakes the event loop for a row); the loop carries out the other decisions
and hands the rows to send to workers that share one HTTP client, one rate limiter and
``concurrency`` request slots. Every state change goes through the state thread, which commits
in groups and checks the lease in each commit; a worker commits a create's in-flight mark (with
its previous row's outcome) before it waits for a slot, and sends within
``_INTENT_FRESH_SECONDS`` of that commit (else commits the mark again), so a run that lost its
lease can send no create at all. On a local SQLite state a commit costs less than the wait, so
there is one worker per slot and a killed run leaves at most ``concurrency`` creates
unresolved. A state on a server (PostgreSQL, MariaDB) answers each group commit a round trip
and a disk sync later, which would otherwise stand between every two requests of a slot:
``_WORKERS_PER_SLOT`` workers per slot commit their marks while the slot's request is in
flight, and a killed run leaves at most that many times ``concurrency`` unresolved. At the end
the run counts every unresolved create of its partition from the state, records itself in the
runs table and frees the lease.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from airflow_opportunity_provider.errors import (
    OpportunityApiError,
    OpportunityConfigurationError,
    OpportunityConnectionError,
    OpportunityError,
    OpportunityNotFoundError,
    OpportunityOutcomeUnknownError,
    PayloadValidationError,
)
from airflow_opportunity_provider.hooks.async_client import AsyncOpportunityClient
from airflow_opportunity_provider.references import DEFAULT_REFERENCE_LABEL, reference_entry, reference_for
from airflow_opportunity_provider.schemas import CheckedPutRequest, CheckedV1Payload
from airflow_opportunity_provider.transfers.group_commit import StateThread
from airflow_opportunity_provider.transfers.keys import key_digest
from airflow_opportunity_provider.transfers.outcomes import UNRESOLVED, Outcome
from airflow_opportunity_provider.transfers.planner import (
    OUTCOME_UNKNOWN,
    UNKNOWN_MESSAGE,
    Action,
    Decision,
    Policy,
    Write,
    adopt,
    ambiguous,
    fingerprint_matches,
    plan,
    plan_settled,
    recreate,
)
from airflow_opportunity_provider.transfers.progress import ProgressReporter
from airflow_opportunity_provider.transfers.rate_limit import SharedRateLimiter
from airflow_opportunity_provider.transfers.reconcile import (
    DEFAULT_UNKNOWN_GRACE_SECONDS,
    FOUND,
    PENDING,
    Matcher,
    Reconciler,
)
from airflow_opportunity_provider.transfers.seen_keys import SeenKeys, first_of_each
from airflow_opportunity_provider.transfers.source import SourceRow, SqlSource
from airflow_opportunity_provider.transfers.sqlite_state import SqliteKeyLookup
from airflow_opportunity_provider.transfers.state import (
    LeaseLostError,
    RunRecord,
    StateRecord,
    StateWrite,
    SyncState,
)
from airflow_opportunity_provider.transfers.summary import SHOWN_REJECTS, RunCounts, SyncSummary, Threshold

T = TypeVar("T")
Target = Literal["v1", "v2"]
# A row that needs more than counting, its decision, and what the state held for its key.
_Planned = tuple[SourceRow, Decision, StateRecord | None]
# A batch read ahead, and the lookup of its keys (None: no row with a key).
_Read = tuple[list[SourceRow], "Future[Mapping[str, StateRecord | None]] | None"]

log = logging.getLogger(__name__)

# Let the event loop serve the workers' sockets after this many planned rows.
_YIELD_EVERY = 64
# Rows read, mapped and looked up in the state at a time (the first batch is small), at most:
# the source's chunk_size bounds it.
_PLAN_BATCH = 1000
# Rows at a time once a batch was nearly all unchanged (at most 1 row in _SCAN_SHARE to do):
# they hold no payload, and each lookup hands the GIL back and forth a few times, so over a
# million unchanged rows 5,000 at a time was 1.5 to 2 s faster than 1,000.
_SCAN_BATCH = 5000
_SCAN_SHARE = 20
_FIRST_BATCH = 50
# The lease is renewed this many times within its lifetime.
_RENEWALS_PER_LEASE = 3
# With a state on a server: workers per request slot (see the module's docstring). A first load
# of 30,000 rows with PostgreSQL state on 2 cores, two runs each, its commits then made by the
# state thread: 1, 2 and 3 gave on average 2,560, 3,090 and 3,270 rows/s (SQLite state 3,240);
# 4 was no faster than 3.
_WORKERS_PER_SLOT = 3
# A create leaves within this long of the commit of its in-flight mark, which checked the lease
# and renewed it for ``lease_seconds``; a mark older than that (or than a quarter of the lease)
# is committed again first.
_INTENT_FRESH_SECONDS = 1.0
# The create-hint fields: enough to look a lost create up in the CRM later.
_HINT_FIELDS = ("venueId", "name")
DEFAULT_LEASE_SECONDS = 120.0
# A second pass over transient failures only when at most one row in this many failed.
_FAILED_PASS_SHARE = 20
LOST_CREATE = "lost_create"
LOST_MESSAGE = (
    "the create's outcome was unknown and its reference is not in the CRM after the grace period: "
    "it was not stored, and the row is created again (with the same reference) when it is next read"
)


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
    :param lease_seconds: how long the partition's lease lasts without renewal.
    :param lease_wait_seconds: how long to wait for another run's lease before failing.
    :param max_rejected: the most rejected rows the verdict allows.
    :param max_unknown: the most unresolved creates the verdict allows.
    :param dag_id: the DAG of the run, for the runs table.
    :param task_id: the task of the run, for the runs table.
    :param reference: v1: put the sync's reference on every record and settle unknown creates
        by looking it up in the CRM.
    :param reference_url: the reference entry's https URL template (``{key}``, ``{sync_name}``).
    :param reference_label: the reference entry's label.
    :param unknown_grace_seconds: how old an unknown create must be before "not in the CRM"
        means it was lost (and it is created again).
    :param match_on: v1: payload fields by which a row with no CRM id adopts an existing record.
    :param on_missing_record: ``"reject"`` or ``"recreate"`` a row whose stored record the CRM
        no longer holds.
    :param list_page_size: the page size the CRM's list is read with.
    """

    target: Target
    concurrency: int = 16
    rate_limit: float | None = None
    burst: int | None = None
    on_unknown: Literal["skip", "resend"] = "skip"
    dry_run: bool = False
    progress_interval: float = 10.0
    total_rows: int | None = None
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    lease_wait_seconds: float = 0.0
    max_rejected: Threshold = 0
    max_unknown: Threshold = 0
    dag_id: str | None = None
    task_id: str | None = None
    reference: bool = True
    reference_url: str | None = None
    reference_label: str | None = DEFAULT_REFERENCE_LABEL
    unknown_grace_seconds: float = DEFAULT_UNKNOWN_GRACE_SECONDS
    match_on: tuple[str, ...] | None = None
    on_missing_record: Literal["reject", "recreate"] = "reject"
    list_page_size: int = 100


@dataclass(slots=True)
class _Work:
    """A row to send: the request as checked once against its schema, and whether it creates a record."""

    key: str
    digest: str
    request: CheckedV1Payload | CheckedPutRequest
    payload_hash: str
    creates: bool
    #: The update's id is the one the state holds (so a record gone from the CRM may be recreated).
    id_from_state: bool = False
    #: The update adopts a record the CRM already held (``match_on``).
    adopts: bool = False
    #: The fingerprint of the source row, stored with its outcome (``None`` clears the stored one).
    fingerprint: str | None = None


@dataclass
class RunResult:
    """What :func:`run_sync` hands back: the counts, the request figures, a fatal error, the summary."""

    counts: RunCounts
    requests_sent: int = 0
    retries: int = 0
    rate_limited_answers: int = 0
    rate_limit_pauses: int = 0
    fatal: BaseException | None = None
    interrupted_creates: int = 0
    #: Every unresolved create of the partition in the state when the run ended.
    unresolved: list[StateRecord] = field(default_factory=list)
    #: ``time.monotonic()`` when the first request left, and when the last row's state was
    #: committed after it: the load itself, without setting up or closing anything.
    first_request_at: float | None = None
    last_commit_at: float | None = None
    started_at: str | None = None
    summary: SyncSummary | None = None
    #: Unknown creates settled by looking their reference up in the CRM.
    reconciled: int = 0
    #: Rows that adopted a record the CRM already held (``match_on``).
    adopted: int = 0
    #: Rows whose stored record the CRM no longer holds.
    missing: int = 0
    #: Pages of the CRM's list read to reconcile and to match.
    lookup_requests: int = 0

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


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _unresolved_message(record: StateRecord) -> str:
    """Why a stored create is unresolved, for the rejects table and the summary."""
    since = f", recorded as {record.error_code}" if record.error_code else ""
    return f"{UNKNOWN_MESSAGE} (unresolved since {record.outcome_at or 'an earlier run'}{since})"


def _create_hint(request: CheckedV1Payload | CheckedPutRequest) -> dict[str, Any] | None:
    """What a lost create can later be looked up by in the CRM: its venue and name."""
    if not isinstance(request, CheckedV1Payload):
        return None
    fields = request.fields
    return {name: str(fields[name]) for name in _HINT_FIELDS if fields.get(name) not in (None, "")}


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
        self.sync_name = state.sync_name
        self.references = settings.reference and settings.target == "v1"
        self.policy = Policy(
            settings.target, settings.on_unknown, self._reference_entry if self.references else None
        )
        self.reconciler: Reconciler | None = None
        self.matcher: Matcher | None = None
        # This run's creates answered "unknown": looked up, and maybe created again, at the end.
        self._unknown_work: dict[str, _Work] = {}
        # This run's rows that failed on a transient error after every retry: sent once more at
        # the end (a failed create was certainly not processed, so sending it again is safe).
        self._failed_work: dict[str, _Work] = {}
        # True while that pass runs: a row failing again is left to the next run.
        self._second_pass = False
        self._sends = 0
        self.sending = not settings.dry_run and client is not None
        self.counts = RunCounts()
        self.result = RunResult(self.counts, started_at=_utc_now())
        # A DB-API connection must stay on the thread that opened it: the source gets one
        # thread, the state another (created in run(), on the event loop).
        self._source_thread = ThreadPoolExecutor(1, thread_name_prefix="opportunity-sync-source")
        # The state's second connection (and the keys seen so far) live on a thread of its own,
        # so that a batch's marking and lookup run while the source thread reads the next batch.
        self._lookup_thread = ThreadPoolExecutor(1, thread_name_prefix="opportunity-sync-lookup")
        # The next batch, read, with its lookup in flight (see _read_and_plan).
        self._next: _Read | None = None
        self._seen: SeenKeys | None = None
        # The state's second connection, on the lookup thread, for its lookups (None: the
        # lookups go to the state thread).
        self._reader: SyncState | None = None
        # A SQLite reader's lookups, which mark the keys its state held at the start.
        self._keys: SqliteKeyLookup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.state_thread: StateThread | None = None
        self._queue: asyncio.Queue[_Work | None] = asyncio.Queue(maxsize=settings.concurrency * 4)
        self._abort: BaseException | None = None
        self._leased = False
        # Requests in flight at most (set for each pass of workers), and workers per slot.
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._workers_per_slot = 1
        # Keys whose unknown outcome this run already wrote to the rejects table.
        self._logged_unknown: set[str] = set()

    async def _on_state_thread(self, function: Callable[..., T], *args: Any) -> T:
        assert self.state_thread is not None
        return await self.state_thread.call(function, *args)

    async def _on_source_thread(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._source_thread, function, *args)

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> RunResult:
        self._loop = asyncio.get_running_loop()
        self.state_thread = StateThread(self.state, self._loop)
        renewing: asyncio.Task[None] | None = None
        try:
            try:
                await self._on_state_thread(self.state.open)
                if not self.settings.dry_run:
                    settings = self.settings
                    await self._on_state_thread(
                        lambda: self.state.acquire_lease(
                            settings.lease_seconds, wait_seconds=settings.lease_wait_seconds
                        )
                    )
                    self._leased = True
                    renewing = asyncio.create_task(self._renew_lease())
                if self.sending:
                    await self.state_thread.start_loop_writer()
                    if not self.state_thread.commits_locally:
                        self._workers_per_slot = _WORKERS_PER_SLOT
                await self._on_source_thread(self._open_source)
                await self._mark_interrupted_creates()
                if self.sending:
                    assert self.client is not None
                    await self._send_all(self.client)
                else:
                    await self._plan_all()
            except BaseException as error:
                self.result.fatal = error
            finally:
                if renewing is not None:
                    renewing.cancel()
                self.counts.rows_read = self.source.rows_read
                self.counts.finished = time.monotonic()
                self._collect_client_figures()
            await self._finish()
        finally:
            await self._on_source_thread(self._close_source)
            self.state_thread.stop_loop_writer()
            await self._on_state_thread(self.state.close)
            await self.state_thread.close()
            self._source_thread.shutdown(wait=True)
        return self.result

    def _reference_entry(self, key: str) -> dict[str, Any]:
        settings = self.settings
        return reference_entry(
            reference_for(self.sync_name, key),
            label=settings.reference_label,
            url_template=settings.reference_url,
            sync_name=self.sync_name,
            key=key,
        )

    def _open_source(self) -> None:
        self._seen = SeenKeys()
        self._lookup_thread.submit(self._open_reader).result()
        self.source.open()

    def _open_reader(self) -> None:
        reader = self.state.reader()
        if reader is not None:
            reader.open_reader()
            self._reader = reader
            if reader.dialect.name == "sqlite":
                self._keys = SqliteKeyLookup.open(reader)

    def _close_source(self) -> None:
        try:
            self.source.close()
        finally:
            pending, self._next = self._next, None
            if pending is not None and pending[1] is not None:
                # A lookup still running must end before its connection closes.
                concurrent.futures.wait([pending[1]])
            self._lookup_thread.submit(self._close_reader).result()
            self._lookup_thread.shutdown(wait=True)

    def _close_reader(self) -> None:
        # The keys seen live on this thread (their temporary database was opened here).
        if self._seen is not None:
            self._seen.close()
        self._keys = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _collect_client_figures(self) -> None:
        client = self.client
        if client is None:
            return
        self.result.requests_sent = client.requests_sent
        self.result.retries = client.retries
        self.result.rate_limited_answers = client.rate_limited
        if isinstance(client.gate, SharedRateLimiter):
            self.result.rate_limit_pauses = client.gate.pauses

    async def _renew_lease(self) -> None:
        """Keep the partition's lease while the run goes; a lost lease stops the load."""
        interval = self.settings.lease_seconds / _RENEWALS_PER_LEASE
        while True:
            await asyncio.sleep(interval)
            try:
                await self._on_state_thread(self.state.renew_lease)
            except LeaseLostError as error:
                self._abort = self._abort or error
                return

    async def _mark_interrupted_creates(self) -> None:
        """Turn creates an earlier run left in flight into unknowns (this partition's only)."""
        records = await self._on_state_thread(self.state.unresolved)
        interrupted = [record for record in records if record.outcome == Outcome.IN_FLIGHT]
        if not interrupted:
            return
        keys = [record.key for record in interrupted]
        self.result.interrupted_creates = len(interrupted)
        log.warning(
            "%d create(s) were in flight when an earlier run of this sync stopped; their outcome is "
            "unknown and they are not sent again (on_unknown=%r). Keys: %s",
            len(interrupted),
            self.settings.on_unknown,
            ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""),
        )
        if not self.settings.dry_run:
            message = "the create was in flight when an earlier run stopped; it may or may not be stored"
            await self._on_state_thread(self.state.mark_unknown, interrupted, "interrupted", message)

    async def _plan_all(self) -> None:
        progress = asyncio.create_task(self.progress.run(self.counts))
        try:
            await self._plan()
        finally:
            progress.cancel()

    async def _send_all(self, client: AsyncOpportunityClient) -> None:
        progress = asyncio.create_task(self.progress.run(self.counts))
        settings = self.settings
        async with client:
            if self.references:
                self.reconciler = Reconciler(
                    client, self.sync_name, settings.unknown_grace_seconds, per_page=settings.list_page_size
                )
                await self._reconcile_earlier_creates(self.reconciler)
            if settings.match_on and settings.target == "v1":
                self.matcher = Matcher(client, settings.match_on, per_page=settings.list_page_size)
            try:
                await self._with_workers(client, settings.concurrency, self._plan())
            finally:
                progress.cancel()
            if self._abort is None and self._failed_work:
                await self._resend_failed(client)
            if self._abort is None and self.reconciler is not None and self._unknown_work:
                await self._flush_writes()
                await self._reconcile_this_run(client, self.reconciler)
            self._count_lookups()
        if self._abort is not None:
            raise self._abort
        await self._flush_writes()
        if self.result.first_request_at is not None:
            self.result.last_commit_at = time.monotonic()

    async def _resend_failed(self, client: AsyncOpportunityClient) -> None:
        """Send once more, after every other row, the rows that failed on a transient error.

        Scattered refusals (a 503 or 429 on each of a row's attempts) are cleared by one more
        pass with the full retry policy. A CRM that refused more than one row in
        ``_FAILED_PASS_SHARE`` is taken as down: its rows are left to the next run rather than
        making this one wait through every retry again.
        """
        works = list(self._failed_work.values())
        self._failed_work.clear()
        if len(works) > max(1, self._sends // _FAILED_PASS_SHARE):
            log.info(
                "%d of %d rows failed on transient errors: too many for a second pass; the next run "
                "sends them again.",
                len(works),
                self._sends,
            )
            return
        log.info("Sending the %d row(s) that failed on transient errors once more.", len(works))
        counts = self.counts
        for work in works:
            counts.outcomes[Outcome.FAILED] -= 1
            counts.unshow(work.key)

        async def feed() -> None:
            for work in works:
                await self._queue.put(work)

        self._second_pass = True
        try:
            await self._with_workers(client, min(self.settings.concurrency, len(works)), feed())
        finally:
            self._second_pass = False

    async def _with_workers(self, client: AsyncOpportunityClient, slots: int, feed: Awaitable[None]) -> None:
        """Run workers sharing ``slots`` requests in flight while ``feed`` fills the queue, then
        end each and wait for all.

        A ``feed`` that raises stops the load (``_abort``) before the workers are ended, so that
        they drain what is queued without sending it.

        :param client: the client the workers send with.
        :param slots: how many requests may be in flight at once.
        :param feed: puts the rows to send on the queue.
        """
        self._slots = asyncio.Semaphore(slots)
        workers = [asyncio.create_task(self._worker(client)) for _ in range(slots * self._workers_per_slot)]
        try:
            await feed
        except BaseException as error:
            self._abort = self._abort or error
        finally:
            for _ in workers:
                await self._queue.put(None)
            await asyncio.gather(*workers, return_exceptions=True)

    def _count_lookups(self) -> None:
        self.result.lookup_requests = sum(
            helper.pages_read for helper in (self.reconciler, self.matcher) if helper is not None
        )

    async def _reconcile_earlier_creates(self, reconciler: Reconciler) -> None:
        """Before the first row: settle every unresolved create of the partition by its reference.

        Found, the row is ``created`` with the record's id. Lost (not in the CRM after the grace
        period), it is marked so that the planner creates it again, with the same reference,
        when the query returns its row. Otherwise it stays unknown.
        """
        assert self.state_thread is not None
        records = await self._on_state_thread(self.state.unresolved)
        if not records:
            return
        resolutions = await reconciler.resolve(records)
        writes: list[StateWrite] = []
        for record in records:
            resolution = resolutions.get(record.digest)
            if resolution is None or resolution.status == PENDING:
                continue
            if resolution.status == FOUND:
                self.result.reconciled += 1
                writes.append(
                    StateWrite(record.key, record.digest, Outcome.CREATED, crm_id=str(resolution.crm_id))
                )
            else:
                writes.append(
                    StateWrite(
                        record.key,
                        record.digest,
                        Outcome.FAILED,
                        error_code=LOST_CREATE,
                        error_message=LOST_MESSAGE,
                        reject=True,
                    )
                )
        if writes:
            await self.state_thread.write(*writes)
        log.info(
            "Reconciled %d earlier unknown create(s) with the CRM: %d found, %d lost (created again "
            "when their rows are read), %d still unknown.",
            len(records),
            self.result.reconciled,
            len(writes) - self.result.reconciled,
            len(records) - len(writes),
        )

    async def _reconcile_this_run(self, client: AsyncOpportunityClient, reconciler: Reconciler) -> None:
        """After the last row: look up this run's unknown creates; found ones are ``created``, lost
        ones (past the grace period) are created again once."""
        assert self.state_thread is not None
        pending = dict(self._unknown_work)
        stored = await self._on_state_thread(self.state.lookup, list(pending))
        records = [record for record in stored.values() if record.outcome in UNRESOLVED]
        resolutions = await reconciler.resolve(records)
        counts = self.counts
        again: list[_Work] = []
        writes: list[StateWrite] = []
        for record in records:
            resolution = resolutions.get(record.digest)
            if resolution is None or resolution.status == PENDING:
                continue
            work = pending[record.digest]
            counts.outcomes[Outcome.UNKNOWN] -= 1
            counts.unshow(work.key)
            self._logged_unknown.discard(record.digest)
            if resolution.status == FOUND:
                self.result.reconciled += 1
                counts.add(Outcome.CREATED)
                writes.append(
                    StateWrite(
                        work.key,
                        work.digest,
                        Outcome.CREATED,
                        payload_hash=work.payload_hash,
                        crm_id=str(resolution.crm_id),
                        source_hash=work.fingerprint,
                    )
                )
            else:
                again.append(work)
        if writes:
            await self.state_thread.write(*writes)
        for work in again:
            # Not in the CRM after the grace period: the create was lost; send it once more.
            carry = await self._send_one(client, self.state_thread, work, [])
            await self.state_thread.write(*carry)

    async def _flush_writes(self) -> None:
        """Wait until every write queued so far is committed (or raise why it could not be)."""
        assert self.state_thread is not None
        await self._on_state_thread(lambda: None)
        self.state_thread.raise_if_failed()

    async def _finish(self) -> None:
        """Count the partition's unresolved creates from the state, summarize, record the run, free the lease."""
        result = self.result
        try:
            result.unresolved = await self._on_state_thread(self.state.unresolved)
            if self.sending and self._leased and result.fatal is None:
                # Unresolved creates this run did not touch (skipped, or not in the query this
                # time) are problems of this run too: the rejects table names every one.
                self._log_unresolved(result.unresolved)
                await self._flush_writes()
        except BaseException as error:
            result.fatal = result.fatal or error
        summary = self._summary()
        result.summary = summary
        if not self.settings.dry_run:
            try:
                await self._on_state_thread(self.state.record_run, self._run_record(summary))
            except Exception as error:  # the run's own outcome matters more than its record
                log.warning("The run could not be recorded in the runs table: %s", error)
        if self._leased:
            with contextlib.suppress(Exception):
                await self._on_state_thread(self.state.release_lease)

    def _log_unresolved(self, records: list[StateRecord]) -> None:
        assert self.state_thread is not None
        writes = [
            StateWrite(
                record.key,
                record.digest,
                Outcome.UNKNOWN,
                error_code=OUTCOME_UNKNOWN,
                error_message=_unresolved_message(record),
                reject=True,
                update_state=False,
            )
            for record in records
            if record.digest not in self._logged_unknown
        ]
        if writes:
            self.state_thread.submit(*writes)

    def _summary(self) -> SyncSummary:
        result, counts, settings, state = self.result, self.counts, self.settings, self.state
        duration = counts.elapsed()
        problems = [list(problem) for problem in counts.shown_rejects]
        shown = {problem[0] for problem in problems}
        for record in result.unresolved:
            if len(problems) >= SHOWN_REJECTS:
                break
            if record.key not in shown:
                problems.append(
                    [record.key, f"unknown {record.error_code or OUTCOME_UNKNOWN}", UNKNOWN_MESSAGE]
                )
        fatal = result.fatal
        outcomes = counts.outcomes
        return SyncSummary(
            sync_name=state.sync_name,
            sync_run_id=state.run_id,
            target=settings.target,
            dry_run=settings.dry_run,
            partition_index=self.source.partition_index,
            partition_count=self.source.partition_count,
            rows_read=counts.rows_read,
            rows=counts.rows,
            created=outcomes[Outcome.CREATED],
            updated=outcomes[Outcome.UPDATED],
            unchanged=outcomes[Outcome.UNCHANGED],
            rejected=outcomes[Outcome.REJECTED],
            # From the state: every unresolved create of the partition, in the query or not.
            unknown=len(result.unresolved),
            failed=outcomes[Outcome.FAILED],
            requests_sent=result.requests_sent,
            retries=result.retries,
            rate_limited_answers=result.rate_limited_answers,
            rate_limit_pauses=result.rate_limit_pauses,
            started_at=result.started_at,
            finished_at=_utc_now(),
            duration_seconds=round(duration, 3),
            load_seconds=None if result.load_seconds is None else round(result.load_seconds, 3),
            rows_per_second=round(counts.rows / duration, 1) if duration > 0 else 0.0,
            requests_per_second=round(result.requests_sent / duration, 1) if duration > 0 else 0.0,
            state=state.location,
            state_table=state.table,
            rejects_table=state.rejects_table,
            unknown_from_interrupted_runs=result.interrupted_creates,
            reconciled=result.reconciled,
            adopted=result.adopted,
            missing=result.missing,
            first_problems=problems,
            stopped_early=None if fatal is None else f"{type(fatal).__name__}: {fatal}",
            max_rejected=settings.max_rejected,
            max_unknown=settings.max_unknown,
        )

    def _run_record(self, summary: SyncSummary) -> RunRecord:
        return RunRecord(
            sync_run_id=summary.sync_run_id,
            dag_id=self.settings.dag_id,
            task_id=self.settings.task_id,
            dag_run_id=self.state.dag_run_id,
            started_at=summary.started_at,
            finished_at=summary.finished_at,
            duration_seconds=summary.duration_seconds,
            verdict=summary.verdict,
            failure_reason=summary.failure_reason,
            rows_read=summary.rows_read,
            rows=summary.rows,
            created=summary.created,
            updated=summary.updated,
            unchanged=summary.unchanged,
            rejected=summary.rejected,
            unknown=summary.unknown,
            failed=summary.failed,
            reconciled=summary.reconciled,
            adopted=summary.adopted,
            missing=summary.missing,
            requests_sent=summary.requests_sent,
            retries=summary.retries,
            rate_limited_answers=summary.rate_limited_answers,
            max_rejected=summary.max_rejected,
            max_unknown=summary.max_unknown,
            summary=summary.as_xcom(),
        )

    # -- planning --------------------------------------------------------------------------

    def _lookup(self, batch: list[SourceRow]) -> Mapping[str, StateRecord | None]:
        """On the lookup thread: the rows of ``batch`` (each with a key) marked when their key
        was seen before, then what the state holds for the keys that their fingerprint does not
        settle (``SyncState.lookup_unsettled``).

        The keys are marked here rather than on the source thread: past ``MEMORY_KEYS`` each
        batch goes through a SQLite B-tree, which works without the GIL, so that cost moves off
        the thread that reads and fingerprints the warehouse's rows (measured over a million
        rows, a no-change run was 0.6 to 1.7 s faster). On a SQLite state the reader marks the
        keys its state held at the start itself, by rowid (``SqliteKeyLookup``), and only the
        others are marked by digest. The batches come in order, one at a time, and a batch's
        duplicates are only read once its lookup has answered.
        """
        seen = self._seen
        assert seen is not None
        if self._keys is not None:
            # A SQLite reader marks the keys its state held at the start itself (by rowid);
            # only the others go to the keys seen by digest.
            distinct = list(first_of_each(batch)[0].values())
            found, seen_before, unmarked = self._keys.lookup(
                [(row.digest, row.fingerprint) for row in distinct]
            )
            for index in seen_before:
                distinct[index].duplicate = True
            seen.mark([distinct[index] for index in unmarked])
            return found
        seen.mark(batch)
        rows = [(row.digest, row.fingerprint) for row in batch]
        if self._reader is not None:
            return self._reader.lookup_unsettled(rows)
        assert self._loop is not None
        # No second connection: the state thread looks them up, after the writes queued before.
        lookup = self._on_state_thread(self.state.lookup_unsettled, rows)
        return asyncio.run_coroutine_threadsafe(lookup, self._loop).result()

    def _read(self, limit: int) -> _Read | None:
        """On the source thread: the next rows, with the marking of their keys seen and their
        lookup started on the lookup thread; ``None`` at the end."""
        rows = self.source.read_chunk(limit, defer_mapping=True)
        if rows is None:
            return None
        keyed = [row for row in rows if row.digest]
        return rows, self._lookup_thread.submit(self._lookup, keyed) if keyed else None

    def _read_and_plan(self, limit: int, next_limit: int) -> tuple[int, list[_Planned]] | None:
        """On the source thread: the next rows, looked up and planned; ``None`` at the end.

        Returns how many rows are unchanged (and need nothing more) and the other rows with
        their decisions. A row whose fingerprint settles it is neither read from the state nor
        mapped. The batch after it is read, and its lookup started, before this one's lookup is
        waited for: the database looks one batch up while this thread reads the next.

        :param limit: rows of this batch, when it is the first.
        :param next_limit: rows of the batch read ahead.
        """
        source, policy = self.source, self.policy
        # None: nothing read ahead yet, or the end (where reading again answers None again).
        current, self._next = self._next or self._read(limit), None
        if current is None:
            return None
        rows, lookup = current
        self._next = self._read(next_limit)
        unsettled = lookup.result() if lookup is not None else {}
        unchanged = 0
        planned: list[_Planned] = []
        stored: StateRecord | None
        for row in rows:
            if row.digest and row.digest not in unsettled:
                if not row.duplicate:
                    unchanged += 1  # what plan_settled decides, without the call: most rows
                    continue
                stored, decision = None, plan_settled(row)
            else:
                stored = unsettled.get(row.digest) if row.digest else None
                if row.raw is not None and not fingerprint_matches(row, stored):
                    source.map(row)
                decision = plan(row, stored, policy)
            if decision.outcome is Outcome.UNCHANGED and decision.write is Write.NOTHING:
                unchanged += 1
                continue
            row.raw = None
            planned.append((row, decision, stored))
        return unchanged, planned

    async def _plan(self) -> None:
        """Have every batch of rows read and planned, and carry the decisions out.

        The next batch is read and planned (on the source thread, its keys looked up on the
        lookup thread) while this one is carried out, and the first batch is small, so that the first requests leave at once.
        Duplicates are known from the keys seen, not from the state, so a lookup made before an
        earlier row's write is never trusted for a second row of its key.
        """
        batch = max(1, min(self.source.chunk_size, _PLAN_BATCH))
        scan = max(1, min(self.source.chunk_size, _SCAN_BATCH))
        fetching = asyncio.ensure_future(
            self._on_source_thread(self._read_and_plan, min(batch, _FIRST_BATCH), batch)
        )
        try:
            while self._abort is None:
                fetched = await fetching
                if fetched is None:
                    return
                unchanged, planned = fetched
                # After a batch of nearly only unchanged rows (which hold no payload), the batch
                # after the one read ahead is larger.
                size = scan if len(planned) * _SCAN_SHARE <= unchanged else batch
                fetching = asyncio.ensure_future(self._on_source_thread(self._read_and_plan, size, size))
                await self._carry_out(unchanged, planned)
        finally:
            if not fetching.done():
                # Still reading or looking up: let it finish before the source and state close.
                await asyncio.wait([fetching])
            if not fetching.cancelled():
                # Mark a failed read as seen: the load already stopped for a reason of its own.
                fetching.exception()

    async def _carry_out(self, unchanged: int, planned: list[_Planned]) -> None:
        """Count a batch's unchanged rows; write, count or queue each other row as its decision says."""
        sending, counts = self.sending, self.counts
        counts.rows += unchanged
        counts.outcomes[Outcome.UNCHANGED] += unchanged
        for number, (row, decision, stored) in enumerate(planned, 1):
            if self._abort is not None:
                return
            counts.rows += 1
            adopts = False
            if self.matcher is not None and decision.action is Action.CREATE:
                decision, adopts = await self._match(row, decision, self.matcher)
            if decision.action is Action.NOTHING:
                assert decision.outcome is not None
                counts.add(decision.outcome, row.key, decision.code or "", decision.message or "")
                if sending and decision.write is not Write.NOTHING:
                    self._write_unsent(row, decision, stored)
            elif not sending:  # dry run: count what would happen
                counts.add(Outcome.CREATED if decision.creates else Outcome.UPDATED)
            else:
                assert decision.request is not None
                assert row.payload_hash is not None
                await self._queue.put(
                    _Work(
                        row.key,
                        row.digest,
                        decision.request,
                        row.payload_hash,
                        decision.creates,
                        decision.id_from_state,
                        adopts,
                        row.fingerprint,
                    )
                )
                continue
            if number % _YIELD_EVERY == 0:
                await asyncio.sleep(0)

    async def _match(self, row: SourceRow, decision: Decision, matcher: Matcher) -> tuple[Decision, bool]:
        """A create, or the update that adopts the one record ``match_on`` finds for the row."""
        assert row.payload is not None
        reference = reference_for(self.sync_name, row.key) if self.references else None
        ids = await matcher.candidates(row.payload, reference)
        if not ids:
            return decision, False
        fields = ", ".join(matcher.fields)
        if len(ids) > 1:
            return ambiguous(ids, f"{len(ids)} CRM records of the venue match on {fields}"), False
        earlier = matcher.claim(ids[0], row.key)
        if earlier is not None:
            return ambiguous(
                ids, f"the one record matching on {fields} was already adopted by key {earlier!r}"
            ), False
        return adopt(decision, ids[0]), True

    def _write_unsent(self, row: SourceRow, decision: Decision, stored: StateRecord | None) -> None:
        """Record a row that is not sent: a reject row, and its outcome when it has a key to store;
        or the fingerprint of an unchanged row."""
        assert self.state_thread is not None
        assert decision.outcome is not None
        if decision.write is Write.FINGERPRINT:
            assert stored is not None
            self.state_thread.submit(
                StateWrite(
                    row.key,
                    row.digest,
                    stored.outcome,
                    payload_hash=row.payload_hash,
                    source_hash=row.fingerprint,
                )
            )
            return
        self.state_thread.submit(
            StateWrite(
                row.key,
                row.digest or key_digest(row.key),
                decision.outcome,
                error_code=decision.code,
                error_message=decision.message,
                reject=True,
                update_state=decision.write is Write.STATE_AND_REJECT,
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
                    await writer.write(*carry)
                    carry = []
                work = await self._queue.get()
                if work is None:
                    # The end: whatever the last commit does, this worker has had its None and
                    # must return (looping back would wait on the queue for ever).
                    try:
                        if carry:
                            await writer.write(*carry)
                    except Exception as error:
                        self._abort = self._abort or error
                    return
                if self._abort is not None:
                    continue  # drain: rows not sent are simply read again next run
                carry = await self._send_one(client, writer, work, carry)
            except Exception as error:
                # Stop the load; this worker keeps draining the queue so the planner never blocks.
                carry = []
                self._abort = self._abort or error

    async def _send_one(
        self, client: AsyncOpportunityClient, writer: StateThread, work: _Work, carry: list[StateWrite]
    ) -> list[StateWrite]:
        """Send one row and return its outcome write, which the caller must commit."""
        if work.creates:
            # Durable, and the lease checked, before the request leaves: a kill from here on
            # leaves an in-flight trace, and a run that lost its lease sends nothing.
            await writer.write(*carry, self._intent(work))
            marked_at = time.monotonic()
        elif carry:
            await writer.write(*carry)
        crm_id, code, message = None, "", ""
        fatal: BaseException | None = None
        replacement: _Work | None = None
        async with self._slots:
            if work.creates:
                # Whatever else stopped the load, a create whose mark is committed is sent (its
                # row would otherwise be reported unknown), unless the lease is lost or the
                # state cannot record the answer.
                self._refuse_if_lost(writer)
                if time.monotonic() - marked_at > self._fresh_seconds:
                    await writer.write(self._intent(work))
            elif self._abort is not None:
                return []  # the load stopped while this update waited: the next run sends it
            if self.result.first_request_at is None:
                self.result.first_request_at = time.monotonic()
            self._sends += 1
            try:
                outcome, crm_id = await _request(client, work)
            except OpportunityNotFoundError as error:
                if not work.creates:
                    self.result.missing += 1
                    replacement = self._recreation(work)
                outcome, code, message = _outcome_of_error(error)
                if not work.creates:
                    message = _missing_message(work, code)
            except OpportunityError as error:
                outcome, code, message = _outcome_of_error(error)
                if error.stops_load:
                    # Every other row would fail the same way: record this one, then stop the load.
                    fatal = error
        if replacement is not None:
            # The stored record is gone and the user asked for it to be created again.
            return await self._send_one(client, writer, replacement, [])
        if outcome in (Outcome.CREATED, Outcome.UPDATED):
            self.counts.add(outcome)
            if work.adopts:
                self.result.adopted += 1
            result = StateWrite(
                work.key,
                work.digest,
                outcome,
                payload_hash=work.payload_hash,
                crm_id=crm_id,
                source_hash=work.fingerprint,
            )
        else:
            self.counts.add(outcome, work.key, code, message)
            if outcome == Outcome.UNKNOWN:
                self._logged_unknown.add(work.digest)
                if work.creates:
                    self._unknown_work[work.digest] = work
            elif outcome == Outcome.FAILED and fatal is None and not self._second_pass:
                self._failed_work[work.digest] = work
            result = StateWrite(
                work.key,
                work.digest,
                outcome,
                error_code=code,
                error_message=message,
                # A second failure: the first pass already wrote this row to the rejects table.
                reject=not (outcome == Outcome.FAILED and self._second_pass),
            )
        if fatal is not None:
            await writer.write(result)
            raise fatal
        return [result]

    def _refuse_if_lost(self, writer: StateThread) -> None:
        """Raise when the run lost its lease or cannot write its state: nothing more is sent."""
        if isinstance(self._abort, LeaseLostError):
            raise LeaseLostError(str(self._abort)) from self._abort
        writer.raise_if_failed()

    @property
    def _fresh_seconds(self) -> float:
        return min(_INTENT_FRESH_SECONDS, self.settings.lease_seconds / 4)

    def _intent(self, work: _Work) -> StateWrite:
        """The in-flight mark of a create, committed before the create is sent."""
        return StateWrite(
            work.key,
            work.digest,
            Outcome.IN_FLIGHT,
            payload_hash=work.payload_hash,
            attempted_at=time.time(),
            create_hint=_create_hint(work.request),
            source_hash=work.fingerprint,
        )

    def _recreation(self, work: _Work) -> _Work | None:
        """The create that replaces an update of a record the CRM no longer holds, when asked for."""
        request = work.request
        if (
            self.settings.on_missing_record != "recreate"
            or not work.id_from_state
            or not isinstance(request, CheckedV1Payload)
        ):
            return None
        try:
            create = recreate(request)
        except PayloadValidationError as error:
            log.warning("Row %s cannot be created again: %s", work.key, error.summary)
            return None
        return _Work(
            work.key, work.digest, create, work.payload_hash, creates=True, fingerprint=work.fingerprint
        )


async def _request(client: AsyncOpportunityClient, work: _Work) -> tuple[Outcome, str]:
    """Send one row's request; return its outcome and the record's id."""
    request = work.request
    if isinstance(request, CheckedV1Payload):
        new_id = await client.add_or_update_opportunity(request)
        return (Outcome.CREATED if work.creates else Outcome.UPDATED), str(new_id)
    await client.put_opportunity_request(request)
    return Outcome.UPDATED, f"{request.opportunity_id}/{request.opportunity_type}"


def _missing_message(work: _Work, code: str) -> str:
    request = work.request
    if isinstance(request, CheckedV1Payload):
        record, recreate_hint = (
            f"record {request.fields.get('id')}",
            ", or created again with on_missing_record='recreate'",
        )
    else:
        record, recreate_hint = f"{request.opportunity_type} opportunity {request.opportunity_id}", ""
    origin = "the id the state holds for this row" if work.id_from_state else "the id the row's payload names"
    return (
        f"the CRM no longer holds {record}, {origin} (deleted or merged there; the platform answered "
        f"{code}). The row is rejected on every run until it is resolved to another id{recreate_hint}."
    )


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
