"""SqlToOpportunityOperator: a scheduled, idempotent load of a warehouse table into the CRM.

Each run reads a SQL query in chunks, sends only the rows that changed since the last run,
creates each record at most once (rows already created are sent as updates of their stored
id), records every row's fate in a sync-state table, and fails after the last row when the
rejects exceed the threshold.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from airflow.providers.common.compat.sdk import BaseOperator, Context, conf

from airflow_opportunity_provider.connection import DEFAULT_CONN_ID
from airflow_opportunity_provider.errors import OpportunityConfigurationError
from airflow_opportunity_provider.hooks.async_client import AsyncOpportunityClient
from airflow_opportunity_provider.hooks.opportunity import OpportunityHook
from airflow_opportunity_provider.lineage import sync_asset, sync_lineage
from airflow_opportunity_provider.protocol import V1_ADD_OR_UPDATE, V2_OPPORTUNITIES
from airflow_opportunity_provider.references import DEFAULT_REFERENCE_LABEL, check_url_template
from airflow_opportunity_provider.transfers.engine import (
    DEFAULT_LEASE_SECONDS,
    EngineSettings,
    new_run_id,
    run_sync_blocking,
)
from airflow_opportunity_provider.transfers.progress import ProgressReporter
from airflow_opportunity_provider.transfers.rate_limit import SharedRateLimiter
from airflow_opportunity_provider.transfers.reconcile import DEFAULT_UNKNOWN_GRACE_SECONDS
from airflow_opportunity_provider.transfers.source import SqlSource, get_db_hook
from airflow_opportunity_provider.transfers.state import (
    DEFAULT_STATE_TABLE,
    LeaseHeldError,
    SyncState,
    check_sync_name,
    check_table_name,
)
from airflow_opportunity_provider.transfers.summary import OpportunitySyncError, Threshold

# Executors that run every task on the scheduler's machine, where a local state file is shared.
_LOCAL_EXECUTORS = frozenset({"", "LocalExecutor", "SequentialExecutor", "DebugExecutor"})
XCOM_SUMMARY_KEY = "sync_summary"


def _whole_number(name: str, value: Any, minimum: int) -> int:
    """A parameter that must be a whole number (``True`` is not one, nor is ``"10"``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number of at least {minimum}; got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}; got {value!r}.")
    return value


