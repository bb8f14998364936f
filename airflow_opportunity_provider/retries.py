"""The one retry policy of both HTTP clients: how many attempts, how long to wait between them.

Whether an attempt may be repeated at all is decided by ``flow`` (a request refused unprocessed
always may; one whose outcome is unknown only when repeating it cannot change the result twice).
This module turns that decision into tenacity's ``Retrying`` for the ``requests`` hook and
``AsyncRetrying`` for the asyncio client, built from the same arguments.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, stop_after_attempt

if TYPE_CHECKING:
    from airflow_opportunity_provider.errors import OpportunityError
    from airflow_opportunity_provider.flow import Decision


class FailedAttempt(Exception):
    """One attempt that did not succeed, carrying what ``flow`` decided about it.

    It never leaves a client: after the last attempt the client raises :attr:`error`.

    :param decision: the attempt's decision (its error, whether a retry is allowed, ``Retry-After``).
    """

    def __init__(self, decision: Decision[Any]) -> None:
        super().__init__(str(decision.error))
        self.decision = decision

    @property
    def error(self) -> OpportunityError:
        """The error the caller gets when no attempt is left."""
        assert self.decision.error is not None
        return self.decision.error

    @property
    def retry_after(self) -> float | None:
        """What the server asked to wait, when it said."""
        return self.decision.retry_after


def _may_retry(error: BaseException) -> bool:
    return isinstance(error, FailedAttempt) and error.decision.retry


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter and a cap, that never waits less than ``Retry-After``.

    The n-th wait is drawn uniformly from ``[0, min(maximum, initial * 2 ** (n - 1))]`` ("full
    jitter"), which spreads the retries of many concurrent workers apart. When the server sent
    ``Retry-After``, the wait is that long (capped at ``max_retry_after``) plus up to 10 % more.

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
        if retry_after:
            # Never earlier than asked; a little later, so that workers told the same
            # Retry-After do not all come back in the same instant.
            honoured = min(retry_after, self.max_retry_after)
            return honoured + random.uniform(0, 0.1 * honoured)
        ceiling = min(self.maximum, self.initial * 2 ** (attempt_number - 1))
        return random.uniform(0, ceiling)

    def __call__(self, retry_state: RetryCallState) -> float:
        """Tenacity ``wait`` callback."""
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        return self.seconds(retry_state.attempt_number, getattr(error, "retry_after", None))


BeforeSleep = Callable[[RetryCallState], Any]


@dataclass(frozen=True)
class RetryPolicy:
    """How one logical call is attempted: at most ``max_retries + 1`` times, waiting by ``backoff``.

    :param max_retries: retries after the first attempt.
    :param backoff: the waits between attempts.
    """

    max_retries: int
    backoff: Backoff = field(default_factory=Backoff)

    @property
    def attempts(self) -> int:
        """The most attempts one call makes."""
        return self.max_retries + 1

    def _arguments(self, before_sleep: BeforeSleep | None) -> dict[str, Any]:
        return {
            "stop": stop_after_attempt(self.attempts),
            "wait": self.backoff,
            "retry": retry_if_exception(_may_retry),
            "before_sleep": before_sleep,
            "reraise": True,
        }

    def retrying(self, before_sleep: BeforeSleep | None = None) -> Retrying:
        """A tenacity ``Retrying`` for the synchronous client.

        :param before_sleep: called before each wait (to log or count the retry).
        """
        return Retrying(**self._arguments(before_sleep))

    def async_retrying(self, before_sleep: BeforeSleep | None = None) -> AsyncRetrying:
        """A tenacity ``AsyncRetrying`` for the asyncio client, with the same arguments.

        :param before_sleep: called before each wait (to log or count the retry).
        """
        return AsyncRetrying(**self._arguments(before_sleep))


def failed_attempt(retry_state: RetryCallState) -> FailedAttempt | None:
    """The failed attempt a tenacity callback is called for, if it was one.

    :param retry_state: tenacity's state of the call.
    """
    outcome = retry_state.outcome
    error = outcome.exception() if outcome is not None else None
    return error if isinstance(error, FailedAttempt) else None
