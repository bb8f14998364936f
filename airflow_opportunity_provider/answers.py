"""What an error answer from either platform stands for: its exception, its ``Retry-After``, its text.

It works on plain values (status, headers, decoded body), so the ``requests`` hook and the asyncio
client of the bulk load turn the same answer into the same error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from airflow_opportunity_provider.errors import (
    V1,
    V2,
    OpportunityApiError,
    OpportunityAuthenticationError,
    OpportunityInvalidError,
    OpportunityNotFoundError,
    OpportunityRateLimitedError,
    OpportunityRequestFailedError,
    OpportunityServerError,
    OpportunityV2ValidationError,
)

# The v1 platform's own ("specific") codes, from the seeds and the vendor's Exceptions page.
V1_REQUEST_EMPTY = 24221
V1_NOT_FOUND = 24222
V1_INVALID_DETAILS = 24224
V1_STALE_DATE = 23005
V1_PARAMETER_INVALID = 23016
V1_PARAMETER_MISSING = 23017

_V1_INVALID_CODES = {V1_REQUEST_EMPTY, V1_INVALID_DETAILS, V1_PARAMETER_INVALID, V1_PARAMETER_MISSING}
AUTH_STATUSES = frozenset({401, 403, 462, 463})
# A brief of an answer body in a message is cut to this many characters.
_BRIEF = 300
REDACTED = "***"


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Read ``Retry-After`` as seconds, from either of its two forms (delta-seconds or HTTP date).

    :param headers: the answer's headers (any case of names).
    """
    value = None
    for name, header_value in headers.items():
        if name.lower() == "retry-after":
            value = header_value.strip()
            break
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError, IndexError):
        return None


