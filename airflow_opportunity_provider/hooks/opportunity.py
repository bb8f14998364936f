"""OpportunityHook: one method per endpoint of both platforms, returning parsed values.

It is an ``HttpHook`` with one pooled ``requests`` session. What every answer means, what may
be retried and the token refresh live in ``flow``; this module only sends bytes, and maps each
``requests`` failure to "never sent" or "may have been processed".
"""

from __future__ import annotations

import dataclasses
import http.client
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
import urllib3.connection
import urllib3.exceptions
from airflow.providers.common.compat.sdk import mask_secret
from airflow.providers.http.hooks.http import HttpHook
from requests.adapters import HTTPAdapter
from requests_toolbelt.adapters.socket_options import TCPKeepAliveAdapter
from tenacity import RetryCallState
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager

from airflow_opportunity_provider import protocol
from airflow_opportunity_provider.auth import TokenCache
from airflow_opportunity_provider.connection import (
    CONN_TYPE,
    DEFAULT_CONN_ID,
    OpportunitySettings,
    settings_from_connection,
)
from airflow_opportunity_provider.errors import (
    OpportunityConfigurationError,
)
from airflow_opportunity_provider.flow import (
    USER_AGENT,
    Answer,
    Credentials,
    NeedToken,
    Request,
    TransportFault,
    perform,
)
from airflow_opportunity_provider.protocol import Call, OpportunityPage
from airflow_opportunity_provider.proxies import ProxyChoice
from airflow_opportunity_provider.references import ListPaging, holds_reference, lookup_filter, the_one
from airflow_opportunity_provider.retries import Backoff, RetryPolicy, failed_attempt
from airflow_opportunity_provider.schemas import CheckedPutRequest, CheckedV1Payload, check_put_request

T = TypeVar("T")

_POOL_SIZE = 32


# -- knowing whether a request left ----------------------------------------------------------


class _SendTracker(threading.local):
    """Whether the current thread's attempt has begun writing its request (per thread)."""

    sent = False


_TRACKER = _SendTracker()


class _TrackedSendMixin:
    """Marks the attempt as sent just before the first byte of the request is written.

    Connecting (DNS, TCP, a proxy tunnel, the TLS handshake) happens first, so a failure there
    is known to have sent nothing; any failure after it may have reached the server.
    """

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.sock is None:  # type: ignore[attr-defined]
            self.connect()  # type: ignore[attr-defined]
        _TRACKER.sent = True
        super().request(*args, **kwargs)  # type: ignore[misc]


class _TrackedHTTPConnection(_TrackedSendMixin, urllib3.connection.HTTPConnection):
    pass


class _TrackedHTTPSConnection(_TrackedSendMixin, urllib3.connection.HTTPSConnection):
    pass


class _TrackedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


def _track(manager: PoolManager) -> PoolManager:
    manager.pool_classes_by_scheme = {
        "http": _TrackedHTTPConnectionPool,
        "https": _TrackedHTTPSConnectionPool,
    }
    return manager


class _TrackingAdapterMixin:
    """An adapter whose connections report when a request leaves (see :class:`_TrackedSendMixin`)."""

    poolmanager: PoolManager

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)  # type: ignore[misc]
        _track(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> PoolManager:
        return _track(super().proxy_manager_for(proxy, **proxy_kwargs))  # type: ignore[misc]


class _TrackedKeepAliveAdapter(_TrackingAdapterMixin, TCPKeepAliveAdapter):
    """``HttpHook``'s TCP keep-alive adapter, tracked."""


class _TrackedAdapter(_TrackingAdapterMixin, HTTPAdapter):
    """The plain adapter, tracked (``tcp_keep_alive=False``)."""


# The one table of this client: each requests failure, and whether the request may have been
# processed. Failures that happen both before and after the request left (a connection error,
# a TLS error) are settled by the tracker.
_CUT_SHORT = (
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    urllib3.exceptions.ProtocolError,
    http.client.IncompleteRead,
)
_BEFORE_SENDING = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidHeader,
    requests.exceptions.InvalidProxyURL,
)


