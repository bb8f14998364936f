"""Sync states for the page's tests, written the way a load writes them: through ``SyncState``.

Each sync is a few runs of state changes, each recorded in the runs table as the engine records
it; the expected figures of the page are written down beside them, so a test compares the page
with what was written, not with what the page read.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_opportunity_provider.transfers.keys import key_digest
from airflow_opportunity_provider.transfers.state import IN_FLIGHT, RunRecord, StateWrite, SyncState, utc_now

MAIN_SYNC = "warehouse_to_crm.load_opportunities"
NEXUS_SYNC = "nexus_to_crm.put_opportunities"
HOSTILE_SYNC = "<b>bold</b> & co"
HOSTILE_MESSAGE = '$.closedDate: must be a real date, got "2023-02-30" <img src=x onerror="alert(1)">'
RESOLVE_SYNC = "browser.resolve"
FORGET_SYNC = "browser.forget"
API_SYNC = "api.changes"


@dataclass(frozen=True)
class Expected:
    """What the syncs list must show for one sync.

    :param rows_in_state: state rows.
    :param unresolved_unknowns: rows with an unknown outcome.
    :param open_rejects: rows rejected or failed.
    :param last_run: the counts of its last run that are not zero.
    :param runs: how many runs it had.
    """

    rows_in_state: int
    unresolved_unknowns: int
    open_rejects: int
    last_run: dict[str, int]
    runs: int


def _run(
    path: Path,
    sync_name: str,
    *writes: StateWrite,
    unknown: tuple[str, ...] = (),
    retries: int = 0,
    rate_limited: int = 0,
) -> str:
    """One run of a sync as the engine makes it: turn earlier in-flight creates into unknowns,
    write its changes, and record the run in the runs table with its counts."""
    run_id = uuid.uuid4().hex
    state = SyncState.local(path, sync_name=sync_name, run_id=run_id, dag_run_id="manual__ui_test")
    started = time.monotonic()
    started_at = utc_now()
    state.open()
    try:
        if unknown:
            state.mark_unknown(
                [key_digest(key) for key in unknown],
                "outcome_unknown",
                "the task was killed while the create was in flight",
            )
        state.apply(writes)
        counts: dict[str, int] = {}
        for write in writes:
            # A create still in flight is no outcome yet: the engine counts it once it is answered.
            if write.outcome != IN_FLIGHT:
                counts[str(write.outcome)] = counts.get(str(write.outcome), 0) + 1
        sent = sum(
            count for outcome, count in counts.items() if outcome in ("created", "updated", "failed")
        ) + sum(1 for write in writes if write.outcome == IN_FLIGHT)
        rows = sum(counts.values())
        state.record_run(
            RunRecord(
                sync_run_id=run_id,
                dag_id="sample_dag",
                task_id="load",
                dag_run_id="manual__ui_test",
                started_at=started_at,
                finished_at=utc_now(),
                duration_seconds=round(time.monotonic() - started, 6),
                verdict="failed" if counts.get("unknown") else "passed",
                failure_reason="1 create with an unknown outcome" if counts.get("unknown") else None,
                rows_read=rows,
                rows=rows,
                requests_sent=sent + retries,
                retries=retries,
                rate_limited_answers=rate_limited,
                **{name: count for name, count in counts.items()},
            )
        )
    finally:
        state.close()
    time.sleep(0.02)  # runs apart in time, as they are
    return run_id


def _write(key: str, outcome: str, **fields: Any) -> StateWrite:
    return StateWrite(key, key_digest(key), outcome, **fields)  # type: ignore[arg-type]


def _created(key: str, crm_id: int) -> StateWrite:
    return _write(key, "created", payload_hash=f"h-{key}", crm_id=str(crm_id))


def _rejected(key: str, code: str, message: str, outcome: str = "rejected") -> StateWrite:
    return _write(key, outcome, payload_hash=f"h-{key}", error_code=code, error_message=message, reject=True)


def write_local_state(path: Path) -> dict[str, Expected]:
    """The local state: the main v1 sync, a sync with a hostile name, and scratch syncs for actions."""
    keys = [f"opp-{number:04d}" for number in range(16)]
    _run(
        path,
        MAIN_SYNC,
        *(_created(key, 1000 + number) for number, key in enumerate(keys[:12])),
        _rejected(keys[12], "24224", "Contact 918 does not belong to venue 107"),
        _rejected(keys[13], "24224", "Contact 918 does not belong to venue 107"),
        _write(keys[14], IN_FLIGHT, payload_hash=f"h-{keys[14]}"),
    )
    _run(
        path,
        MAIN_SYNC,
        *(_write(key, "updated", payload_hash=f"h2-{key}") for key in keys[:3]),
        _rejected(keys[15], "schema", HOSTILE_MESSAGE),
        # The unknown create is reported again by this run, and not sent.
        _write(
            keys[14],
            "unknown",
            error_code="outcome_unknown",
            error_message="not sent again",
            reject=True,
            update_state=False,
        ),
        unknown=(keys[14],),
        retries=2,
        rate_limited=1,
    )
    _run(path, HOSTILE_SYNC, _created("h-1", 1))
    _run(
        path,
        RESOLVE_SYNC,
        _created("r-0", 2000),
        _write(
            "r-1",
            "unknown",
            payload_hash="h-r-1",
            error_code="timeout",
            error_message="read timeout",
            reject=True,
        ),
    )
    _run(path, FORGET_SYNC, *(_created(f"f-{number}", 3000 + number) for number in range(7)))
    return {
        MAIN_SYNC: Expected(16, 1, 3, {"updated": 3, "rejected": 1, "unknown": 1}, runs=2),
        HOSTILE_SYNC: Expected(1, 0, 0, {"created": 1}, runs=1),
        RESOLVE_SYNC: Expected(2, 1, 0, {"created": 1, "unknown": 1}, runs=1),
        FORGET_SYNC: Expected(7, 0, 0, {"created": 7}, runs=1),
    }


def write_connection_state(path: Path) -> dict[str, Expected]:
    """The state of a SQL connection: a v2 sync, and a scratch sync for the API's actions."""
    keys = [f"nx-{number:03d}" for number in range(20)]
    _run(
        path,
        NEXUS_SYNC,
        *(
            _write(key, "updated", payload_hash=f"h-{key}", crm_id=f"{100 + n}/Pre")
            for n, key in enumerate(keys)
        ),
    )
    _run(
        path,
        NEXUS_SYNC,
        *(_write(key, "updated", payload_hash=f"h2-{key}") for key in keys[:5]),
        _rejected(keys[5], "503", "Service unavailable after every retry", outcome="failed"),
        _rejected(keys[6], "503", "Service unavailable after every retry", outcome="failed"),
        retries=6,
    )
    _run(
        path,
        API_SYNC,
        *(_created(f"a-{number}", 4000 + number) for number in range(3)),
        _rejected("a-3", "24221", "Invalid stage"),
        _rejected("a-4", "24221", "Invalid stage"),
        _write(
            "a-5",
            "unknown",
            payload_hash="h-a-5",
            error_code="timeout",
            error_message="read timeout",
            reject=True,
        ),
    )
    return {
        NEXUS_SYNC: Expected(20, 0, 2, {"updated": 5, "failed": 2}, runs=2),
        API_SYNC: Expected(6, 1, 2, {"created": 3, "rejected": 2, "unknown": 1}, runs=1),
    }
