"""The retry rule: what may be repeated, and how long to wait."""

from __future__ import annotations

import pytest

from airflow_opportunity_provider.errors import (
    OpportunityConnectionError,
    OpportunityInvalidError,
    OpportunityRateLimitedError,
    OpportunityServerError,
)
from airflow_opportunity_provider.retries import Backoff, should_retry


@pytest.mark.parametrize(
    ("error", "idempotent", "expected"),
    [
        (OpportunityRateLimitedError("x", status_code=429), False, True),
        (OpportunityServerError("x", status_code=503), False, True),
        (OpportunityConnectionError("x", sent=False), False, True),
        (OpportunityServerError("x", status_code=500), False, False),
        (OpportunityServerError("x", status_code=502), False, False),
        (OpportunityServerError("x", status_code=504), False, False),
        (OpportunityConnectionError("x", sent=True), False, False),
        (OpportunityServerError("x", status_code=500), True, True),
        (OpportunityServerError("x", status_code=504), True, True),
        (OpportunityConnectionError("x", sent=True), True, True),
        (OpportunityInvalidError("x", status_code=400), True, False),
    ],
)
def test_should_retry(error: Exception, idempotent: bool, expected: bool) -> None:
    assert should_retry(error, idempotent) is expected


def test_backoff_grows_is_capped_and_jittered() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0)
    first = [backoff.seconds(1, None) for _ in range(200)]
    assert all(0.25 <= wait <= 0.5 for wait in first)
    assert len(set(first)) > 100
    assert all(2.0 <= backoff.seconds(10, None) <= 4.0 for _ in range(50))


def test_backoff_never_waits_less_than_retry_after() -> None:
    backoff = Backoff(initial=0.1, maximum=0.2, max_retry_after=30)
    waits = [backoff.seconds(1, 3.0) for _ in range(100)]
    assert min(waits) >= 3.0
    assert max(waits) <= 3.3
    assert backoff.seconds(1, 3600.0) <= 33.0