def _cause_name(error: BaseException) -> str:
    """The most specific type name of a requests failure: urllib3 wraps the cause, often twice."""
    current: BaseException = error
    for _ in range(6):
        reason: Any = current.args[0] if current.args else None
        inner = getattr(reason, "reason", None) if reason is not None else None
        following = (
            inner
            if isinstance(inner, BaseException)
            else reason
            if isinstance(reason, BaseException)
            else current.__cause__ or current.__context__
        )
        if following is None:
            break
        current = following
    return type(current).__name__


def _transport_fault(error: BaseException, settings: OpportunitySettings) -> TransportFault:
    sent = _TRACKER.sent
    name = _cause_name(error)
    if isinstance(error, _BEFORE_SENDING):
        raise OpportunityConfigurationError(
            f"The request could not be built ({type(error).__name__}): check the connection's host and "
            "extra.v2_base_url, extra.v2_oauth_url and extra.proxies."
        ) from None
    if isinstance(error, requests.ConnectTimeout) and not sent:
        return TransportFault(False, f"could not connect within {settings.connect_timeout:g} s")
    if isinstance(error, requests.ReadTimeout):
        return TransportFault(True, f"got no answer within {settings.read_timeout:g} s")
    if isinstance(error, _CUT_SHORT):
        return TransportFault(True, f"had its answer cut short ({name})")
    if isinstance(error, requests.exceptions.SSLError):
        if sent:
            return TransportFault(True, f"failed in TLS after sending ({name})")
        return TransportFault(False, f"failed in the TLS handshake ({name})")
    if not sent:
        if isinstance(error, requests.exceptions.ProxyError):
            return TransportFault(False, f"could not connect through the proxy ({name})")
        return TransportFault(False, f"could not connect ({name})")
    return TransportFault(True, f"lost its connection after sending ({name})")


# -- the hook --------------------------------------------------------------------------------


