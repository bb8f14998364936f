"""Exception types a caller can catch, and the mapping from each platform's answers to them.

The mapping works on plain values (status, headers, decoded body) so that the
``requests`` hook and the asyncio client of the bulk load raise exactly the same errors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

V1 = "v1"
V2 = "v2"

# The v1 platform's own ("specific") codes, from the seeds and the vendor's Exceptions page.
V1_REQUEST_EMPTY = 24221
V1_NOT_FOUND = 24222
V1_INVALID_DETAILS = 24224
V1_STALE_DATE = 23005
V1_PARAMETER_INVALID = 23016
V1_PARAMETER_MISSING = 23017

_V1_NOT_FOUND_CODES = {V1_NOT_FOUND}
_V1_INVALID_CODES = {V1_REQUEST_EMPTY, V1_INVALID_DETAILS, V1_PARAMETER_INVALID, V1_PARAMETER_MISSING}
_AUTH_STATUSES = {401, 403, 462, 463}


class OpportunityError(AirflowException):
    """Base class of every error this provider raises.

    ``status_code`` holds the platform's HTTP status (``None`` when no answer came), not the
    status Airflow's own API server would use for the exception.
    """

    status_code: int | None = None  # type: ignore[assignment]


class OpportunityConfigurationError(OpportunityError):
    """The Airflow connection lacks what a call needs; the message names the fields to fill in."""


class PayloadValidationError(OpportunityError, AirflowFailException, ValueError):
    """A payload broke the JSON Schema; nothing was sent.

    A retry cannot mend a payload, so a task that raises it fails without its retries.

    :param problems: one ``(json_path, reason)`` pair per problem, all of them at once.
    :param schema_name: the schema the payload was checked against.
    """

    def __init__(self, problems: Sequence[tuple[str, str]], schema_name: str = "payload") -> None:
        self.problems = list(problems)
        self.schema_name = schema_name
        lines = "\n".join(f"  - {path}: {reason}" for path, reason in self.problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"{schema_name} has {count} {noun}; nothing was sent:\n{lines}")


class OpportunityApiError(OpportunityError):
    """The platform answered with an error.

    :param message: what went wrong and what to change.
    :param status_code: the HTTP status of the answer.
    :param specific_code: the v1 platform's ``specificCode``, when it sent one.
    :param platform_message: the platform's own message, verbatim.
    :param additional_messages: the v1 platform's ``additionalMessages``.
    :param platform: ``"v1"`` or ``"v2"``.
    :param body: the decoded answer body (a dict, a string or ``None``).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        specific_code: int | None = None,
        platform_message: str | None = None,
        additional_messages: Sequence[str] | None = None,
        platform: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.specific_code = specific_code
        self.platform_message = platform_message
        self.additional_messages = list(additional_messages or [])
        self.platform = platform
        self.body = body

    @property
    def code(self) -> int | None:
        """The most specific code known: the platform's ``specificCode``, else the HTTP status."""
        return self.specific_code if self.specific_code is not None else self.status_code


class OpportunityNotFoundError(OpportunityApiError):
    """The opportunity does not exist (v1 24222, v2 404)."""


class OpportunityInvalidError(OpportunityApiError):
    """The platform refused the payload (v1 24221, 24224, 23016, 23017; any 400)."""


class OpportunityV2ValidationError(OpportunityInvalidError):
    """A v2 400 naming a category or stage that does not exist; lists the valid choices.

    :param available_categories: the category names the platform offered.
    :param available_stages: the stage names the platform offered.
    """

    def __init__(
        self,
        message: str,
        *,
        available_categories: Sequence[str] = (),
        available_stages: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.available_categories = list(available_categories)
        self.available_stages = list(available_stages)


class OpportunityAuthenticationError(OpportunityApiError):
    """Credentials were refused, revoked or the request was stale (401, 403, 23005, 462, 463)."""


class OpportunityRateLimitedError(OpportunityApiError):
    """The platform answered 429 and kept answering it through every retry.

    :param retry_after: seconds the platform asked to wait, when it said.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class OpportunityServerError(OpportunityApiError):
    """The platform failed (5xx).

    :param retry_after: seconds the platform asked to wait (503 may say), when it said.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class OpportunityRequestFailedError(OpportunityApiError):
    """Any other refusal: ``success: false`` on a 200, 405, 406, 460, 461 and the like."""


class OpportunityConnectionError(OpportunityError):
    """The request could not be delivered, or its answer was lost, for an idempotent call.

    :param sent: ``False`` when the request surely never reached the server.
    """

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class OpportunityOutcomeUnknownError(OpportunityError, AirflowFailException):
    """A v1 create was sent but its outcome cannot be known; it was deliberately not resent.

    It is an ``AirflowFailException``: a task that raises it fails without its remaining
    retries, because a task retry would send the create again.

    Resending could create the opportunity twice. Look the record up in the CRM (by its
    name, contact and venue) before sending it again.

    :param payload: the payload that was sent, to reconcile by hand or resend on purpose.
    :param reason: what was observed (a read timeout, a dropped connection, a 5xx).
    :param status_code: the HTTP status when the server answered 500, 502 or 504.
    """

    def __init__(self, payload: Mapping[str, Any], reason: str, *, status_code: int | None = None) -> None:
        self.payload = dict(payload)
        self.reason = reason
        self.status_code = status_code
        super().__init__(
            f"The v1 create of opportunity {self.payload.get('name')!r} (venueId "
            f"{self.payload.get('venueId')}) may or may not have been stored: {reason}. It was not "
            "resent, because a blind retry can create it twice. Check the CRM for it before sending "
            "it again."
        )


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
        from datetime import datetime

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


def _brief(body: Any) -> str:
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    return text if len(text) <= 300 else text[:297] + "..."


def _status_error(
    platform: str,
    status: int,
    body: Any,
    retry_after: float | None,
    what: str,
    specific_code: int | None = None,
    platform_message: str | None = None,
    additional: Sequence[str] = (),
) -> OpportunityApiError:
    """Choose the error type for an HTTP status (or a v1 ``errorCode``) with no better signal."""
    common: dict[str, Any] = {
        "status_code": status,
        "specific_code": specific_code,
        "platform_message": platform_message,
        "additional_messages": additional,
        "platform": platform,
        "body": body,
    }
    detail = platform_message or (_brief(body) if body else "no message")
    extra = "".join(f"; {m}" for m in additional)
    if status in _AUTH_STATUSES:
        advice = {
            401: "check the API key and secret (v1) or the token / client credentials (v2)",
            403: "the credentials lack permission for this call; ask the platform's admin",
            462: "the session expired; the next attempt signs a new request",
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
    if status >= 500 and status != 501:
        return OpportunityServerError(
            f"{what} failed on the server (HTTP {status}: {detail}{extra}); try again later.",
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
        if body_code and status == 200:
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
    if specific in _V1_NOT_FOUND_CODES:
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
    if status == 200:
        return OpportunityRequestFailedError(
            f"{what} answered success=false ({detail}{extra}); nothing is known to be stored.", **common
        )
    return _status_error(V1, error_code, body, retry_after, what, specific, message, additional)


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
        platform_message = body
    return _status_error(
        V2, status, body, retry_after_seconds(headers), what, platform_message=platform_message
    )


def _as_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None
