"""AsyncOpportunityClient: the asyncio (aiohttp) twin of ``OpportunityHook`` for bulk loads.

What every answer means, what may be retried and the token refresh live in ``flow``, shared with
the ``requests`` hook, so a row loaded in bulk behaves as it would through the hook: a v1 create
whose outcome is unknown is never resent. This module only sends bytes, and maps each aiohttp
failure to "never sent" or "may have been processed".
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import aiohttp
from tenacity import RetryCallState

from airflow_opportunity_provider import protocol
from airflow_opportunity_provider.auth import TokenCache
from airflow_opportunity_provider.connection import OpportunitySettings
from airflow_opportunity_provider.errors import OpportunityConfigurationError
from airflow_opportunity_provider.flow import (
    USER_AGENT,
    Answer,
    Credentials,
    NeedToken,
    Request,
    TransportFault,
    perform_async,
)
from airflow_opportunity_provider.protocol import Call, OpportunityPage
from airflow_opportunity_provider.proxies import ProxyChoice
from airflow_opportunity_provider.references import ListPaging, holds_reference, lookup_filter, the_one
from airflow_opportunity_provider.retries import Backoff, RetryPolicy, failed_attempt
from airflow_opportunity_provider.schemas import CheckedPutRequest, CheckedV1Payload, check_put_request

if TYPE_CHECKING:
    from airflow_opportunity_provider.hooks.opportunity import OpportunityHook

T = TypeVar("T")

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
    use the client as an async context manager so that the session is closed. Every attempt
    waits for ``gate`` when one is given; what it means and whether it is retried is decided by
    ``flow``, exactly as for :class:`OpportunityHook`. With ``pacing`` (the default) the attempts
    are spread evenly over a round trip (see :class:`RequestPacer`).

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
        self.credentials = Credentials.from_settings(settings, self.token_cache)
        self.retry_policy = RetryPolicy(settings.max_retries, self.backoff)
        self._proxy = ProxyChoice(settings.proxies, settings.trust_env)
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
            ssl=_ssl_option(settings.verify, settings.cert),
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
            # Proxies are chosen per request by proxies.proxy_for, as the requests hook chooses them.
            trust_env=False,
        )
        # aiohttp resends a PUT, GET or DELETE once, unasked, when its connection drops before the
        # answer (it counts on a kept-alive connection having gone stale): a second request that
        # ``flow`` never decided on, and that neither the retry policy nor ``requests_sent`` counts.
        # aiohttp has no public switch for it (checked up to 3.14).
        self._session._retry_connection = False
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

    async def add_or_update_opportunity(self, payload: Mapping[str, Any] | CheckedV1Payload) -> int:
        """Create (no ``id``) or update (with ``id``) a v1 opportunity and return its id.

        A create whose outcome cannot be known is not sent again: it raises
        :class:`~airflow_opportunity_provider.errors.OpportunityOutcomeUnknownError`.

        :param payload: the opportunity fields, validated against the v1 schema unless already
            checked (``schemas.check_add_or_update_payload``).
        """
        return await self._perform(protocol.v1_add_or_update(self.settings, payload))

    async def put_opportunity_request(self, request: Mapping[str, Any] | CheckedPutRequest) -> dict[str, Any]:
        """Update a v2 opportunity from one flat document (``Id``, ``opportunityType``,
        ``LanguageId`` and body fields) or an already checked request.

        :param request: the put request; a document is validated against the v2 schema first.
        :return: the full updated record the platform answered.
        """
        return await self._perform(protocol.v2_put(self.settings, check_put_request(request)))

    async def put_opportunity_document(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """Update a v2 opportunity from one flat document; see :meth:`put_opportunity_request`.

        :param document: the flat put request.
        """
        return await self.put_opportunity_request(document)

    async def put_opportunity(
        self,
        opportunity_id: int,
        opportunity_type: str,
        body: Mapping[str, Any],
        language_id: int | None = None,
    ) -> dict[str, Any]:
        """Update a v2 opportunity (validated against the v2 schema first).

        :param opportunity_id: the platform's own opportunity id.
        :param opportunity_type: ``"Pre"`` or ``"Post"``.
        :param body: the body fields to set.
        :param language_id: the language of localized content.
        :return: the full updated record the platform answered.
        """
        document: dict[str, Any] = {"Id": opportunity_id, "opportunityType": opportunity_type, **body}
        if language_id is not None:
            document["LanguageId"] = language_id
        return await self.put_opportunity_request(document)

    async def get_opportunity(
        self, opportunity_id: int, opportunity_type: str | None = None, language_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Read a v2 opportunity: both its Pre and Post records when no type is given.

        :param opportunity_id: the platform's own opportunity id.
        :param opportunity_type: ``"Pre"``, ``"Post"`` or ``None`` for both.
        :param language_id: the language of localized content.
        """
        return await self._perform(
            protocol.v2_get(self.settings, opportunity_id, opportunity_type, language_id)
        )

    async def list_opportunity_page(
        self,
        venue_ids: Sequence[int | str] | None,
        filter: Mapping[str, Any] | None = None,
        *,
        start: int = 0,
        per_page: int = 100,
    ) -> OpportunityPage:
        """Read one page of the v1 opportunity list; see ``OpportunityHook.list_opportunity_page``.

        :param venue_ids: the venues to list, or ``None`` for every venue.
        :param filter: the platform's filter object (the server may ignore it).
        :param start: the zero-based offset of the first record.
        :param per_page: the page size to ask for (the server may cap it).
        """
        return await self._perform(
            protocol.v1_list(
                self.settings, venue_ids=venue_ids, filter=filter, start=start, per_page=per_page
            )
        )

    async def list_opportunities(
        self,
        venue_ids: Sequence[int | str] | None,
        filter: Mapping[str, Any] | None = None,
        per_page: int = 100,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every record of the v1 opportunity list, page after page; see ``OpportunityHook.list_opportunities``.

        :param venue_ids: the venues to list, or ``None`` for every venue.
        :param filter: the platform's filter object (the server may ignore it).
        :param per_page: the page size to ask for (the server may cap it).
        """
        paging = ListPaging(per_page)
        start: int | None = 0
        while start is not None:
            page = await self.list_opportunity_page(venue_ids, filter, start=start, per_page=per_page)
            for record in page.results:
                yield record
            start = paging.next_start(page)

    async def find_by_reference(
        self,
        reference: str,
        venue_id: int | str,
        name: str | None = None,
        created_after: float | None = None,
    ) -> dict[str, Any] | None:
        """The one v1 record whose ``externalUrls`` holds ``reference``, or ``None``; see
        ``OpportunityHook.find_by_reference``.

        :param reference: the external URL ``ref``.
        :param venue_id: the record's venue.
        :param name: the record's name when it was created, or ``None``.
        :param created_after: epoch seconds before which the record cannot have been created.
        :raises OpportunityAmbiguousMatchError: more than one record holds the reference.
        """
        records = [
            record
            async for record in self.list_opportunities([venue_id], lookup_filter(name, created_after))
            if holds_reference(record, reference)
        ]
        found = the_one(reference, records)
        return None if found is None else next(r for r in records if int(r["id"]) == found)

    # -- the call flow's transport -------------------------------------------------------

    async def _perform(self, call: Call[T]) -> T:
        return await perform_async(
            call, self.credentials, self.retry_policy, self._send, self._token, self._on_retry
        )

    def _on_retry(self, retry_state: RetryCallState) -> None:
        failed = failed_attempt(retry_state)
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        if failed is not None and failed.decision.status == 429 and self.gate is not None:
            # The server is over its limit for every worker, not just this one.
            self.gate.pause(wait)
        self.retries += 1
        # Debug only: a bulk load retries hundreds of rows and reports the count instead.
        log.debug(
            "attempt %d failed: %s; retrying in %.2f s",
            retry_state.attempt_number,
            failed.error if failed is not None else "an error",
            wait,
        )

    async def _send(self, request: Request) -> Answer | TransportFault:
        """Send one request; a failure becomes a :class:`TransportFault` by this client's table."""
        pacer = self.pacer
        if pacer is not None:
            await pacer.wait()
        # The gate comes last: a pacing wait after it could send two of its slots too close.
        if self.gate is not None:
            await self.gate.acquire()
        settings = self.settings
        self.requests_sent += 1
        try:
            sent_at = time.perf_counter()
            async with self.session.request(
                request.method,
                request.url,
                data=request.body,
                headers=dict(request.headers),
                allow_redirects=False,
                proxy=self._proxy(request.url),
            ) as response:
                raw = await response.read()
                status = response.status
                answer_headers = response.headers
            if pacer is not None:
                pacer.observe(time.perf_counter() - sent_at)
        except Exception as error:
            return _transport_fault(error, settings)
        if status == 429:
            self.rate_limited += 1
        return Answer(status, answer_headers, raw)

    async def _token(self, need: NeedToken) -> str:
        """A bearer token: the cached one, or one fetched once for every worker that waits."""
        cache = self.token_cache
        if need.rejected is not None:
            log.info("A v2 call answered 401; fetching a new token and repeating the call once")
            cache.invalidate(need.rejected)
        token = cache.current()
        if token is not None:
            return token
        lock = self._token_lock
        assert lock is not None  # set by open()
        # Single flight: the first caller fetches, the others wait and reuse its token.
        async with lock:
            token = cache.current()
            if token is None:
                call = protocol.v2_token(self.settings)
                log.info("Fetching a v2 access token from %s", call.address)
                token = cache.store(await self._perform(call))
                _mask(token)
        return token


# The one table of this client: each aiohttp failure, and whether the request may have been
# processed. Connecting (DNS, TCP, a proxy's tunnel, the TLS handshake) fails before any byte
# of the request leaves; every later failure may follow a request the server received.
_NEVER_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.ClientHttpProxyError)
_CUT_SHORT = (aiohttp.ClientPayloadError,)
_READ_TIMEOUT = (aiohttp.SocketTimeoutError, aiohttp.ServerTimeoutError, TimeoutError)
_BEFORE_SENDING = (aiohttp.InvalidURL, ValueError)