class OpportunityHook(HttpHook):
    """Calls the v1 add-or-update and the v2 put/get opportunity endpoints.

    The connection (type ``opportunity_crm``) holds either platform's settings, or both:
    v1 in host/port/login/password, v2 in ``extra`` (see the README's connection table).

    It is an ``HttpHook`` for what HTTP connections offer (``extra.proxies``, ``extra.cert``,
    ``extra.trust_env``, ``extra.headers``, TCP keep-alive), with three differences kept on
    purpose: one pooled session serves every call; ``login``/``password`` are never sent as
    Basic auth (the v1 secret only signs); other extras never become headers (they hold the
    client secret).

    :param opportunity_conn_id: the Airflow connection to use.
    :param settings: settings to use instead of reading a connection (tests, scripts).
    :param backoff: the waits between attempts.
    :param tcp_keep_alive: turn TCP keep-alive on for the pooled connections.
    :param tcp_keep_alive_idle: seconds idle before the first keep-alive probe.
    :param tcp_keep_alive_count: probes before a connection counts as dead.
    :param tcp_keep_alive_interval: seconds between probes.
    """

    conn_name_attr = "opportunity_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "Opportunity CRM"

    def __init__(
        self,
        opportunity_conn_id: str = DEFAULT_CONN_ID,
        *,
        settings: OpportunitySettings | None = None,
        backoff: Backoff | None = None,
        tcp_keep_alive: bool = True,
        tcp_keep_alive_idle: int = 120,
        tcp_keep_alive_count: int = 20,
        tcp_keep_alive_interval: int = 30,
    ) -> None:
        # Retries are ours (they know which calls are idempotent): urllib3 never resends on its own.
        adapter: HTTPAdapter
        if tcp_keep_alive:
            adapter = _TrackedKeepAliveAdapter(
                idle=tcp_keep_alive_idle,
                count=tcp_keep_alive_count,
                interval=tcp_keep_alive_interval,
                pool_maxsize=_POOL_SIZE,
                max_retries=0,
            )
        else:
            adapter = _TrackedAdapter(pool_maxsize=_POOL_SIZE, max_retries=0)
        super().__init__(method="POST", http_conn_id=opportunity_conn_id, adapter=adapter)
        self.opportunity_conn_id = opportunity_conn_id
        self._settings = settings
        self._session: requests.Session | None = None
        self._token_cache: TokenCache | None = None
        self._proxy_choice: ProxyChoice | None = None
        # Re-entrant: making the session reads the settings, both under this lock.
        self._setup_lock = threading.RLock()
        self.backoff = backoff or Backoff()
        if settings is not None:
            self._mask(settings)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(opportunity_conn_id={self.opportunity_conn_id!r})"

    # -- set-up --------------------------------------------------------------------------

    @staticmethod
    def _mask(settings: OpportunitySettings) -> None:
        for secret in settings.secrets:
            mask_secret(secret)

    @property
    def settings(self) -> OpportunitySettings:
        """The connection's settings, read once."""
        if self._settings is None:
            with self._setup_lock:
                if self._settings is None:
                    conn = self.get_connection(self.opportunity_conn_id)
                    settings = settings_from_connection(
                        self.opportunity_conn_id,
                        host=conn.host,
                        port=conn.port,
                        schema=conn.schema,
                        login=conn.login,
                        password=conn.password,
                        extra=conn.extra_dejson,
                    )
                    self._mask(settings)
                    self._settings = settings
        return self._settings

    @property
    def _proxy(self) -> ProxyChoice:
        if self._proxy_choice is None:
            settings = self.settings
            self._proxy_choice = ProxyChoice(settings.proxies, settings.trust_env)
        return self._proxy_choice

    @property
    def retry_policy(self) -> RetryPolicy:
        """How each call is attempted: ``extra.max_retries`` retries, waiting by :attr:`backoff`."""
        return RetryPolicy(self.settings.max_retries, self.backoff)

    @property
    def token_cache(self) -> TokenCache:
        """The v2 token cache (a static token, or client-credential tokens fetched on demand)."""
        if self._token_cache is None:
            with self._setup_lock:
                if self._token_cache is None:
                    self._token_cache = TokenCache(self.settings.v2_token)
        return self._token_cache

    @property
    def credentials(self) -> Credentials:
        """The v1 key and secret and the v2 token cache, for the call flow."""
        return Credentials.from_settings(self.settings, self.token_cache)

    def get_conn(
        self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None
    ) -> requests.Session:
        """The hook's one pooled session, made on first use from the connection's HTTP options.

        :param headers: not used: every request carries its own headers.
        :param extra_options: not used: the options come from the connection.
        """
        if self._session is None:
            with self._setup_lock:
                if self._session is None:
                    session = requests.Session()
                    session = self._configure_session_from_auth(session, None)  # type: ignore[arg-type]
                    session = self._configure_session_from_extra(session, None, {})
                    session = self._configure_session_from_mount_adapters(session)
                    session.headers["User-Agent"] = USER_AGENT
                    self._session = session
        return self._session

    @property
    def session(self) -> requests.Session:
        """The pooled session (see :meth:`get_conn`)."""
        return self.get_conn()

    def _extract_auth(self, connection: Any) -> Any | None:
        # Never Basic auth: the login is the v1 API key and the password the secret that signs.
        return None

    def _configure_session_from_extra(
        self, session: requests.Session, connection: Any, extra_options: dict[str, Any]
    ) -> requests.Session:
        settings = self.settings
        # Proxies are chosen per request by proxies.proxy_for, as the asyncio client chooses them.
        session.proxies = {}
        session.verify = settings.verify
        session.cert = settings.cert
        # Never requests' own reading of the environment, whatever extra.trust_env says: proxies
        # are chosen per request by proxies.proxy_for (which honours trust_env, as the asyncio
        # client does), and requests would also take Basic credentials from ~/.netrc, replacing
        # the bearer token or riding along with a signed v1 request.
        session.trust_env = False
        return session

    def _configure_session_from_mount_adapters(self, session: requests.Session) -> requests.Session:
        # Both schemes: the v1 and v2 platforms may differ.
        if self.adapter is not None:
            session.mount("https://", self.adapter)
            session.mount("http://", self.adapter)
        return session

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Not offered: a bare request would go unsigned; use the endpoint methods."""
        raise OpportunityConfigurationError(
            "OpportunityHook sends only its own endpoint calls (add_or_update_opportunity, put_opportunity, "
            "get_opportunity, list_opportunities, ping_v1); HttpHook.run would send an unsigned request."
        )

    def close(self) -> None:
        """Close the pooled connections."""
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- the endpoints -------------------------------------------------------------------

    def add_or_update_opportunity(self, payload: Mapping[str, Any] | CheckedV1Payload) -> int:
        """Create an opportunity (no ``id`` in the payload) or update one (with ``id``), on v1.

        A create whose outcome cannot be known (a read timeout, a connection lost after sending,
        a 5xx other than 503, an answer that is not the platform's) is not sent again: it raises
        :class:`~airflow_opportunity_provider.errors.OpportunityOutcomeUnknownError`.

        :param payload: the opportunity fields, validated against the v1 schema before sending
            (unless already checked with ``schemas.check_add_or_update_payload``).
        :return: the id of the created or updated opportunity.
        """
        return self._perform(protocol.v1_add_or_update(self.settings, payload))

    def put_opportunity(
        self,
        opportunity_id: int | str,
        opportunity_type: str,
        payload: Mapping[str, Any],
        language_id: int | str | None = None,
    ) -> dict[str, Any]:
        """Update a v2 (Nexus) opportunity.

        :param opportunity_id: the platform's own opportunity id (>= 1), not the CRM's
            ``OpportunityID``; a string of digits is accepted.
        :param opportunity_type: ``"Pre"`` or ``"Post"``.
        :param payload: the body fields to set (at least one).
        :param language_id: the language of localized content (the platform's default is 1).
        :return: the full updated record the platform answered.
        """
        document: dict[str, Any] = {"Id": opportunity_id, "opportunityType": opportunity_type, **payload}
        if language_id is not None:
            document["LanguageId"] = language_id
        return self.put_opportunity_request(document)

    def put_opportunity_request(self, request: Mapping[str, Any] | CheckedPutRequest) -> dict[str, Any]:
        """Update a v2 opportunity from one flat document (``Id``, ``opportunityType``,
        ``LanguageId`` and body fields) or an already checked request.

        :param request: the put request; a document is validated against the v2 schema first.
        :return: the full updated record the platform answered.
        """
        return self._perform(protocol.v2_put(self.settings, check_put_request(request)))

    def get_opportunity(
        self,
        opportunity_id: int | str,
        opportunity_type: str | None = None,
        language_id: int | str | None = None,
    ) -> list[dict[str, Any]]:
        """Read a v2 opportunity: both its Pre and Post records when no type is given.

        :param opportunity_id: the platform's own opportunity id.
        :param opportunity_type: ``"Pre"``, ``"Post"`` or ``None`` for both.
        :param language_id: the language of localized content.
        :return: the records, as the platform answered them.
        """
        return self._perform(
            protocol.v2_get(
                self.settings,
                int(opportunity_id),
                opportunity_type,
                None if language_id is None else int(language_id),
            )
        )

    def list_opportunity_page(
        self,
        venue_ids: Sequence[int | str] | None,
        filter: Mapping[str, Any] | None = None,
        *,
        start: int = 0,
        per_page: int = 100,
    ) -> OpportunityPage:
        """Read one page of the v1 opportunity list (``crm?action=getOpportunityList``).

        :param venue_ids: the venues to list, or ``None`` for every venue.
        :param filter: the platform's filter object (``{"name": "x", "stageId__NOT": 3}``); the
            server may ignore it, so check each record yourself.
        :param start: the zero-based offset of the first record.
        :param per_page: the page size to ask for (the server may cap it).
        """
        return self._perform(
            protocol.v1_list(
                self.settings, venue_ids=venue_ids, filter=filter, start=start, per_page=per_page
            )
        )

    def list_opportunities(
        self,
        venue_ids: Sequence[int | str] | None,
        filter: Mapping[str, Any] | None = None,
        per_page: int = 100,
    ) -> Iterator[dict[str, Any]]:
        """Every record of the v1 opportunity list, page after page (a read: retried like any).

        The pages read are bounded by the first page's ``totalResults``; the server may ignore
        ``filter`` (its support is not documented), so check every record you act on.

        :param venue_ids: the venues to list, or ``None`` for every venue.
        :param filter: the platform's filter object.
        :param per_page: the page size to ask for (the server may cap it).
        """
        paging = ListPaging(per_page)
        start: int | None = 0
        while start is not None:
            page = self.list_opportunity_page(venue_ids, filter, start=start, per_page=per_page)
            yield from page.results
            start = paging.next_start(page)

    def find_by_reference(
        self,
        reference: str,
        venue_id: int | str,
        name: str | None = None,
        created_after: float | None = None,
    ) -> dict[str, Any] | None:
        """The one v1 record whose ``externalUrls`` holds ``reference``, or ``None``.

        ``name`` and ``created_after`` narrow the list when the server honours them; each
        candidate is checked here either way.

        :param reference: the external URL ``ref`` (``references.reference_for``).
        :param venue_id: the record's venue.
        :param name: the record's name when it was created, or ``None``.
        :param created_after: epoch seconds before which the record cannot have been created
            (a day of slack is added for clocks), or ``None``.
        :raises OpportunityAmbiguousMatchError: more than one record holds the reference.
        """
        records = [
            record
            for record in self.list_opportunities([venue_id], lookup_filter(name, created_after))
            if holds_reference(record, reference)
        ]
        found = the_one(reference, records)
        return None if found is None else next(r for r in records if int(r["id"]) == found)

    def ping_v1(self) -> None:
        """Send the v1 platform's signed connectivity check (``test?action=ping``)."""
        self._perform(protocol.v1_ping(self.settings))

    def test_connection(self) -> tuple[bool, str]:
        """The UI's Test button: one attempt at each configured platform, changing nothing
        (see :func:`~airflow_opportunity_provider.connection_check.check_connection`)."""
        from airflow_opportunity_provider.connection_check import check_connection

        return check_connection(self)

    # -- the call flow's transport -------------------------------------------------------

    def _perform(self, call: Call[T]) -> T:
        return perform(
            call, self.credentials, self.retry_policy, self._send, self._token, self._logger_for(call)
        )

    def _send(self, request: Request) -> Answer | TransportFault:
        """Send one request over the pooled session; a failure becomes a :class:`TransportFault`."""
        settings = self.settings
        proxy = self._proxy(request.url)
        _TRACKER.sent = False
        try:
            response = self.get_conn().request(
                request.method,
                request.url,
                data=request.body,
                headers=dict(request.headers),
                timeout=(settings.connect_timeout, settings.read_timeout),
                allow_redirects=False,
                proxies={urlsplit(request.url).scheme: proxy} if proxy else {},
                # Given per request as well: a session that trusted the environment would let
                # REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE replace the connection's own setting.
                verify=settings.verify,
                cert=settings.cert,
            )
            return Answer(response.status_code, response.headers, response.content)
        except (
            requests.RequestException,
            urllib3.exceptions.HTTPError,
            http.client.HTTPException,
            OSError,
        ) as error:
            return _transport_fault(error, settings)
        finally:
            _TRACKER.sent = False

    def _token(self, need: NeedToken) -> str:
        """A bearer token: the cached one, or one fetched once for every thread that waits."""
        cache = self.token_cache
        if need.rejected is not None:
            self.log.info("A v2 call answered 401; fetching a new token and repeating the call once")
            cache.invalidate(need.rejected)
        token = cache.current()
        if token is not None:
            return token
        with cache.lock:
            token = cache.current()
            if token is None:
                call = protocol.v2_token(self.settings)
                self.log.info("Fetching a v2 access token from %s", call.address)
                token = cache.store(self._perform(call))
                mask_secret(token)
        return token

    def _logger_for(self, call: Call[Any]) -> Callable[[RetryCallState], None]:
        attempts = self.retry_policy.attempts

        def log_retry(retry_state: RetryCallState) -> None:
            failed = failed_attempt(retry_state)
            wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
            self.log.warning(
                "%s failed (attempt %d of %d): %s; retrying in %.1f s",
                call.what,
                retry_state.attempt_number,
                attempts,
                str(failed.error).rstrip(".") if failed is not None else "an error",
                wait,
            )

        return log_retry

    def with_settings(self, **changes: Any) -> OpportunityHook:
        """A new hook on this one's settings with some of them changed (``max_retries=0``, ...).

        :param changes: fields of :class:`OpportunitySettings` to change.
        """
        return type(self)(self.opportunity_conn_id, settings=dataclasses.replace(self.settings, **changes))
