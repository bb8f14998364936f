"""The one call flow of both HTTP clients, free of any HTTP library: what each attempt's answer means.

For every attempt of a :class:`~airflow_opportunity_provider.protocol.Call`, :func:`decide` says
whether the request was certainly not processed, whether its outcome is known, and so whether it
is a success (with its value), a refusal worth retrying, a rejection, an authentication failure or
an unknown outcome, and whether a retry is allowed. :func:`attempt` is one attempt as a generator
(as httpx's ``Auth.auth_flow``): it yields the bearer token it needs and the request to send, and
repeats the request once with a fresh token after a 401. :func:`perform` and :func:`perform_async`
drive it inside the one retry policy (a first attempt that succeeds never enters it: tenacity's
bookkeeping costs more than a request on loopback); the clients only supply ``send`` (bytes over their HTTP
library, each with one table that maps its exceptions to a :class:`TransportFault`) and ``token``.

The rule for a request that is not idempotent (a v1 create): only a definite refusal is retried
(429, 503, or a failure before any byte of the request left). Anything else that is not a clean,
parseable answer may have been processed: it ends the call with an outcome-unknown error, never
with a rejection or a failure that a later run would send again.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from airflow_opportunity_provider import __version__
from airflow_opportunity_provider.answers import decode_body, scrub
from airflow_opportunity_provider.auth import TokenCache, sign_v1_request
from airflow_opportunity_provider.connection import OpportunitySettings, is_header_safe
from airflow_opportunity_provider.errors import (
    OpportunityAuthenticationError,
    OpportunityConfigurationError,
    OpportunityConnectionError,
    OpportunityError,
    OpportunityOutcomeUnknownError,
    OpportunityRateLimitedError,
    OpportunityRedirectError,
    OpportunityServerError,
    OpportunityUnexpectedAnswerError,
)
from airflow_opportunity_provider.protocol import AnswerRefusal, Auth, Call, UnusableAnswer
from airflow_opportunity_provider.retries import BeforeSleep, FailedAttempt, RetryPolicy

T = TypeVar("T")

USER_AGENT = f"airflow-opportunity-provider/{__version__}"

# Statuses that refuse a request before processing it: always safe to send again.
REFUSED_STATUSES = frozenset({429, 503})
# Statuses below 500 that still leave the outcome unknown: the server, or a proxy in front of it,
# timed out or gave up while the request may already be processed.
UNKNOWN_CLIENT_STATUSES = frozenset({408, 499})


@dataclass(frozen=True)
class Request:
    """One attempt, ready for a transport: method, URL, headers and the exact body bytes.

    :param method: the HTTP method.
    :param url: the full URL.
    :param headers: every header to send (already checked: no value can break a header line).
    :param body: the body bytes, or ``None``.
    :param secrets: values this request carries that no message may show.
    """

    method: str
    url: str
    headers: Mapping[str, str] = field(repr=False)
    body: bytes | None = field(default=None, repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Answer:
    """A whole answer as the transport read it.

    :param status: the HTTP status.
    :param headers: the answer's headers.
    :param body: every byte of the body (a transport that could not read it all reports a
        :class:`TransportFault` instead).
    """

    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class TransportFault:
    """No whole answer came.

    :param sent: ``False`` only when no byte of the request can have left this machine
        (connection refused, name resolution, connect timeout, TLS handshake).
    :param reason: what happened, to follow the address in a message ("could not connect
        (ConnectionRefusedError)"); never a library's own message, which may quote headers.
    """

    sent: bool
    reason: str


@dataclass(frozen=True)
class NeedToken:
    """The flow needs a bearer token; after a 401, a new one instead of ``rejected``.

    :param rejected: the token a 401 answered, or ``None`` for whatever token is current.
    """

    rejected: str | None = field(default=None, repr=False)


class Verdict(enum.Enum):
    """What one attempt's answer means."""

    #: A clean answer of the platform, with its value.
    SUCCESS = "success"
    #: Certainly not processed (429, 503, nothing sent): worth sending again.
    REFUSED = "refused"
    #: A definite answer that it was not done; sending it again would not help.
    REJECTED = "rejected"
    #: The credentials were refused.
    AUTH_FAILED = "auth_failed"
    #: It may or may not have been processed.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Decision(Generic[T]):
    """What :func:`decide` made of one attempt.

    :param verdict: what the answer means.
    :param retry: whether the call may be attempted again.
    :param value: the success value.
    :param error: the error the caller gets when this is the last attempt.
    :param status: the HTTP status, when an answer came.
    :param retry_after: what the server asked to wait, when it said.
    """

    verdict: Verdict
    retry: bool = False
    value: T | None = None
    error: OpportunityError | None = None
    status: int | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class Credentials:
    """What authenticates calls: the v1 API key and secret, and the v2 token cache.

    :param api_key: the v1 API key.
    :param api_secret: the v1 API secret (signs; never sent).
    :param tokens: the v2 bearer token cache (a static token, or client-credential tokens).
    """

    api_key: str | None = field(repr=False)
    api_secret: str | None = field(repr=False)
    tokens: TokenCache

    @classmethod
    def from_settings(cls, settings: OpportunitySettings, tokens: TokenCache | None = None) -> Credentials:
        """The credentials of a connection.

        :param settings: the connection's settings.
        :param tokens: a token cache to share; a new one from the settings by default.
        """
        return cls(settings.v1_api_key, settings.v1_api_secret, tokens or TokenCache(settings.v2_token))

    @property
    def can_refresh(self) -> bool:
        """Whether a refused token can be replaced (not for a static, pre-issued token)."""
        return not self.tokens.is_static


# -- building a request ----------------------------------------------------------------------

# Which setting a header's value comes from, to name it when the value cannot be sent.
_HEADER_SOURCES = {
    "x-api-authorization": "the v1 API key (the connection's login)",
    "authorization": "the v2 bearer token (extra.v2_token, or the one the token endpoint issued)",
}


def check_header_values(headers: Mapping[str, str]) -> None:
    """Refuse a header value that would break the header line, before any library sees it.

    HTTP libraries quote the offending value in their own error, which here would be a
    signature or a token; this error names the setting to correct instead.

    :param headers: the headers of one request.
    :raises OpportunityConfigurationError: naming the setting, never the value.
    """
    for name, value in headers.items():
        if not isinstance(value, str) or not is_header_safe(value):
            source = _HEADER_SOURCES.get(name.lower(), f"the header {name!r} (extra.headers)")
            raise OpportunityConfigurationError(
                f"{source[0].upper()}{source[1:]} holds a character that cannot be sent in an HTTP header "
                "(a line break, a control character or a letter outside Latin-1); correct it in the "
                "connection. Nothing was sent."
            )


def build_request(call: Call[Any], credentials: Credentials, token: str | None = None) -> Request:
    """The request of one attempt: a v1 call signed now (the platform refuses a date over five
    minutes old), a v2 call with its bearer token.

    :param call: the call.
    :param credentials: the credentials.
    :param token: the bearer token of a v2 call.
    :raises OpportunityConfigurationError: when a header value cannot be sent.
    """
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **call.extra_headers}
    secrets = list(call.secrets)
    if call.body is not None and call.content_type:
        headers["Content-Type"] = call.content_type
    if call.auth is Auth.V1_SIGNED:
        if not credentials.api_key or not credentials.api_secret:
            raise OpportunityConfigurationError(
                f"{call.what} needs the v1 API key and secret: fill in the connection's login and password."
            )
        signed = sign_v1_request(
            credentials.api_key, credentials.api_secret, call.request_string, call.body or b""
        )
        headers.update(signed)
        secrets += [credentials.api_secret, signed["X-Api-Authorization"].rpartition(":")[2]]
    elif call.auth is Auth.BEARER:
        if not token:
            raise OpportunityAuthenticationError(f"{call.what} has no bearer token to send.")
        headers["Authorization"] = f"Bearer {token}"
        secrets.append(token)
    check_header_values(headers)
    return Request(call.method, call.url, headers, call.body, tuple(secret for secret in secrets if secret))


