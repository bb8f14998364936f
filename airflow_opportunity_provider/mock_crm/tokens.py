"""The bearer tokens the mock's OAuth2 endpoint has issued, and when each one expires.

Expiry is checked on the server side, so a client that keeps a token past ``expires_in`` is
answered 401 exactly as the real platform would answer it.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable


class TokenRegistry:
    """Issues random bearer tokens and tells whether one is still valid.

    :param static_token: a pre-issued token that is always valid; ``None`` for none.
    :param clock: a monotonic clock (replaceable in tests).
    """

    def __init__(self, static_token: str | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._static = static_token or None
        self._clock = clock
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}

    def issue(self, ttl: float) -> str:
        """Issue a new token valid for ``ttl`` seconds and return it.

        :param ttl: seconds until it expires.
        """
        token = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            # Drop expired tokens now and then, so a long benchmark does not grow the table forever.
            if len(self._expiry) > 1000:
                self._expiry = {value: until for value, until in self._expiry.items() if until > now}
            self._expiry[token] = now + ttl
        return token

    def is_valid(self, token: str) -> bool:
        """Whether ``token`` is the static token or an issued token that has not expired.

        :param token: the bearer token a request carried.
        """
        if self._static is not None and hmac.compare_digest(token.encode(), self._static.encode()):
            return True
        with self._lock:
            until = self._expiry.get(token)
        return until is not None and self._clock() < until

    def expire_all(self) -> int:
        """Expire every issued token now (the static token stays valid); return how many there were."""
        with self._lock:
            count = len(self._expiry)
            self._expiry.clear()
        return count

    def issued_count(self) -> int:
        """How many issued tokens are remembered (expired ones may be among them)."""
        with self._lock:
            return len(self._expiry)
