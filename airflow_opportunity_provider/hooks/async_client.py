"""AsyncOpportunityClient: the asyncio (aiohttp) twin of ``OpportunityHook`` for bulk loads.

It signs, reads answers, maps errors and decides retries with exactly the functions the
``requests`` hook uses (``auth``, ``protocol``, ``errors``, ``retries``), so a row loaded in bulk
behaves as it would through the hook: a v1 create whose outcome is unknown is never resent.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import aiohttp

from airflow_opportunity_provider import __version__
from airflow_opportunity_provider.auth import TokenCache
from airflow_opportunity_provider.connection import OpportunitySettings
from airflow_opportunity_provider.errors import (
    OpportunityAuthenticationError,
    OpportunityConnectionError,
    OpportunityError,
    OpportunityOutcomeUnknownError,
    OpportunityRateLimitedError,
    decode_body,
)
from airflow_opportunity_provider.protocol import (
    prepare_v1_add_or_update,
    read_v2_answer,
    read_v2_token_answer,
    v2_opportunity_path,
    v2_put_what,
    v2_record,
    v2_token_request,
)
from airflow_opportunity_provider.retries import Backoff, is_outcome_unknown, should_retry
from airflow_opportunity_provider.schemas import split_put_request, validate_add_or_update_payload
from airflow_opportunity_provider.serialization import dumps_bytes

if TYPE_CHECKING:
    from airflow_opportunity_provider.hooks.opportunity import OpportunityHook

T = TypeVar("T")
Reader = Callable[[int, Mapping[str, str], Any], T]

USER_AGENT = f"airflow-opportunity-provider/{__version__}"
# DNS answers are kept this long; a bulk load makes thousands of calls to one host.
DNS_CACHE_SECONDS = 300
# Pacing lets requests leave at up to this many times the even spread over a round trip, so it
# only ever breaks up bursts and never caps the rate a load can reach.
PACING_HEADROOM = 1.5
# A pacing wait shorter than this is not slept: event loops time sleeps to the millisecond.
MIN_PACING_SLEEP = 0.0005

log = logging.getLogger(__name__)


class RequestGate(Protocol):
    """What the client asks before each attempt and tells after a 429: a shared rate limiter."""

    async def acquire(self) -> None:
        """Wait until one more request may be sent."""

    def pause(self, seconds: float) -> None:
        """Hold every caller back for ``seconds`` (the server said it is overloaded)."""


class RequestPacer:
    """Spreads the requests in flight evenly over a round trip instead of letting them leave in bursts.

    ``concurrency`` workers that start together, or whose answers come back together, keep
    sending together: every round trip then begins with a burst that the server and this event
    loop work through one request at a time, and the last request of each burst waits for all
    the others. The pacer keeps consecutive requests at least ``shortest round trip /
    (concurrency * headroom)`` apart: a burst is spread over most of a round trip, while a steady
    load (whose requests are that far apart anyway) is never held back. It needs a round trip to
    learn from, so the first ``concurrency`` requests leave at once.

    :param concurrency: the most requests in flight at once.
    :param headroom: how much faster than the even spread requests may leave.
    :param window: how many recent round trips the shortest is taken from.
    """

    def __init__(
        self, concurrency: int, headroom: float = PACING_HEADROOM, window: int | None = None
    ) -> None:
        if headroom <= 0:
            raise ValueError("headroom must be above 0")
        self._share = 1.0 / (concurrency * headroom)
        self._round_trips: deque[float] = deque(maxlen=window or 4 * concurrency)
        self._shortest = 0.0
        self._next_slot = 0.0
        self.paced = 0

    @property
    def gap(self) -> float:
        """The least time between two requests leaving, in seconds (``0`` before any round trip)."""
        return self._shortest * self._share

    def observe(self, seconds: float) -> None:
        """Learn from one finished round trip (request sent to answer read).

        :param seconds: how long it took.
        """
        self._round_trips.append(seconds)
        self._shortest = min(self._round_trips)

    async def wait(self) -> None:
        """Wait for this request's slot: at least :attr:`gap` after the previous one's."""
        gap = self.gap
        if gap <= 0:
            return
        now = asyncio.get_running_loop().time()
        slot = self._next_slot if self._next_slot > now else now
        self._next_slot = slot + gap
        if slot - now >= MIN_PACING_SLEEP:
            self.paced += 1
            await asyncio.sleep(slot - now)


class AsyncOpportunityClient:
    """Calls the v1 add-or-update and the v2 put endpoints from one event loop, many at a time.

    One ``aiohttp.ClientSession`` with a connector sized to ``concurrency`` serves every call;
    use the client as an async context manager so that the session is closed. Every attempt is
    signed afresh (v1) or carries the cached bearer token (v2), waits for ``gate`` when one is
    given, and is retried by the same rule as :class:`OpportunityHook`. With ``pacing`` (the
    default) the attempts are spread evenly over a round trip (see :class:`RequestPacer`).

    :param settings: the connection's settings (see :func:`settings_from_connection`).
    :param concurrency: the most requests in flight at once; sizes the connection pool.
    :param gate: a shared rate limiter every attempt waits for, and that a 429 pauses.
    :param backoff: the waits between attempts.
    :param token_cache: a v2 token cache to share; a new one from the settings by default.
    :param pacing: spread the requests in flight over a round trip instead of sending bursts.
    """

    def __init__(
        self,
        settings: OpportunitySettings,
        *,
        concurrency: int = 16,
        gate: RequestGate | None = None,
        backoff: Backoff | None = None,
        token_cache: TokenCache | None = None,
        pacing: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.settings = settings
        self.concurrency = concurrency
        self.gate = gate
        # One request at a time is never a burst.
        self.pacer = RequestPacer(concurrency) if pacing and concurrency > 1 else None
        self.backoff = backoff or Backoff()
        self.token_cache = token_cache or TokenCache(settings.v2_token)
        self._session: aiohttp.ClientSession | None = None
        self._token_lock: asyncio.Lock | None = None
        # Counted per attempt, so a summary can say how many requests a load really sent.
        self.requests_sent = 0
        self.retries = 0
        self.rate_limited = 0

    @classmethod
    def from_hook(cls, hook: OpportunityHook, **kwargs: Any) -> AsyncOpportunityClient:
        """Build a client on a hook's connection settings (its secrets are already masked).

        :param hook: the :class:`OpportunityHook` whose ``settings`` to use.
        :param kwargs: passed on to the constructor (``concurrency``, ``gate``, ``backoff``).
        """
        kwargs.setdefault("backoff", hook.backoff)
        return cls(hook.settings, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(conn_id={self.settings.conn_id!r}, concurrency={self.concurrency})"

    # -- session -------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncOpportunityClient:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Create the session; must run inside the event loop that will make the calls."""
        if self._session is not None:
            return
        settings = self.settings
        connector = aiohttp.TCPConnector(
            limit=self.concurrency,
            ttl_dns_cache=DNS_CACHE_SECONDS,
            ssl=_ssl_option(settings.verify),
        )
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout, sock_read=settings.read_timeout
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": USER_AGENT},
            # Retries are ours; cookies (and redirects, refused per request) have no place here.
            cookie_jar=aiohttp.DummyCookieJar(),
            # Small JSON answers: compressing them costs both sides more than it saves.
            skip_auto_headers=("Accept-Encoding",),
        )
        self._token_lock = asyncio.Lock()

    async def close(self) -> None:
        """Close the session and its pooled connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The open session; :meth:`open` (or ``async with``) must have run."""
        if self._session is None:
            raise RuntimeError("Open the AsyncOpportunityClient first (async with client: ...).")
        return self._session

    # -- the endpoints -------------------------------------------------------------------

    async def add_or_update_opportunity(self, payload: Mapping[str, Any], *, validate: bool = True) -> int:
        """Create (no ``id``) or update (with ``id``) a v1 opportunity and return its id.

        A create whose outcome cannot be known is not sent again: it raises
        :class:`~airflow_opportunity_provider.errors.OpportunityOutcomeUnknownError`.

        :param payload: the opportunity fields.
        :param validate: check the payload against the v1 schema first (skip it only when the
            caller already did).
        """
        if validate:
            validate_add_or_update_payload(payload)
        call = prepare_v1_add_or_update(self.settings, payload)

        async def headers() -> dict[str, str]:
            return call.signed_headers()

        return await self._call(
            "POST",
            call.url,
            body=call.body,
            headers=headers,
            read=call.read,
            what=call.what,
            idempotent=call.idempotent,
            payload=payload,
        )

    async def put_opportunity_document(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """Update a v2 opportunity from one flat document (``Id``, ``opportunityType``,
        ``LanguageId`` and body fields), validated and split by the v2 schema.

        :param document: the flat put request.
        :return: the full updated record the platform answered.
        """
        opportunity_id, opportunity_type, language_id, body = split_put_request(document)
        return await self.put_opportunity(opportunity_id, opportunity_type, body, language_id)

    async def put_opportunity(
        self,
        opportunity_id: int,
        opportunity_type: str,
        body: Mapping[str, Any],
        language_id: int | None = None,
    ) -> dict[str, Any]:
        """Update a v2 opportunity with an already validated body.

        :param opportunity_id: the platform's own opportunity id.
        :param opportunity_type: ``"Pre"`` or ``"Post"``.
        :param body: the body fields to set.
        :param language_id: the language of localized content.
        :return: the full updated record the platform answered.
        """
        path = v2_opportunity_path(opportunity_id, opportunity_type, language_id)
        what = v2_put_what(opportunity_id, opportunity_type)
        return v2_record(await self._v2_call("PUT", path, dumps_bytes(body), what), what)

    # -- v2 authentication ---------------------------------------------------------------

    async def _bearer_token(self) -> str:
        token = self.token_cache.current()
        if token is not None:
            return token
        lock = self._token_lock
        assert lock is not None  # set by open()
        # Single flight: the first caller fetches, the others wait and reuse its token.
        async with lock:
            token = self.token_cache.current()
            if token is None:
                token = await self._fetch_token()
        return token

    async def _fetch_token(self) -> str:
        settings = self.settings
        token_url, form = v2_token_request(settings)
        cache = self.token_cache

        def read(status: int, headers: Mapping[str, str], body: Any) -> str:
            token = read_v2_token_answer(cache, settings.conn_id, status, headers, body)
            _mask(token)
            return token

        async def headers() -> dict[str, str]:
            return {}

        log.info("Fetching a v2 access token from %s", token_url)
        return await self._call(
            "POST",
            token_url,
            body=None,
            form=form,
            headers=headers,
            read=read,
            what="The v2 token request",
            idempotent=True,
        )

    async def _v2_call(self, method: str, path: str, body: bytes | None, what: str) -> Any:
        url = self.settings.require_v2() + path
        sent_token: dict[str, str] = {}

        async def headers() -> dict[str, str]:
            token = await self._bearer_token()
            sent_token["value"] = token
            result = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            if body is not None:
                result["Content-Type"] = "application/json"
            return result

        def read(status: int, answer_headers: Mapping[str, str], answer: Any) -> Any:
            return read_v2_answer(status, answer_headers, answer, what)

        try:
            return await self._call(
                method, url, body=body, headers=headers, read=read, what=what, idempotent=True
            )
        except OpportunityAuthenticationError as error:
            # A token can be revoked or expire early: fetch a new one once and repeat once.
            if error.status_code != 401 or self.token_cache.is_static:
                raise
            log.info("%s answered 401; fetching a new token and repeating it once", what)
            self.token_cache.invalidate(sent_token.get("value"))
            return await self._call(
                method, url, body=body, headers=headers, read=read, what=what, idempotent=True
            )

    # -- sending with retries ------------------------------------------------------------

    async def _call(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None,
        headers: Callable[[], Awaitable[dict[str, str]]],
        read: Reader[T],
        what: str,
        idempotent: bool,
        payload: Mapping[str, Any] | None = None,
        form: Mapping[str, str] | None = None,
    ) -> T:
        """Send one logical call: every attempt waits for the gate and gets fresh headers."""
        attempts = self.settings.max_retries + 1
        attempt_number = 0
        while True:
            attempt_number += 1
            try:
                return await self._attempt(method, url, body, form, headers, read, what)
            except OpportunityError as error:
                if not idempotent and payload is not None and is_outcome_unknown(error):
                    raise OpportunityOutcomeUnknownError(
                        payload, str(error), status_code=getattr(error, "status_code", None)
                    ) from None
                if attempt_number >= attempts or not should_retry(error, idempotent):
                    raise
                wait = self.backoff.seconds(attempt_number, getattr(error, "retry_after", None))
                if isinstance(error, OpportunityRateLimitedError) and self.gate is not None:
                    # The server is over its limit for every worker, not just this one.
                    self.gate.pause(wait)
                self.retries += 1
                # Debug only: a bulk load retries hundreds of rows and reports the count instead.
                log.debug(
                    "%s failed (attempt %d of %d): %s; retrying in %.2f s",
                    what, attempt_number, attempts, error, wait,
                )  # fmt: skip
                await asyncio.sleep(wait)

    async def _attempt(
        self,
        method: str,
        url: str,
        body: bytes | None,
        form: Mapping[str, str] | None,
        headers: Callable[[], Awaitable[dict[str, str]]],
        read: Reader[T],
        what: str,
    ) -> T:
        pacer = self.pacer
        if pacer is not None:
            await pacer.wait()
        # The gate comes last: a pacing wait after it could send two of its slots too close.
        if self.gate is not None:
            await self.gate.acquire()
        request_headers = await headers()
        self.requests_sent += 1
        try:
            sent_at = time.perf_counter()
            async with self.session.request(
                method,
                url,
                data=body if form is None else dict(form),
                headers=request_headers,
                allow_redirects=False,
            ) as response:
                raw = await response.read()
                status = response.status
                answer_headers = response.headers
            if pacer is not None:
                pacer.observe(time.perf_counter() - sent_at)
        except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError):
            # Connecting failed: no byte of the request left this machine.
            raise OpportunityConnectionError(f"{what} could not connect.", sent=False) from None
        except (aiohttp.SocketTimeoutError, TimeoutError):
            raise OpportunityConnectionError(
                f"{what} got no answer within {self.settings.read_timeout:g} s.", sent=True
            ) from None
        except aiohttp.ClientError as error:
            # The type name only: aiohttp's messages can carry the request's headers.
            raise OpportunityConnectionError(
                f"{what} lost its connection after sending ({type(error).__name__}).", sent=True
            ) from None
        if status == 429:
            self.rate_limited += 1
        return read(status, answer_headers, decode_body(raw))


def _ssl_option(verify: bool | str) -> bool | ssl.SSLContext:
    """aiohttp's ``ssl`` argument for the connection's ``verify`` (a bool or a CA bundle path)."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


def _mask(secret: str) -> None:
    """Register a fetched token with Airflow's secrets masker, when running under Airflow."""
    try:
        from airflow.providers.common.compat.sdk import mask_secret
    except ImportError:  # pragma: no cover - the package always runs with Airflow installed
        return
    mask_secret(secret)