# -- deciding what an answer means -----------------------------------------------------------


def decide(call: Call[T], request: Request, result: Answer | TransportFault) -> Decision[T]:
    """What one attempt's result means, and whether the call may be attempted again.

    :param call: the call.
    :param request: the request that was (or was not) sent; its secrets are hidden from messages.
    :param result: the whole answer, or the transport's fault.
    """
    if isinstance(result, TransportFault):
        lost = OpportunityConnectionError(f"{call.what} to {call.address} {result.reason}.", sent=result.sent)
        if not result.sent:
            return Decision(Verdict.REFUSED, retry=True, error=lost)
        return _unknown(call, lost, None)
    status = result.status
    if 200 <= status < 300:
        return _read_success(call, request, result)
    if 300 <= status < 400:
        host = _location_host(result.headers)
        redirect = OpportunityRedirectError(
            f"{call.what} was answered HTTP {status}, a redirect to {host or 'an unnamed address'}. "
            "Redirects are not followed, because they would carry the signed request or the credentials "
            f"to another address: point the connection at the address that answers itself, not at "
            f"{call.address}.",
            status_code=status,
            location_host=host,
        )
        # Sending it again would be redirected again; a 303 may even mean it was processed.
        return _unknown(call, redirect, status, retry=False)
    body = scrub(decode_body(result.body), request.secrets)
    error = call.read_error(status, result.headers, body)
    retry_after = getattr(error, "retry_after", None)
    if status in REFUSED_STATUSES:
        return Decision(Verdict.REFUSED, retry=True, error=error, status=status, retry_after=retry_after)
    if status in UNKNOWN_CLIENT_STATUSES or status >= 500 or status < 200:
        return _unknown(call, error, status)
    if isinstance(error, OpportunityAuthenticationError):
        return Decision(Verdict.AUTH_FAILED, error=error, status=status)
    return Decision(Verdict.REJECTED, error=error, status=status)


