"""The exceptions this provider raises, and what each one means for a row of a bulk load.

Only the hierarchy lives here; which answer or transport failure becomes which error is decided
once, in ``answers`` and ``flow``, for both HTTP clients::

    AirflowException
    └── OpportunityError                         every error of this provider
        ├── OpportunityConfigurationError        the connection or a parameter lacks or holds a bad setting
        ├── PayloadValidationError               a payload broke its JSON Schema; nothing was sent
        ├── OpportunityApiError                  the platform answered, and not with success
        │   ├── OpportunityNotFoundError         v1 24222, v2 404
        │   ├── OpportunityInvalidError          v1 24221, 24224, 23016, 23017; any other 400
        │   │   └── OpportunityV2ValidationError a v2 400 naming the valid categories and stages
        │   ├── OpportunityAuthenticationError   401, 403, 462, 463, v1 23005, a token answer without a token
        │   ├── OpportunityRateLimitedError      429, still answered after every retry
        │   ├── OpportunityServerError           5xx, 408, 499
        │   ├── OpportunityRedirectError         3xx: redirects are never followed
        │   ├── OpportunityUnexpectedAnswerError a 2xx that is not the platform's answer (not JSON, no id)
        │   └── OpportunityRequestFailedError    success: false; 405, 406, 460, 461 and other refusals
        ├── OpportunityConnectionError           no answer: could not connect, or the answer was lost
        ├── OpportunityOutcomeUnknownError       a v1 create that may or may not be stored; never resent
        └── OpportunityAmbiguousMatchError       several CRM records match where one was looked for

Each class says what it means for a row of a bulk load (``row_outcome``: the row is
``rejected`` until its data or the CRM changes, ``failed`` and sent again by the next run, or
``unknown``) and whether every other row would fail the same way (``stops_load``), so the load
decides from the type alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

V1 = "v1"
V2 = "v2"

# What an error means for a row of a bulk load (the values of transfers.outcomes.Outcome).
ROW_REJECTED = "rejected"
ROW_FAILED = "failed"
ROW_UNKNOWN = "unknown"


class OpportunityError(AirflowException):
    """Base class of every error this provider raises.

    ``status_code`` holds the platform's HTTP status (``None`` when no answer came), not the
    status Airflow's own API server would use for the exception.
    """

    status_code: int | None = None  # type: ignore[assignment]
    #: What the error means for the row that raised it in a bulk load.
    row_outcome: ClassVar[str] = ROW_FAILED
    #: Whether every other row would fail the same way, so that the load stops.
    stops_load: ClassVar[bool] = False


class OpportunityConfigurationError(OpportunityError):
    """The Airflow connection lacks what a call needs, or holds a value that cannot be sent.

    The message names the fields to fill in or correct.
    """

    stops_load = True


class PayloadValidationError(OpportunityError, AirflowFailException, ValueError):
    """A payload broke the JSON Schema; nothing was sent.

    A retry cannot mend a payload, so a task that raises it fails without its retries.

    :param problems: one ``(json_path, reason)`` pair per problem, all of them at once.
    :param schema_name: the schema the payload was checked against.
    """

    row_outcome = ROW_REJECTED

    def __init__(self, problems: Sequence[tuple[str, str]], schema_name: str = "payload") -> None:
        self.problems = list(problems)
        self.schema_name = schema_name
        lines = "\n".join(f"  - {path}: {reason}" for path, reason in self.problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"{schema_name} has {count} {noun}; nothing was sent:\n{lines}")

    @property
    def summary(self) -> str:
        """Every problem on one line, for a rejects table."""
        return "; ".join(f"{path}: {reason}" for path, reason in self.problems)


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

    row_outcome = ROW_REJECTED


class OpportunityInvalidError(OpportunityApiError):
    """The platform refused the payload (v1 24221, 24224, 23016, 23017; any 400)."""

    row_outcome = ROW_REJECTED


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
    """Credentials were refused, revoked or the request was stale (401, 403, 23005, 462, 463),
    or the token endpoint answered without a token."""

    stops_load = True


class OpportunityRateLimitedError(OpportunityApiError):
    """The platform answered 429 and kept answering it through every retry.

    :param retry_after: seconds the platform asked to wait, when it said.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class OpportunityServerError(OpportunityApiError):
    """The platform failed (5xx), or timed out on the request (408, 499).

    :param retry_after: seconds the platform asked to wait (503 may say), when it said.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class OpportunityRedirectError(OpportunityApiError):
    """The platform answered with a redirect (3xx), which is never followed.

    Following it would hand the signed request, the bearer token or the client secret to
    whatever host the ``Location`` names. The connection must point at the final address.

    :param location_host: the host the redirect pointed at (never its path or query).
    """

    stops_load = True

    def __init__(self, message: str, *, location_host: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.location_host = location_host


class OpportunityUnexpectedAnswerError(OpportunityApiError):
    """A 2xx answer that is not the platform's answer: not JSON, cut short, or without a usable id."""


class OpportunityRequestFailedError(OpportunityApiError):
    """Any other refusal: ``success: false`` on a 200, 405, 406, 460, 461 and the like."""

    row_outcome = ROW_REJECTED


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
    name, contact and venue, or by the reference the create carried) before sending it again.

    :param payload: the payload that was sent, to reconcile by hand or resend on purpose.
    :param reason: what was observed (a read timeout, a dropped connection, a 5xx, an answer
        that was not the platform's).
    :param status_code: the HTTP status, when an answer came.
    :param cause: the error the answer or the transport failure stood for.
    """

    row_outcome = ROW_UNKNOWN

    def __init__(
        self,
        payload: Mapping[str, Any],
        reason: str,
        *,
        status_code: int | None = None,
        cause: OpportunityError | None = None,
    ) -> None:
        self.payload = dict(payload)
        self.reason = reason
        self.status_code = status_code
        self.cause = cause
        super().__init__(
            f"The v1 create of opportunity {self.payload.get('name')!r} (venueId "
            f"{self.payload.get('venueId')}) may or may not have been stored: {reason.rstrip('.')}. It was not "
            "resent, because a blind retry can create it twice. Check the CRM for it before sending "
            "it again."
        )

    @property
    def code(self) -> str:
        """The reason code recorded for the row: the HTTP status, or ``outcome_unknown``."""
        return str(self.status_code) if self.status_code else "outcome_unknown"

    @property
    def stops_load(self) -> bool:  # type: ignore[override]
        """A create redirected elsewhere (a wrong address) stops the load like the redirect itself."""
        return bool(self.cause is not None and self.cause.stops_load)


class OpportunityAmbiguousMatchError(OpportunityError):
    """Several CRM records match where at most one may: a reference held twice, or a row that
    ``match_on`` finds more than once. Nothing is sent for the row; a person picks the record.

    :param message: which records matched and what to do.
    :param ids: the ids of the records that matched.
    """

    row_outcome = ROW_REJECTED

    def __init__(self, message: str, *, ids: Sequence[int]) -> None:
        super().__init__(message)
        self.ids = list(ids)
