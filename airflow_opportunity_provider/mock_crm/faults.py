"""Fault injection for the mock CRM: latency, injected error answers, dropped connections, a rate limit.

A :class:`FaultConfig` says what to inject; a :class:`FaultInjector` draws the decisions from a
seeded ``random.Random`` so that a test sending requests one after another sees the same faults
on every run.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Statuses a fault may inject. 401 is there so a test can simulate a revoked credential.
INJECTABLE_STATUSES = frozenset({401, 403, 408, 429, 500, 502, 503, 504})
# Statuses that carry a ``Retry-After`` header when ``retry_after`` is set.
RETRY_AFTER_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class FaultConfig:
    """What the mock server injects into its answers; every fault is off by default.

    Faults apply to the API endpoints (v1 opportunity, opportunity list and ping, v2 opportunity
    ``PUT``/``GET``); the OAuth2 token endpoint only when ``faults_on_token_endpoint`` is set;
    ``/_mock/*`` never. Injected errors and the rate limit are decided before a request is
    processed, so a refused request is never stored. ``drop_after_commit_rate`` is the one
    exception: it stores first, and so applies to writes only.

    Two ways to ask for injected errors, which add up: ``error_rate`` with ``error_status`` for a
    single status, and ``errors`` mapping several statuses to their shares
    (``{503: 0.10, 429: 0.05}``). The shares together must not exceed 1.

    :param latency: seconds added before answering every API request (``asyncio.sleep``, so
        concurrent requests are not serialized).
    :param error_rate: share (0..1) of API requests answered with ``error_status`` instead.
    :param error_status: the status ``error_rate`` injects (429, 500, 502, 503, 504, ...).
    :param errors: status -> share of API requests answered with that status.
    :param retry_after: seconds sent as ``Retry-After`` on an injected 429 or 503; ``None`` sends
        no header. A whole number is sent as an integer, a fraction as a decimal (non-standard,
        useful to keep tests fast).
    :param drop_after_commit_rate: share of successful v1/v2 writes that are stored, then have
        their connection closed without any answer: the client cannot know the outcome.
    :param rate_limit: requests per second the API accepts (token bucket); ``None`` is unlimited.
        Requests over it are answered 429 with ``Retry-After`` (whole seconds, at least 1).
    :param burst: the bucket size; defaults to ``max(1, rate_limit)``.
    :param token_ttl: overrides ``MockCrmConfig.token_ttl`` for tokens issued while it is set.
    :param reject_names: opportunity names (v1 ``name``, v2 ``OpportunityName``) the server refuses
        as invalid: v1 answers 400 with specificCode 24224, v2 answers 400 with a
        ``ValidationMessage``.
    :param unavailable_names: v1 opportunity name -> how many of its writes are answered 503 (with
        ``retry_after``) before one is processed: a row refused on every attempt of one pass.
    :param faults_on_token_endpoint: apply latency, injected errors and the rate limit to the
        OAuth2 token endpoint too.
    :param list_ignores_filters: the v1 opportunity list neither reads nor applies ``filter``
        (``venueIds`` and paging still apply), as a server ignores a parameter it does not support.
    :param list_ignores_venue_ids: the v1 opportunity list neither reads nor applies ``venueIds``.
    :param seed: seed of the random draws, for reproducible runs.
    """

    latency: float = 0.0
    error_rate: float = 0.0
    error_status: int = 503
    errors: Mapping[int, float] = field(default_factory=dict)
    retry_after: float | None = 1.0
    drop_after_commit_rate: float = 0.0
    rate_limit: float | None = None
    burst: int | None = None
    token_ttl: float | None = None
    reject_names: frozenset[str] = frozenset()
    unavailable_names: Mapping[str, int] = field(default_factory=dict)
    faults_on_token_endpoint: bool = False
    list_ignores_filters: bool = False
    list_ignores_venue_ids: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        errors = {int(status): float(share) for status, share in dict(self.errors).items()}
        object.__setattr__(self, "errors", errors)
        object.__setattr__(self, "reject_names", frozenset(self.reject_names))
        problems = []
        if self.latency < 0:
            problems.append("latency must be >= 0 seconds")
        for name in ("error_rate", "drop_after_commit_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be between 0 and 1")
        for status, share in {**errors, self.error_status: self.error_rate}.items():
            if status not in INJECTABLE_STATUSES:
                problems.append(
                    f"status {status} cannot be injected; choose from {sorted(INJECTABLE_STATUSES)}"
                )
            if not 0.0 <= share <= 1.0:
                problems.append(f"the share of status {status} must be between 0 and 1")
        if sum(self.error_shares().values()) > 1.0 + 1e-9:
            problems.append("the error shares add up to more than 1")
        if self.retry_after is not None and self.retry_after < 0:
            problems.append("retry_after must be >= 0 seconds")
        if self.rate_limit is not None and self.rate_limit <= 0:
            problems.append("rate_limit must be > 0 requests/s (or None for no limit)")
        if self.burst is not None and self.burst < 1:
            problems.append("burst must be >= 1")
        if self.token_ttl is not None and self.token_ttl <= 0:
            problems.append("token_ttl must be > 0 seconds")
        for name, times in dict(self.unavailable_names).items():
            if (
                not isinstance(name, str)
                or isinstance(times, bool)
                or not isinstance(times, int)
                or times < 0
            ):
                problems.append("unavailable_names must map names to whole numbers >= 0")
                break
        for name in ("faults_on_token_endpoint", "list_ignores_filters", "list_ignores_venue_ids"):
            # "false" from a JSON client would otherwise switch the fault on.
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false")
        if problems:
            raise ValueError("Invalid FaultConfig: " + "; ".join(problems))

    def error_shares(self) -> dict[int, float]:
        """Every injected status with its share, ``error_rate`` and ``errors`` combined."""
        shares = dict(self.errors)
        if self.error_rate > 0:
            shares[self.error_status] = shares.get(self.error_status, 0.0) + self.error_rate
        return {status: share for status, share in shares.items() if share > 0}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field, the form ``POST /_mock/faults`` takes."""
        data = asdict(self)
        data["errors"] = {str(status): share for status, share in self.errors.items()}
        data["reject_names"] = sorted(self.reject_names)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultConfig:
        """Build a FaultConfig from a JSON object; fields left out keep their defaults.

        :param data: field name -> value; ``errors`` keys may be strings (``{"503": 0.1}``).
        :raises ValueError: on an unknown field or a value out of range.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown FaultConfig field(s): {', '.join(unknown)}; known: {sorted(known)}")
        values = dict(data)
        if "reject_names" in values:
            values["reject_names"] = frozenset(_names(values["reject_names"]))
        try:
            return cls(**values)
        except TypeError as error:
            raise ValueError(f"Invalid FaultConfig: {error}") from None


def _names(value: Any) -> Iterable[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError("reject_names must be a list of names")
    return [str(name) for name in value]


def format_retry_after(seconds: float) -> str:
    """The ``Retry-After`` header value for ``seconds``: an integer when whole, else a decimal.

    :param seconds: how long the client should wait.
    """
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


class FaultInjector:
    """Draws the fault decisions for one :class:`FaultConfig`; used by the server's event loop only.

    :param faults: what to inject.
    :param clock: a monotonic clock (replaceable in tests).
    """

    def __init__(self, faults: FaultConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.faults = faults
        self._clock = clock
        self._random = random.Random(faults.seed)
        cumulative = 0.0
        self._error_table: list[tuple[float, int]] = []
        for status, share in sorted(faults.error_shares().items()):
            cumulative += share
            self._error_table.append((cumulative, status))
        self._rate = faults.rate_limit
        self._capacity = float(faults.burst or max(1, math.floor(faults.rate_limit or 1)))
        self._bucket = self._capacity
        self._bucket_at = clock()
        self._refused: dict[str, int] = {}

    @property
    def latency(self) -> float:
        """Seconds to wait before answering."""
        return self.faults.latency

    def over_rate_limit(self) -> int | None:
        """Take one token from the bucket; return the ``Retry-After`` seconds when there is none."""
        if self._rate is None:
            return None
        now = self._clock()
        self._bucket = min(self._capacity, self._bucket + (now - self._bucket_at) * self._rate)
        self._bucket_at = now
        if self._bucket >= 1.0:
            self._bucket -= 1.0
            return None
        return max(1, math.ceil((1.0 - self._bucket) / self._rate))

    def injected_status(self) -> int | None:
        """The status to answer instead of processing the request, or ``None`` to process it."""
        if not self._error_table:
            return None
        draw = self._random.random()
        for cumulative, status in self._error_table:
            if draw < cumulative:
                return status
        return None

    def unavailable(self, name: Any) -> bool:
        """Whether this write of ``name`` is answered 503 (``unavailable_names``); counts it.

        :param name: the opportunity name the write carries.
        """
        if not isinstance(name, str) or name not in self.faults.unavailable_names:
            return False
        refused = self._refused.get(name, 0)
        if refused >= self.faults.unavailable_names[name]:
            return False
        self._refused[name] = refused + 1
        return True

    def drop_after_commit(self) -> bool:
        """Whether to close the connection without an answer after storing a write."""
        rate = self.faults.drop_after_commit_rate
        return rate > 0 and self._random.random() < rate

    def retry_after_header(self, status: int) -> dict[str, str]:
        """The ``Retry-After`` header for an injected ``status``, when one is due.

        :param status: the injected status.
        """
        if status in RETRY_AFTER_STATUSES and self.faults.retry_after is not None:
            return {"Retry-After": format_retry_after(self.faults.retry_after)}
        return {}
