"""Thresholds and the summary text: when a run may be green, and what its failure says."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_opportunity_provider.transfers.progress import format_duration, progress_line
from airflow_opportunity_provider.transfers.summary import RunCounts, exceeds, format_summary, verdict


def _summary(**counts: int) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sync_name": "dag.task",
        "sync_run_id": "abc",
        "target": "v1",
        "dry_run": False,
        "partition_index": 0,
        "partition_count": 1,
        "rows": 100,
        "created": 0,
        "updated": 0,
        "unchanged": 0,
        "rejected": 0,
        "unknown": 0,
        "failed": 0,
        "requests_sent": 0,
        "retries": 0,
        "rate_limited_answers": 0,
        "duration_seconds": 1.0,
        "rows_per_second": 100.0,
        "rejects_table": "opportunity_sync_state_rejects",
        "first_problems": [],
    }
    base.update(counts)
    return base


@pytest.mark.parametrize(
    ("count", "limit", "total", "breaks"),
    [
        (0, 0, 10, False),
        (1, 0, 10, True),
        (3, 3, 100, False),
        (3, 0.02, 100, True),
        (3, 0.05, 100, False),
        (9, None, 9, False),
    ],
)
def test_exceeds_counts_and_shares(count: int, limit: Any, total: int, breaks: bool) -> None:
    assert exceeds(count, limit, total) is breaks


def test_verdict_rules() -> None:
    assert verdict(_summary(created=97, rejected=3), 3, 0) is None
    assert "3 of 100 rows were rejected" in str(verdict(_summary(created=97, rejected=3), 0, 0))
    assert "none of the 100 rows loaded" in str(verdict(_summary(rejected=100), None, None))
    assert "transient" in str(verdict(_summary(created=99, failed=1), None, None))
    assert "unknown outcome" in str(verdict(_summary(created=98, unknown=2), 0, 0))
    assert verdict(_summary(created=98, unknown=2), 0, 2) is None
    assert verdict(_summary(rows=0), 0, 0) is None  # an empty table is not a failure


def test_summary_text_shows_counts_problems_and_where_the_rejects_are() -> None:
    counts = RunCounts()
    counts.add("rejected", "WH-1", "24224", "The opportunity details are invalid")
    text = format_summary(
        _summary(created=99, rejected=1, first_problems=[list(problem) for problem in counts.shown_rejects])
    )
    assert "created 99" in text
    assert "rejected 1" in text
    assert "WH-1: rejected 24224: The opportunity details are invalid" in text
    assert "opportunity_sync_state_rejects" in text
    assert "'abc'" in text
    assert "would be created" in format_summary(_summary(dry_run=True))


def test_progress_line_and_durations() -> None:
    assert format_duration(5) == "5 s"
    assert format_duration(250) == "4 min 10 s"
    assert format_duration(7500) == "2 h 05 min"
    assert (
        progress_line(500, 2000, 10.0)
        == "Progress: 500 of about 2,000 rows (25%), 50 rows/s, about 30 s left"
    )
    assert progress_line(500, None, 10.0) == "Progress: 500 rows, 50 rows/s"