def decode_body(raw: bytes) -> Any:
    """Decode an answer body: JSON when it parses, else the text, else ``None`` when empty."""
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def scrub(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` with every secret replaced by ``***``, in every string it holds.

    A server that echoes a request (a debugging proxy, an error page) must not carry its
    signature or token into an exception message.

    :param value: a decoded body: a dict, a list, a string or anything else.
    :param secrets: the values to hide.
    """
    hidden = [secret for secret in secrets if secret]
    if not hidden:
        return value
    if isinstance(value, str):
        for secret in hidden:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, Mapping):
        return {scrub(key, hidden): scrub(item, hidden) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub(item, hidden) for item in value]
    return value


def brief(body: Any) -> str:
    """A body as at most 300 characters of text, for a message."""
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    text = " ".join(text.split())
    return text if len(text) <= _BRIEF else text[: _BRIEF - 3] + "..."


def status_error(
    platform: str,
    status: int,
    body: Any,
    retry_after: float | None,
    what: str,
    specific_code: int | None = None,
    platform_message: str | None = None,
    additional: Sequence[str] = (),
) -> OpportunityApiError:
    """Choose the error type for an HTTP status (or a v1 ``errorCode``) with no better signal.

    :param platform: ``"v1"`` or ``"v2"``, which also decides the advice on a 401.
    :param status: the HTTP status (or the v1 body's ``errorCode``).
    :param body: the decoded body.
    :param retry_after: what ``Retry-After`` asked for.
    :param what: names the call in the message.
    :param specific_code: the v1 ``specificCode``.
    :param platform_message: the platform's own message.
    :param additional: the v1 ``additionalMessages``.
    """
    common: dict[str, Any] = {
        "status_code": status,
        "specific_code": specific_code,
        "platform_message": platform_message,
        "additional_messages": additional,
        "platform": platform,
        "body": body,
    }
    detail = platform_message or (brief(body) if body else "no message")
    extra = "".join(f"; {m}" for m in additional)
    if status in AUTH_STATUSES:
        advice = {
            401: "check the v1 API key (login) and API secret (password)"
            if platform == V1
            else "check extra.v2_token, or the client credentials extra.v2_client_id and extra.v2_client_secret",
            403: "the credentials lack permission for this call; ask the platform's admin",
            462: "the session expired; send the request again",
            463: "the API key was revoked; issue a new key and update the connection",
        }[status]
        return OpportunityAuthenticationError(
            f"{what} was not authorized (HTTP {status}: {detail}{extra}): {advice}.", **common
        )
    if status == 404:
        return OpportunityNotFoundError(
            f"{what} failed: not found (HTTP 404: {detail}). Check the opportunity id and type.", **common
        )
    if status == 429:
        return OpportunityRateLimitedError(
            f"{what} was rate limited (HTTP 429: {detail}); lower the request rate or concurrency.",
            retry_after=retry_after,
            **common,
        )
    if status >= 500:
        return OpportunityServerError(
            f"{what} failed on the server (HTTP {status}: {detail}{extra}); try again later.",
            retry_after=retry_after,
            **common,
        )
    if status in (408, 499):
        return OpportunityServerError(
            f"{what} timed out on the way (HTTP {status}: {detail}{extra}); try again later.",
            retry_after=retry_after,
            **common,
        )
    if status == 400:
        return OpportunityInvalidError(
            f"{what} was refused as invalid (HTTP 400: {detail}{extra}); correct the payload.", **common
        )
    return OpportunityRequestFailedError(f"{what} failed (HTTP {status}: {detail}{extra}).", **common)


def v1_error(
    status: int, headers: Mapping[str, str], body: Any, what: str = "The v1 request"
) -> OpportunityApiError:
    """Map a v1 error answer (any status, or a 200 with ``success: false``) to its exception.

    :param status: the HTTP status.
    :param headers: the answer's headers, for ``Retry-After``.
    :param body: the decoded body: ``{"errorCode", "message", "specificCode", "additionalMessages"}``.
    :param what: names the call in the message (``"The v1 create of opportunity 'X'"``).
    """
    retry_after = retry_after_seconds(headers)
    specific: int | None = None
    message: str | None = None
    additional: list[str] = []
    error_code = status
    if isinstance(body, dict):
        specific = _as_int(body.get("specificCode"))
        message = body.get("message") if isinstance(body.get("message"), str) else None
        raw_additional = body.get("additionalMessages") or []
        if isinstance(raw_additional, list):
            additional = [str(m) for m in raw_additional]
        # On a 200 with success false, the body's errorCode says more than the status.
        body_code = _as_int(body.get("errorCode"))
        if body_code and 200 <= status < 300:
            error_code = body_code
    common: dict[str, Any] = {
        "status_code": status,
        "specific_code": specific,
        "platform_message": message,
        "additional_messages": additional,
        "platform": V1,
        "body": body,
    }
    detail = message or "no message"
    extra = "".join(f"; {m}" for m in additional)
    if specific == V1_NOT_FOUND:
        return OpportunityNotFoundError(
            f"{what} failed: the opportunity does not exist ({specific}: {detail}). Check its `id`, or "
            "leave `id` out to create a new one.",
            **common,
        )
    if specific == V1_STALE_DATE:
        return OpportunityAuthenticationError(
            f"{what} was refused as stale (23005: {detail}): the request date is more than 5 minutes "
            "from the server's clock; check this machine's clock (NTP).",
            **common,
        )
    if specific in _V1_INVALID_CODES:
        advice = {
            V1_REQUEST_EMPTY: "send at least `venueId` and the fields to set",
            V1_INVALID_DETAILS: "correct the fields named above",
            V1_PARAMETER_INVALID: "correct the parameter named above",
            V1_PARAMETER_MISSING: "add the missing parameter named above",
        }[specific]
        return OpportunityInvalidError(
            f"{what} was refused as invalid ({specific}: {detail}{extra}): {advice}.", **common
        )
    if 200 <= status < 300 and (error_code == status or error_code < 400):
        return OpportunityRequestFailedError(
            f"{what} answered success=false ({detail}{extra}); nothing is known to be stored.", **common
        )
    return status_error(V1, error_code, body, retry_after, what, specific, message, additional)


def v2_error(
    status: int, headers: Mapping[str, str], body: Any, what: str = "The v2 request"
) -> OpportunityApiError:
    """Map a v2 error answer to its exception; a 400 with choices names the valid ones.

    :param status: the HTTP status.
    :param headers: the answer's headers, for ``Retry-After``.
    :param body: the decoded body (``V2OpportunityInvalidResponse`` on a 400, a string on 401).
    :param what: names the call in the message.
    """
    if status == 400 and isinstance(body, dict):
        message = str(body.get("ValidationMessage") or body.get("message") or "validation failed")
        categories = [
            str(c.get("CategoryName")) for c in body.get("AvailableCategories") or [] if isinstance(c, dict)
        ]
        stages = [str(s.get("StageName")) for s in body.get("AvailableStages") or [] if isinstance(s, dict)]
        if categories or stages:
            choices = []
            if categories:
                choices.append("CategoryName must be one of: " + ", ".join(repr(c) for c in categories))
            if stages:
                choices.append("StageName must be one of: " + ", ".join(repr(s) for s in stages))
            return OpportunityV2ValidationError(
                f"{what} was refused: {message} {'; '.join(choices)}.",
                available_categories=categories,
                available_stages=stages,
                status_code=status,
                platform_message=message,
                platform=V2,
                body=body,
            )
        return OpportunityInvalidError(
            f"{what} was refused as invalid (HTTP 400: {message}); correct the payload.",
            status_code=status,
            platform_message=message,
            platform=V2,
            body=body,
        )
    platform_message: str | None = None
    if isinstance(body, dict):
        raw = body.get("message") or body.get("Message") or body.get("ValidationMessage")
        platform_message = str(raw) if raw else None
    elif isinstance(body, str) and body:
        platform_message = brief(body)
    return status_error(
        V2, status, body, retry_after_seconds(headers), what, platform_message=platform_message
    )


def token_error(
    status: int, headers: Mapping[str, str], body: Any, what: str, token_host: str
) -> OpportunityApiError:
    """Map an error answer of the OAuth2 token endpoint: a refusal names the credential fields.

    :param status: the HTTP status.
    :param headers: the answer's headers.
    :param body: the decoded body (``{"error": "invalid_client", ...}`` per RFC 6749).
    :param what: names the call in the message.
    :param token_host: the endpoint's host, named in the message.
    """
    if status in (400, 401, 403):
        reason = ""
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            reason = f" ({body['error']})"
        return OpportunityAuthenticationError(
            f"The v2 token endpoint at {token_host} refused the client credentials (HTTP {status}{reason}): "
            "check extra.v2_client_id, extra.v2_client_secret and extra.v2_scope.",
            status_code=status,
            platform=V2,
            body=body,
        )
    return v2_error(status, headers, body, what)


def _as_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None
