"""Credentials for both platforms, free of any HTTP client.

v1 requests are signed with HMAC-SHA1 ("IWS" scheme) at the moment each attempt is sent;
v2 requests carry an OAuth2 bearer token kept in a cache until shortly before it expires.
The ``requests`` hook and the asyncio bulk client both call these functions unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

V1_API_VERSION = "1.0"
JSON_CONTENT_TYPE = "application/json"

# A token is refreshed this long before the platform says it expires, so that a request
# in flight never carries a token that lapses on the way.
TOKEN_EXPIRY_MARGIN_SECONDS = 60.0


def content_md5(body: bytes) -> str:
    """Hex MD5 of the exact request body bytes, as the ``Content-MD5`` header carries it.

    :param body: the body bytes that will be sent.
    """
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


def hmac_sha1_hex(secret: str, message: str) -> str:
    """Lowercase hex HMAC-SHA1 of ``message`` under ``secret``.

    :param secret: the API secret.
    :param message: the string to sign.
    """
    return hmac.new(secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha1).hexdigest()


def _canonical_ivvy_headers(headers: Mapping[str, str]) -> str:
    pairs = []
    for name, value in headers.items():
        if name.lower().startswith("ivvy"):
            pairs.append((name.lower().replace("-", "").replace("_", ""), value))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def v1_string_to_sign(
    method: str,
    body_md5: str,
    content_type: str,
    date: str,
    request_string: str,
    headers: Mapping[str, str],
    api_version: str = V1_API_VERSION,
) -> str:
    """Build the v1 string to sign, exactly as the platform's "Signing the request" page says.

    :param method: the HTTP method (``POST``).
    :param body_md5: hex MD5 of the body.
    :param content_type: the ``Content-Type`` header value.
    :param date: the ``Date`` header value, or ``""`` when ``IVVY-Date`` is sent instead.
    :param request_string: path and query exactly as sent.
    :param headers: every header sent; those named ``IVVY*`` take part.
    :param api_version: the ``X-Api-Version`` value.
    """
    return (
        method
        + body_md5
        + content_type
        + date
        + request_string
        + api_version
        + _canonical_ivvy_headers(headers)
    ).lower()


def ivvy_date(now: datetime | None = None) -> str:
    """The ``IVVY-Date`` header value (UTC, ``YYYY-MM-DD HH:MM:SS``) for ``now``.

    :param now: the moment of sending; the current time when omitted.
    """
    moment = now or datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def sign_v1_request(
    api_key: str,
    api_secret: str,
    request_string: str,
    body: bytes,
    *,
    now: datetime | None = None,
    method: str = "POST",
) -> dict[str, str]:
    """Return the headers that authenticate one v1 attempt; call it again for every retry.

    The platform refuses a request dated more than 5 minutes from its clock, so the date
    (and so the signature) must be taken when the attempt is sent, not when it is built.

    :param api_key: the platform's API key (the connection's login).
    :param api_secret: the API secret (the connection's password).
    :param request_string: path and query exactly as sent, e.g.
        ``/api/1.0/venue?action=addOrUpdateOpportunity``.
    :param body: the exact body bytes.
    :param now: the moment of sending; the current time when omitted.
    :param method: the HTTP method.
    """
    body_md5 = content_md5(body)
    headers = {"IVVY-Date": ivvy_date(now)}
    to_sign = v1_string_to_sign(method, body_md5, JSON_CONTENT_TYPE, "", request_string, headers)
    signature = hmac_sha1_hex(api_secret, to_sign)
    headers.update(
        {
            "Content-Type": JSON_CONTENT_TYPE,
            "Content-MD5": body_md5,
            "X-Api-Version": V1_API_VERSION,
            "X-Api-Authorization": f"IWS {api_key}:{signature}",
        }
    )
    return headers


@dataclass
class BearerToken:
    """An access token and the monotonic time after which it must not be used."""

    value: str = field(repr=False)
    refresh_at: float

    def __repr__(self) -> str:
        return f"BearerToken(value=***, refresh_at={self.refresh_at:.0f})"


class TokenCache:
    """Holds the current v2 bearer token; the caller supplies how to fetch a new one.

    It knows nothing of HTTP: the sync hook and the asyncio client each fetch with their own
    client and hand the decoded token answer to :meth:`store`. A static, pre-issued token
    never expires and is never refreshed.

    :param static_token: a pre-issued token, used as it is.
    :param margin: seconds before ``expires_in`` at which a token counts as expired.
    :param clock: a monotonic clock (replaceable in tests).
    """

    def __init__(
        self,
        static_token: str | None = None,
        *,
        margin: float = TOKEN_EXPIRY_MARGIN_SECONDS,
        clock: Any = time.monotonic,
    ) -> None:
        self._clock = clock
        self._margin = margin
        self._token: BearerToken | None = BearerToken(static_token, float("inf")) if static_token else None
        self.is_static = bool(static_token)
        self.fetch_count = 0
        # A plain lock for threads; the asyncio client serialises its own fetches.
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenCache(static={self.is_static}, has_token={self._token is not None})"

    def current(self) -> str | None:
        """The token to send now, or ``None`` when a fresh one must be fetched first."""
        token = self._token
        if token is None or self._clock() >= token.refresh_at:
            return None
        return token.value

    def store(self, answer: Mapping[str, Any]) -> str:
        """Keep the token from a client-credentials answer and return it.

        :param answer: the decoded token endpoint answer
            (``{"access_token", "token_type", "expires_in"}``).
        """
        value = answer.get("access_token")
        if not isinstance(value, str) or not value:
            raise ValueError("the token endpoint answered without an access_token")
        try:
            expires_in = float(answer.get("expires_in", 3600))
        except (TypeError, ValueError):
            expires_in = 3600.0
        # Short-lived tokens keep at least half their life, so a margin never makes them useless.
        margin = min(self._margin, expires_in / 2)
        self._token = BearerToken(value, self._clock() + expires_in - margin)
        self.fetch_count += 1
        return value

    def invalidate(self, rejected: str | None = None) -> None:
        """Forget the token after a 401, unless another caller already replaced it.

        :param rejected: the token the 401 answered; a newer token is kept.
        """
        if self.is_static:
            return
        if rejected is None or (self._token is not None and self._token.value == rejected):
            self._token = None


def client_credentials_form(client_id: str, client_secret: str, scope: str | None) -> dict[str, str]:
    """The form fields of an OAuth2 client-credentials token request.

    :param client_id: the v2 client id.
    :param client_secret: the v2 client secret.
    :param scope: the scope to ask for, if any.
    """
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret}
    if scope:
        form["scope"] = scope
    return form