def _seconds(name: str, value: Any, *, allow_zero: bool = True, optional: bool = False) -> float | None:
    """A parameter that must be a number (of seconds, or requests a second)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = "a number or None" if optional else "a number"
        raise ValueError(f"{name} must be {kind}; got {type(value).__name__} {value!r}.")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be above 0{' or exactly 0' if allow_zero else ''}; got {value!r}.")
    return float(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}.")
    return value


def _check_threshold(name: str, value: Any) -> Threshold:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be an int (a count of rows), a float (a share of rows) or None.")
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} as a float is a share of the rows, between 0.0 and 1.0; got {value}.")
    if value < 0:
        raise ValueError(f"{name} must not be negative; got {value}.")
    return value


def _check_sync_name(name: Any) -> str:
    """A sync name as the state takes it; an empty one is refused rather than replaced."""
    if not isinstance(name, str) or not name.strip():
        raise OpportunityConfigurationError(
            f"sync_name is {name!r}: it names the sync's state, so an empty name would start a fresh state "
            "and create every row again. Give it a non-empty name (or leave sync_name out for "
            "<dag_id>.<task_id>)."
        )
    return check_sync_name(name)


def _is_distributed_executor(executor_setting: str) -> bool:
    """Whether ``[core] executor`` names an executor that may run tasks on other machines."""
    for part in executor_setting.split(","):
        name = part.strip().split(":")[-1].split(".")[-1]
        if name not in _LOCAL_EXECUTORS:
            return True
    return False


class SqlToOpportunityOperator(BaseOperator):
    """Load the rows of a SQL query into the CRM: create-once, only changed rows, every row's fate recorded.

    Every row is named by its key columns. The sync state (per ``sync_name`` and key: the CRM
    id, a hash of the last payload sent, the last outcome and its time) makes each run send
    only rows that are new, changed, or failed last time; a row created once is afterwards
    always sent as an update of its stored id. A v1 create whose outcome cannot be known is
    recorded as ``unknown`` and is not sent again unless ``on_unknown="resend"``.

    :param sql: the query that returns the source rows (templated; a ``.sql`` file works too).
    :param sql_conn_id: the Airflow connection of the source database (any SQL provider).
    :param key_columns: the column, or list of columns, that names each row.
    :param mapping: payload field -> column name (a NULL column leaves its field out), or a
        callable that takes the row as a dict and returns the payload.
    :param target: ``"v1"`` (add-or-update; without a stored id the row is created) or ``"v2"``
        (put; the payload carries ``Id``, ``opportunityType`` and optional ``LanguageId``).
    :param opportunity_conn_id: the CRM connection.
    :param sync_name: names this sync in the state (templated); ``<dag_id>.<task_id>`` by default.
    :param state_conn_id: the SQL connection that holds the state and rejects tables (templated);
        by default a local SQLite file under ``$AIRFLOW_HOME/opportunity_sync/``, which is only
        safe when every run of the sync happens on one machine.
    :param state_table: the state table name (``table`` or ``schema.table``); the rejects go
        to ``<state_table>_rejects``.
    :param concurrency: requests in flight at once.
    :param rate_limit: requests per second across all workers of this task; ``None`` for none.
    :param burst: requests that may go at once after a quiet spell (default: ``rate_limit``).
    :param max_rejected: rejected rows allowed before the task fails: an int count or a float
        share of the rows; ``None`` for no limit. A run where no row loaded always fails.
    :param max_unknown: rows with an unknown outcome allowed before the task fails (int, float
        share or ``None``).
    :param on_unknown: ``"skip"`` rows whose create had an unknown outcome (counted as unknown
        until resolved) or ``"resend"`` them (may create a duplicate in the CRM).
    :param dry_run: validate and diff against the state, report what would be sent, send and
        write nothing.
    :param partition_index: which partition of the keys this task loads (``.expand()`` it).
    :param partition_count: how many partitions the keys are spread over.
    :param chunk_size: rows fetched at a time, and the most rows looked up in the state at a time
        (a run of unchanged rows looks them up 5,000 at a time, other rows 1,000 at a time).
    :param progress_interval: seconds between progress lines in the task log.
    :param count_source_rows: run ``SELECT COUNT(*)`` over the query first, for the time-left estimate.
    :param lease_seconds: how long this run's lease on its sync partition lasts without renewal
        (it is renewed while the run goes); a second run of the same partition fails while it holds.
    :param lease_wait_seconds: how long a run waits for another run's lease before failing (0:
        fail at once, naming the holder).
    :param reference: v1: put the sync's reference (an ``externalUrls`` entry whose ``ref`` is
        derived from the sync name and the row's key) on every record, and settle creates with an
        unknown outcome by looking it up in the CRM. ``False`` sends none; unknowns are then left
        to a person.
    :param reference_url: an https URL template with ``{key}`` and ``{sync_name}`` for the
        reference entry (a link back to the source row); ``None`` sends ``ref`` and ``label`` only.
    :param reference_label: the reference entry's label (``None`` for none).
    :param unknown_grace_seconds: how old an unknown create must be before "not found in the
        CRM" is trusted to mean it was lost (it is then created again, with the same reference).
    :param match_on: v1: payload fields (e.g. ``["name"]`` or ``["name", "contactId"]``) by which a
        row with no CRM id adopts the one record of its venue the CRM already holds; several
        matches reject the row with ``ambiguous_match``. ``None``: every new row is created.
    :param on_missing_record: what to do with a row whose stored record the CRM no longer holds
        (v1 24222, v2 404): ``"reject"`` it until someone acts, or ``"recreate"`` it (v1 only).
    """

    template_fields: Sequence[str] = ("sql", "sync_name", "state_conn_id")
    template_ext: Sequence[str] = (".sql",)
    template_fields_renderers = {"sql": "sql"}
    ui_color = "#e8f4ea"

    def __init__(
        self,
        *,
        sql: str,
        sql_conn_id: str,
        key_columns: str | Sequence[str],
        mapping: Mapping[str, str] | Callable[[dict[str, Any]], Mapping[str, Any]],
        target: Literal["v1", "v2"] = "v1",
        opportunity_conn_id: str = DEFAULT_CONN_ID,
        sync_name: str | None = None,
        state_conn_id: str | None = None,
        state_table: str = DEFAULT_STATE_TABLE,
        concurrency: int = 16,
        rate_limit: float | None = None,
        burst: int | None = None,
        max_rejected: Threshold = 0,
        max_unknown: Threshold = 0,
        on_unknown: Literal["skip", "resend"] = "skip",
        dry_run: bool = False,
        partition_index: int = 0,
        partition_count: int = 1,
        chunk_size: int = 5000,
        progress_interval: float = 10.0,
        count_source_rows: bool = True,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        lease_wait_seconds: float = 0.0,
        reference: bool = True,
        reference_url: str | None = None,
        reference_label: str | None = DEFAULT_REFERENCE_LABEL,
        unknown_grace_seconds: float = DEFAULT_UNKNOWN_GRACE_SECONDS,
        match_on: Sequence[str] | None = None,
        on_missing_record: Literal["reject", "recreate"] = "reject",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Checked here, so that a wrong DAG fails when it is parsed rather than at 3 a.m.
        columns = [key_columns] if isinstance(key_columns, str) else list(key_columns)
        if not columns or not all(isinstance(column, str) and column for column in columns):
            raise ValueError("key_columns must be a column name or a non-empty list of column names.")
        if isinstance(mapping, Mapping):
            if not mapping or not all(isinstance(v, str) for v in mapping.values()):
                raise ValueError(
                    "mapping must map payload fields to column names (strings), or be a callable."
                )
        elif not callable(mapping):
            raise ValueError(
                "mapping must be a dict (payload field -> column) or a callable(row) -> payload."
            )
        if target not in ("v1", "v2"):
            raise ValueError(f"target must be 'v1' or 'v2'; got {target!r}.")
        if on_unknown not in ("skip", "resend"):
            raise ValueError(f"on_unknown must be 'skip' or 'resend'; got {on_unknown!r}.")
        _whole_number("concurrency", concurrency, 1)
        _seconds("rate_limit", rate_limit, allow_zero=False, optional=True)
        if burst is not None:
            _whole_number("burst", burst, 1)
        _whole_number("partition_count", partition_count, 1)
        _whole_number("partition_index", partition_index, 0)
        if partition_index >= partition_count:
            raise ValueError(
                f"partition_index must be between 0 and partition_count - 1 ({partition_count - 1}); "
                f"got {partition_index!r}."
            )
        _whole_number("chunk_size", chunk_size, 1)
        _seconds("progress_interval", progress_interval)
        _seconds("lease_seconds", lease_seconds, allow_zero=False)
        _seconds("lease_wait_seconds", lease_wait_seconds)
        _flag("dry_run", dry_run)
        _flag("reference", reference)
        reference_url = check_url_template(reference_url)
        if reference_label is not None and (
            not isinstance(reference_label, str) or len(reference_label) > 255
        ):
            raise ValueError(
                f"reference_label must be text of at most 255 characters or None; got {reference_label!r}."
            )
        _seconds("unknown_grace_seconds", unknown_grace_seconds)
        if on_missing_record not in ("reject", "recreate"):
            raise ValueError(f"on_missing_record must be 'reject' or 'recreate'; got {on_missing_record!r}.")
        if on_missing_record == "recreate" and target == "v2":
            raise ValueError(
                "on_missing_record='recreate' needs target='v1': the v2 platform only updates records "
                "(a put cannot create one). Use 'reject' for v2."
            )
        if match_on is not None:
            fields = [match_on] if isinstance(match_on, str) else list(match_on)
            if not fields or not all(isinstance(name, str) and name for name in fields):
                raise ValueError(
                    f"match_on must be None or a non-empty list of payload field names; got {match_on!r}."
                )
            if target == "v2":
                raise ValueError("match_on needs target='v1': v2 rows name their record (Id) themselves.")
            if "id" in fields:
                raise ValueError(
                    "match_on cannot use 'id': a row with an id is an update of that record already."
                )
            match_on = tuple(fields)
        _flag("count_source_rows", count_source_rows)
        if sync_name is not None:
            if not isinstance(sync_name, str):
                raise ValueError(f"sync_name must be text; got {type(sync_name).__name__} {sync_name!r}.")
            if "{{" not in sync_name:
                try:
                    _check_sync_name(sync_name)
                except OpportunityConfigurationError as error:
                    raise ValueError(str(error)) from None
        try:
            check_table_name(state_table)
        except OpportunityConfigurationError as error:
            raise ValueError(str(error)) from None
        self.sql = sql
        self.sql_conn_id = sql_conn_id
        self.key_columns = columns
        self.mapping = mapping
        self.target: Literal["v1", "v2"] = target
        self.opportunity_conn_id = opportunity_conn_id
        self.sync_name = sync_name
        self.state_conn_id = state_conn_id
        self.state_table = state_table
        self.concurrency = concurrency
        self.rate_limit = rate_limit
        self.burst = burst
        self.max_rejected = _check_threshold("max_rejected", max_rejected)
        self.max_unknown = _check_threshold("max_unknown", max_unknown)
        self.on_unknown: Literal["skip", "resend"] = on_unknown
        # Not ``self.dry_run``: BaseOperator has a dry_run() method of its own (it renders templates).
        self.is_dry_run = dry_run
        self.partition_index = partition_index
        self.partition_count = partition_count
        self.chunk_size = chunk_size
        self.progress_interval = progress_interval
        self.count_source_rows = count_source_rows
        self.lease_seconds = float(lease_seconds)
        self.lease_wait_seconds = float(lease_wait_seconds)
        self.reference = reference
        self.reference_url = reference_url
        self.reference_label = reference_label
        self.unknown_grace_seconds = float(unknown_grace_seconds)
        self.match_on: tuple[str, ...] | None = None if match_on is None else tuple(match_on)
        self.on_missing_record: Literal["reject", "recreate"] = on_missing_record
        self.last_summary: dict[str, Any] | None = None
        # A finished sync updates its Asset, so downstream DAGs can be scheduled on it. A
        # templated sync name is only known at run time: such a task declares no outlet.
        if "outlets" not in kwargs and not dry_run and "{{" not in str(sync_name or ""):
            self.outlets = [sync_asset(self.effective_sync_name, conn_id=opportunity_conn_id)]

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the source table(s) as inputs, the CRM's opportunities as the output."""
        done = self.last_summary or {}
        rows_loaded = None
        if done and not self.is_dry_run:
            rows_loaded = int(done.get("created", 0)) + int(done.get("updated", 0))
        return sync_lineage(
            platform=self.target,
            opportunity_conn_id=self.opportunity_conn_id,
            source_conn_id=self.sql_conn_id,
            sql=str(self.sql),
            rows_loaded=rows_loaded,
        )

    @property
    def target_endpoint(self) -> str:
        """The CRM endpoint this load writes to (for lineage): method and path."""
        if self.target == "v1":
            return f"POST {V1_ADD_OR_UPDATE}"
        return f"PUT {V2_OPPORTUNITIES}/{{Id}}"

    @property
    def effective_sync_name(self) -> str:
        """The sync's name in the state: ``sync_name``, or ``<dag_id>.<task_id>`` when none is given.

        A given name that renders to nothing is an error, never the default: a fresh state would
        create every row again.
        """
        if self.sync_name is not None:
            return _check_sync_name(self.sync_name)
        dag_id = self.dag_id if self.has_dag() else "no_dag"
        return f"{dag_id}.{self.task_id}"

    def _state(self, sync_name: str, run_id: str, context: Context) -> SyncState:
        dag_run = context.get("run_id") if hasattr(context, "get") else None
        options: dict[str, Any] = {
            "sync_name": sync_name,
            "run_id": run_id,
            "table": self.state_table,
            "dag_run_id": str(dag_run) if dag_run else None,
            "partition_index": self.partition_index,
            "partition_count": self.partition_count,
        }
        if self.state_conn_id:
            return SyncState.from_conn_id(str(self.state_conn_id), **options)
        executor = conf.get("core", "executor", fallback="")
        if _is_distributed_executor(executor or ""):
            self.log.warning(
                "!!! SqlToOpportunityOperator %r keeps its sync state in a LOCAL SQLite file, but the "
                "executor is %r: each worker machine then has its own state, so a run on another "
                "machine does not know which rows were already created and can CREATE DUPLICATES. "
                "Set state_conn_id to a SQL connection on a database every worker reaches (e.g. "
                "PostgreSQL).",
                self.task_id,
                executor,
            )
        return SyncState.local(**options)

    def execute(self, context: Context) -> dict[str, Any]:
        """Run the sync and return its summary (also pushed to XCom as ``sync_summary``)."""
        sync_name = self.effective_sync_name
        run_id = new_run_id()
        hook = OpportunityHook(self.opportunity_conn_id)
        if not self.is_dry_run:
            # Fail before reading a row when the connection cannot reach the chosen target.
            if self.target == "v1":
                hook.settings.require_v1()
            else:
                hook.settings.require_v2()
        source = SqlSource(
            get_db_hook(self.sql_conn_id, purpose="sql_conn_id"),
            str(self.sql),
            key_columns=self.key_columns,
            mapping=self.mapping,
            partition_index=self.partition_index,
            partition_count=self.partition_count,
            chunk_size=self.chunk_size,
        )
        state = self._state(sync_name, run_id, context)
        self.log.info(
            "Sync %r (run %s): %s from %r to %s %s, state in %s (%s); concurrency %d, rate limit %s%s%s",
            sync_name,
            run_id,
            "dry run" if self.is_dry_run else "loading",
            self.sql_conn_id,
            self.target,
            self.target_endpoint,
            state.location,
            state.table,
            self.concurrency,
            f"{self.rate_limit:g}/s" if self.rate_limit else "none",
            f", partition {self.partition_index} of {self.partition_count}"
            if self.partition_count > 1
            else "",
            f", on_unknown={self.on_unknown}, reference={self.reference}, match_on={self.match_on}, "
            f"on_missing_record={self.on_missing_record}",
        )
        settings = EngineSettings(
            target=self.target,
            concurrency=self.concurrency,
            rate_limit=self.rate_limit,
            burst=self.burst,
            on_unknown=self.on_unknown,
            dry_run=self.is_dry_run,
            progress_interval=self.progress_interval,
            lease_seconds=self.lease_seconds,
            lease_wait_seconds=self.lease_wait_seconds,
            max_rejected=self.max_rejected,
            max_unknown=self.max_unknown,
            dag_id=self.dag_id if self.has_dag() else None,
            task_id=self.task_id,
            reference=self.reference,
            reference_url=self.reference_url,
            reference_label=self.reference_label,
            unknown_grace_seconds=self.unknown_grace_seconds,
            match_on=self.match_on,
            on_missing_record=self.on_missing_record,
        )
        progress = ProgressReporter(self.progress_interval, logger=self.log)
        if self.count_source_rows:
            total = _run_on_own_thread(source.count_rows)
            if total is not None:
                progress.total = -(-total // self.partition_count)  # this partition's share, about

        def client_factory(gate: SharedRateLimiter) -> AsyncOpportunityClient:
            return AsyncOpportunityClient.from_hook(hook, concurrency=self.concurrency, gate=gate)

        result = _run_on_own_thread(
            lambda: run_sync_blocking(
                settings, source, state, None if self.is_dry_run else client_factory, progress
            )
        )
        assert result.summary is not None
        typed = result.summary
        summary = typed.as_xcom()
        self.last_summary = summary
        self._push_summary(context, summary)
        text = str(typed)
        reason = typed.failure_reason
        if isinstance(result.fatal, OpportunityConfigurationError) and not result.counts.rows:
            # Nothing was read or sent: the user's setting is the whole story.
            raise result.fatal
        if isinstance(result.fatal, LeaseHeldError):
            # Another run holds this partition: nothing was read or sent.
            raise result.fatal
        if result.fatal is not None:
            self.log.error("%s", text)
            raise OpportunitySyncError(
                f"The sync stopped before the last row: {result.fatal}\n{text}", summary
            ) from result.fatal
        if reason and not self.is_dry_run:
            self.log.error("%s", text)
            raise OpportunitySyncError(f"The sync failed: {reason}.\n{text}", summary)
        self.log.info("%s", text)
        if reason:
            self.log.warning("A real run would fail: %s.", reason)
        return summary

    @staticmethod
    def _push_summary(context: Context, summary: dict[str, Any]) -> None:
        ti = context.get("ti") if hasattr(context, "get") else None
        if ti is not None:
            # Pushed on failure too, where the return value is not: the summary of a failed
            # run is the first thing to look at.
            ti.xcom_push(key=XCOM_SUMMARY_KEY, value=summary)


def _run_on_own_thread(function: Callable[[], Any]) -> Any:
    """Run ``function`` on this thread, or on a new one when an event loop already runs here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return function()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, name="opportunity-sync")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
