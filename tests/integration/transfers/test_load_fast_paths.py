"""The bulk load's fast paths keep its guarantees: with intents committed on the event loop's
thread and requests paced over the round trip, every create's intent is still committed before
its request leaves, and the engine times the load itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from airflow_opportunity_provider.hooks.async_client import AsyncOpportunityClient
from airflow_opportunity_provider.mock_crm import FaultConfig, MockCrmServer
from airflow_opportunity_provider.transfers import SqlToOpportunityOperator
from airflow_opportunity_provider.transfers.state import IN_FLIGHT, StateWrite, SyncState
from tests.integration.transfers.helpers import records_by_ref, run, state_rows

pytestmark = pytest.mark.usefixtures("airflow_db")

Factory = Callable[..., SqlToOpportunityOperator]


def test_each_intent_is_committed_before_its_request_leaves_and_on_the_loop_thread(
    warehouse: Callable[..., Path],
    state_db: Path,
    make_operator: Factory,
    mock_crm: MockCrmServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    warehouse(300)
    mock_crm.set_faults(FaultConfig(latency=0.01))
    intents: dict[str, float] = {}
    committing_threads: list[str] = []
    requests: dict[str, float] = {}
    apply = SyncState.apply

    def recording_apply(self: SyncState, writes: Iterable[StateWrite]) -> None:
        group = list(writes)
        apply(self, group)
        committing_threads.append(threading.current_thread().name)
        done = time.monotonic()
        for write in group:
            if write.outcome == IN_FLIGHT:
                intents.setdefault(write.source_key, done)

    add_or_update = AsyncOpportunityClient.add_or_update_opportunity

    async def recording_send(self: AsyncOpportunityClient, payload: Any, **options: Any) -> int:
        requests[str(payload.fields["utmContent"])] = time.monotonic()
        return await add_or_update(self, payload, **options)

    monkeypatch.setattr(SyncState, "apply", recording_apply)
    monkeypatch.setattr(AsyncOpportunityClient, "add_or_update_opportunity", recording_send)
    operator = make_operator(concurrency=8)
    started = time.monotonic()
    summary, failure = run(operator)
    wall = time.monotonic() - started

    assert failure is None
    assert summary["created"] == 300
    assert set(requests) == set(intents) == set(state_rows(state_db)) == set(records_by_ref(mock_crm))
    assert all(intents[key] <= requests[key] for key in requests), "a create left before its intent was in"
    # The event loop runs on this thread (no loop was running here); it made most commits.
    loop_thread = threading.current_thread().name
    assert committing_threads.count(loop_thread) > len(committing_threads) / 2
    assert 0 < summary["load_seconds"] < wall


def test_a_dry_run_times_no_load(
    warehouse: Callable[..., Path], state_db: Path, make_operator: Factory, mock_crm: MockCrmServer
) -> None:
    warehouse(20)
    operator = make_operator(dry_run=True)
    summary, failure = run(operator)
    assert failure is None
    assert summary["created"] == 20
    assert summary["load_seconds"] is None


def test_two_partitions_at_once_on_one_sqlite_state_file_load_every_key_once(
    warehouse: Callable[..., Path],
    state_db: Path,
    make_operator: Factory,
    mock_crm: MockCrmServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    warehouse(400)
    mock_crm.set_faults(FaultConfig(latency=0.002))
    committing_threads: list[str] = []
    apply = SyncState.apply

    def recording_apply(self: SyncState, writes: Iterable[StateWrite]) -> None:
        apply(self, writes)
        committing_threads.append(threading.current_thread().name)

    monkeypatch.setattr(SyncState, "apply", recording_apply)
    operators = [make_operator(partition_index=index, partition_count=2, concurrency=8) for index in range(2)]
    outcomes: list[tuple[dict[str, Any], Any]] = []

    def load(operator: SqlToOpportunityOperator) -> None:
        outcomes.append(run(operator))

    threads = [
        threading.Thread(target=load, args=(operator,), name=f"partition-{number}")
        for number, operator in enumerate(operators)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(outcomes) == 2
    assert all(failure is None for _, failure in outcomes)
    assert sum(summary["created"] for summary, _ in outcomes) == 400
    records = records_by_ref(mock_crm)
    assert len(records) == 400
    assert all(len(found) == 1 for found in records.values())
    state = state_rows(state_db)
    assert len(state) == 400
    assert {row["outcome"] for row in state.values()} == {"created"}
    # Both partitions' event loops committed on their own threads.
    assert {"partition-0", "partition-1"} <= set(committing_threads)


def test_a_state_without_a_second_connection_is_looked_up_on_its_own_thread(
    warehouse: Callable[..., Path],
    state_db: Path,
    make_operator: Factory,
    mock_crm: MockCrmServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SQLite state that is not a WAL file has no reader: its lookups go to the state thread,
    and a no-change run is still settled from the state, and sends nothing."""
    warehouse(120)
    monkeypatch.setattr(SyncState, "reader", lambda self: None)
    threads: list[str] = []
    lookup = SyncState.lookup_unsettled

    def recording_lookup(self: SyncState, rows: Any) -> Any:
        threads.append(threading.current_thread().name)
        return lookup(self, rows)

    monkeypatch.setattr(SyncState, "lookup_unsettled", recording_lookup)
    summary, failure = run(make_operator(concurrency=4))
    assert failure is None
    assert summary["created"] == 120
    summary, failure = run(make_operator(concurrency=4))
    assert failure is None
    assert (summary["unchanged"], summary["requests_sent"]) == (120, 0)
    assert threads
    assert {name.split("_")[0] for name in threads} == {"opportunity-sync-state"}
    assert all(len(records) == 1 for records in records_by_ref(mock_crm).values())