def _transport_fault(error: BaseException, settings: OpportunitySettings) -> TransportFault:
    name = type(error).__name__
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return TransportFault(False, f"could not connect within {settings.connect_timeout:g} s")
    if isinstance(error, aiohttp.ClientConnectorSSLError | aiohttp.ClientConnectorCertificateError):
        return TransportFault(False, f"failed in the TLS handshake ({name})")
    if isinstance(error, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        cause = type(error.os_error).__name__ if isinstance(error, aiohttp.ClientConnectorError) else name
        return TransportFault(False, f"could not connect through the proxy ({cause})")
    if isinstance(error, aiohttp.ClientConnectorError):
        cause = type(error.os_error).__name__ if error.os_error is not None else name
        return TransportFault(False, f"could not connect ({cause})")
    if isinstance(error, _NEVER_SENT):
        return TransportFault(False, f"could not connect ({name})")
    if isinstance(error, _CUT_SHORT):
        return TransportFault(True, f"had its answer cut short ({name})")
    if isinstance(error, _READ_TIMEOUT):
        return TransportFault(True, f"got no answer within {settings.read_timeout:g} s")
    tls_error = _tls_cause(error)
    if tls_error is not None:
        return TransportFault(True, f"failed in TLS after sending ({type(tls_error).__name__})")
    if isinstance(error, aiohttp.ClientError | OSError | asyncio.IncompleteReadError):
        return TransportFault(True, f"lost its connection after sending ({name})")
    if isinstance(error, _BEFORE_SENDING):
        raise OpportunityConfigurationError(
            f"The request could not be built ({name}): check the connection's host and "
            "extra.v2_base_url, extra.v2_oauth_url and extra.proxies."
        ) from None
    raise error


def _tls_cause(error: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a failure after connecting: aiohttp reports a TLS alert or a bad record
    on an established connection as a ``ClientOSError`` raised from the ``ssl.SSLError``."""
    current: BaseException | None = error
    for _ in range(4):
        if current is None:
            return None
        if isinstance(current, ssl.SSLError):
            return current
        current = current.__cause__ or current.__context__
    return None


def _ssl_option(verify: bool | str, cert: str | tuple[str, str] | None = None) -> bool | ssl.SSLContext:
    """aiohttp's ``ssl`` argument for the connection's ``verify`` (a bool or a CA bundle path) and
    client certificate, meaning what ``requests`` makes of the same two settings."""
    if cert is None and not isinstance(verify, str):
        return verify
    context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
    if verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        certificate, key = (cert, None) if isinstance(cert, str) else cert
        context.load_cert_chain(certificate, key)
    return context


def _mask(secret: str) -> None:
    """Register a fetched token with Airflow's secrets masker, when running under Airflow."""
    try:
        from airflow.providers.common.compat.sdk import mask_secret
    except ImportError:  # pragma: no cover - the package always runs with Airflow installed
        return
    mask_secret(secret)