def _read_success(call: Call[T], request: Request, answer: Answer) -> Decision[T]:
    status = answer.status
    try:
        document = json.loads(answer.body)
    except (ValueError, UnicodeDecodeError):
        kind = next((v for k, v in answer.headers.items() if k.lower() == "content-type"), "no content type")
        if call.read_not_json is not None:
            error = call.read_not_json(status, kind)
            verdict = (
                Verdict.AUTH_FAILED if isinstance(error, OpportunityAuthenticationError) else Verdict.REJECTED
            )
            return Decision(verdict, error=error, status=status)
        return _unknown(
            call,
            OpportunityUnexpectedAnswerError(
                f"{call.what} answered HTTP {status} with a body that is not JSON ({kind}, "
                f"{len(answer.body)} bytes), which is not the platform's answer.",
                status_code=status,
            ),
            status,
        )
    try:
        value = call.read_success(document)
    except UnusableAnswer as unusable:
        return _unknown(
            call,
            OpportunityUnexpectedAnswerError(
                f"{call.what} answered HTTP {status}, but {unusable}, which is not the platform's answer.",
                status_code=status,
                body=scrub(document, request.secrets),
            ),
            status,
        )
    except AnswerRefusal as refusal:
        error = refusal.error
        if isinstance(error, OpportunityAuthenticationError):
            return Decision(Verdict.AUTH_FAILED, error=error, status=status)
        if isinstance(error, OpportunityRateLimitedError) or (
            isinstance(error, OpportunityServerError) and error.code == 503
        ):
            return Decision(Verdict.REFUSED, retry=True, error=error, status=status)
        if isinstance(error, OpportunityServerError):
            return _unknown(call, error, status)
        return Decision(Verdict.REJECTED, error=error, status=status)
    return Decision(Verdict.SUCCESS, value=value, status=status)


def _unknown(
    call: Call[T], cause: OpportunityError, status: int | None, *, retry: bool = True
) -> Decision[T]:
    """An attempt that may have been processed: retried only when repeating it is harmless."""
    if call.idempotent:
        return Decision(Verdict.UNKNOWN, retry=retry, error=cause, status=status)
    error = OpportunityOutcomeUnknownError(call.payload or {}, str(cause), status_code=status, cause=cause)
    return Decision(Verdict.UNKNOWN, error=error, status=status)


def _location_host(headers: Mapping[str, str]) -> str | None:
    for name, value in headers.items():
        if name.lower() == "location":
            host = urlsplit(value.strip()).hostname
            return host or None
    return None


# -- one attempt, and the call with its retries ----------------------------------------------

Step = Request | NeedToken
Reply = Answer | TransportFault | str


def attempt(call: Call[T], credentials: Credentials) -> Generator[Step, Reply, Decision[T]]:
    """One attempt of ``call``: yields what it needs, returns its :class:`Decision`.

    It yields a :class:`NeedToken` (send back the token) and a :class:`Request` (send back the
    :class:`Answer` or :class:`TransportFault`). A v2 call answered 401 gets one new token and
    is sent once more, within the same attempt; a static token is never replaced.

    :param call: the call.
    :param credentials: the credentials.
    """
    token: str | None = None
    if call.auth is Auth.BEARER:
        token = str((yield NeedToken()))
    request = build_request(call, credentials, token)
    result = yield request
    assert not isinstance(result, str)
    decision = decide(call, request, result)
    if (
        decision.verdict is Verdict.AUTH_FAILED
        and decision.status == 401
        and call.auth is Auth.BEARER
        and credentials.can_refresh
    ):
        # A token can be revoked or expire early: fetch a new one once and repeat once.
        token = str((yield NeedToken(rejected=token)))
        request = build_request(call, credentials, token)
        result = yield request
        assert not isinstance(result, str)
        decision = decide(call, request, result)
    return decision


