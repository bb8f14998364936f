"""The one retry policy: how long to wait between attempts (whether to retry is the flow's decision)."""

from __future__ import annotations

import asyncio

import pytest
from tenacity import AsyncRetrying, Retrying

from airflow_opportunity_provider.flow import Decision, Verdict
from airflow_opportunity_provider.retries import Backoff, FailedAttempt, RetryPolicy


def test_backoff_is_full_jitter_grows_and_is_capped() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0)
    first = [backoff.seconds(1, None) for _ in range(400)]
    assert all(0.0 <= wait <= 0.5 for wait in first)
    # Full jitter: waits spread over the whole range, the lower half included.
    assert min(first) < 0.1
    assert max(first) > 0.4
    assert len(set(first)) > 300
    late = [backoff.seconds(10, None) for _ in range(400)]
    assert all(0.0 <= wait <= 4.0 for wait in late)
    assert max(late) > 3.5


def test_backoff_never_waits_less_than_retry_after() -> None:
    backoff = Backoff(initial=0.1, maximum=0.2, max_retry_after=30)
    waits = [backoff.seconds(1, 3.0) for _ in range(100)]
    assert min(waits) >= 3.0
    assert max(waits) <= 3.3
    assert backoff.seconds(1, 3600.0) <= 33.0


def _failing(retry: bool, calls: list[int]) -> object:
    def attempt() -> None:
        calls.append(1)
        raise FailedAttempt(Decision(Verdict.REFUSED, retry=retry, retry_after=None))

    return attempt


@pytest.mark.parametrize(("retry", "attempts"), [(True, 4), (False, 1)])
def test_the_policy_retries_what_the_flow_allows_the_same_way_sync_and_async(
    retry: bool, attempts: int
) -> None:
    policy = RetryPolicy(3, Backoff(initial=0.0, maximum=0.0))
    assert isinstance(policy.retrying(), Retrying)
    assert isinstance(policy.async_retrying(), AsyncRetrying)
    sync_calls: list[int] = []
    with pytest.raises(FailedAttempt):
        policy.retrying()(_failing(retry, sync_calls))
    async_calls: list[int] = []

    async def attempt() -> None:
        async_calls.append(1)
        raise FailedAttempt(Decision(Verdict.REFUSED, retry=retry))

    with pytest.raises(FailedAttempt):
        asyncio.run(policy.async_retrying()(attempt))
    assert len(sync_calls) == len(async_calls) == attempts


def test_the_wait_honours_the_retry_after_of_the_failed_attempt() -> None:
    policy = RetryPolicy(1, Backoff(initial=0.0, maximum=0.0))
    waits: list[float] = []

    def before_sleep(state: object) -> None:
        waits.append(state.next_action.sleep)  # type: ignore[attr-defined]

    def attempt() -> None:
        raise FailedAttempt(Decision(Verdict.REFUSED, retry=True, retry_after=0.05))

    with pytest.raises(FailedAttempt):
        policy.retrying(before_sleep)(attempt)
    assert len(waits) == 1
    assert 0.05 <= waits[0] <= 0.055
