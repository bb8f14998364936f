"""When a failed attempt may be sent again, and how long to wait first.

A request the server refused without processing it (429, 503) or that never left this
machine is always safe to repeat. One whose outcome is unknown (read timeout, connection
dropped after sending, 500, 502, 504) is repeated only when repeating cannot change the
result twice: never for a v1 create, which the caller learns of as an outcome-unknown error.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tenacity import RetryCallState

from airflow_opportunity_provider.errors import (
    OpportunityConnectionError,
    OpportunityRateLimitedError,
    OpportunityServerError,
)

# Statuses the platforms use for "refused before doing anything": always safe to retry.
REFUSED_STATUSES = frozenset({429, 503})
# Statuses that leave the outcome unknown: the server may have stored the change.
AMBIGUOUS_STATUSES = frozenset({500, 502, 504})


def is_refused_unprocessed(error: BaseException) -> bool:
    """Whether the server certainly did nothing with the request (it may be sent again)."""
    if isinstance(error, OpportunityRateLimitedError):
        return True
    if isinstance(error, OpportunityServerError) and error.status_code in REFUSED_STATUSES:
        return True
    return isinstance(error, OpportunityConnectionError) and not error.sent


def is_outcome_unknown(error: BaseException) -> bool:
    """Whether the request may have been applied although no success came back."""
    if isinstance(error, OpportunityServerError) and error.status_code in AMBIGUOUS_STATUSES:
        return True
    return isinstance(error, OpportunityConnectionError) and error.sent


def should_retry(error: BaseException, idempotent: bool) -> bool:
    """The retry rule: refused requests always, unknown outcomes only for idempotent calls.

    :param error: what the attempt raised.
    :param idempotent: whether sending the request twice has the effect of sending it once.
    """
    return is_refused_unprocessed(error) or (idempotent and is_outcome_unknown(error))


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter and a cap, that never waits less than ``Retry-After``.

    :param initial: the first backoff ceiling, in seconds.
    :param maximum: the cap on a computed wait.
    :param max_retry_after: the longest ``Retry-After`` honoured; a longer one is cut to this.
    """

    initial: float = 0.5
    maximum: float = 30.0
    max_retry_after: float = 300.0

    def seconds(self, attempt_number: int, retry_after: float | None) -> float:
        """The wait before the attempt after ``attempt_number`` (1 for the first failure).

        :param attempt_number: how many attempts have failed so far.
        :param retry_after: what the server asked for, if anything.
        """
        ceiling = min(self.maximum, self.initial * 2 ** (attempt_number - 1))
        # Full jitter spreads the retries of many concurrent workers apart.
        computed = random.uniform(ceiling / 2, ceiling)
        if retry_after:
            # Never earlier than asked; a little later, so that workers told the same
            # Retry-After do not all come back in the same instant.
            honoured = min(retry_after, self.max_retry_after)
            return honoured + random.uniform(0, 0.1 * honoured)
        return computed

    def __call__(self, retry_state: RetryCallState) -> float:
        """Tenacity ``wait`` callback."""
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        return self.seconds(retry_state.attempt_number, getattr(error, "retry_after", None))