def settle(decision: Decision[T]) -> T:
    """The value of a successful attempt; any other raises it as a :class:`FailedAttempt`.

    :param decision: the attempt's decision.
    """
    if decision.verdict is Verdict.SUCCESS:
        return decision.value  # type: ignore[return-value]
    raise FailedAttempt(decision)


Send = Callable[[Request], Answer | TransportFault]
GetToken = Callable[[NeedToken], str]
SendAsync = Callable[[Request], Awaitable[Answer | TransportFault]]
GetTokenAsync = Callable[[NeedToken], Awaitable[str]]


def run_attempt(call: Call[T], credentials: Credentials, send: Send, token: GetToken) -> Decision[T]:
    """Drive one :func:`attempt` with a synchronous transport.

    :param call: the call.
    :param credentials: the credentials.
    :param send: sends a request and returns the whole answer or the fault.
    :param token: returns a bearer token (a new one when the step names a rejected token).
    """
    flow = attempt(call, credentials)
    step = next(flow)
    while True:
        reply: Reply = token(step) if isinstance(step, NeedToken) else send(step)
        try:
            step = flow.send(reply)
        except StopIteration as done:
            return done.value


async def run_attempt_async(
    call: Call[T], credentials: Credentials, send: SendAsync, token: GetTokenAsync
) -> Decision[T]:
    """Drive one :func:`attempt` with an asyncio transport (see :func:`run_attempt`).

    :param call: the call.
    :param credentials: the credentials.
    :param send: sends a request and returns the whole answer or the fault.
    :param token: returns a bearer token.
    """
    flow = attempt(call, credentials)
    step = next(flow)
    while True:
        reply: Reply = await token(step) if isinstance(step, NeedToken) else await send(step)
        try:
            step = flow.send(reply)
        except StopIteration as done:
            return done.value


def perform(
    call: Call[T],
    credentials: Credentials,
    policy: RetryPolicy,
    send: Send,
    token: GetToken,
    before_sleep: BeforeSleep | None = None,
) -> T:
    """Make one logical call with a synchronous transport: every attempt decided, retried by ``policy``.

    :param call: the call.
    :param credentials: the credentials.
    :param policy: the retry policy (tenacity ``Retrying``).
    :param send: sends a request and returns the whole answer or the fault.
    :param token: returns a bearer token.
    :param before_sleep: called before each wait between attempts.
    :return: the success value.
    :raises OpportunityError: the last attempt's error.
    """
    first = run_attempt(call, credentials, send, token)
    if first.verdict is Verdict.SUCCESS:
        return first.value  # type: ignore[return-value]
    # The first attempt failed: it is replayed as tenacity's first attempt (nothing is sent
    # again), so that the policy decides, waits and logs exactly as for every later one.
    replayed = [first]

    def one() -> T:
        return settle(replayed.pop() if replayed else run_attempt(call, credentials, send, token))

    try:
        return policy.retrying(before_sleep)(one)
    except FailedAttempt as failed:
        raise failed.error from None


async def perform_async(
    call: Call[T],
    credentials: Credentials,
    policy: RetryPolicy,
    send: SendAsync,
    token: GetTokenAsync,
    before_sleep: BeforeSleep | None = None,
) -> T:
    """Make one logical call with an asyncio transport (see :func:`perform`).

    :param call: the call.
    :param credentials: the credentials.
    :param policy: the retry policy (tenacity ``AsyncRetrying``).
    :param send: sends a request and returns the whole answer or the fault.
    :param token: returns a bearer token.
    :param before_sleep: called before each wait between attempts.
    :return: the success value.
    :raises OpportunityError: the last attempt's error.
    """

    first = await run_attempt_async(call, credentials, send, token)
    if first.verdict is Verdict.SUCCESS:
        return first.value  # type: ignore[return-value]
    # As in perform: the failed first attempt is replayed into the retry policy, not resent.
    replayed = [first]

    async def one() -> T:
        return settle(replayed.pop() if replayed else await run_attempt_async(call, credentials, send, token))

    try:
        return await policy.async_retrying(before_sleep)(one)
    except FailedAttempt as failed:
        raise failed.error from None
