"""OpportunityHook: one method per endpoint of both platforms, returning parsed values.

It owns one pooled ``requests`` session, signs every v1 attempt afresh, keeps the v2 token
cached, retries what is safe to retry and raises the typed errors of ``errors``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import requests
import urllib3.exceptions
from airflow.providers.common.compat.sdk import BaseHook, mask_secret
from requests.adapters import HTTPAdapter
from tenacity import Retrying, retry_if_exception, stop_after_attempt

from airflow_opportunity_provider import __version__
from airflow_opportunity_provider.auth import TokenCache, sign_v1_request
from airflow_opportunity_provider.connection import (
    CONN_TYPE,
    DEFAULT_CONN_ID,
    OpportunitySettings,
    settings_from_connection,
)
from airflow_opportunity_provider.errors import (
    OpportunityApiError,
    OpportunityAuthenticationError,
    OpportunityConnectionError,
    OpportunityError,
    OpportunityOutcomeUnknownError,
    decode_body,
)
from airflow_opportunity_provider.protocol import (
    V1_PING,
    prepare_v1_add_or_update,
    read_v1_ping,
    read_v2_answer,
    read_v2_token_answer,
    v1_request_string,
    v2_opportunity_path,
    v2_put_what,
    v2_record,
    v2_token_request,
)
from airflow_opportunity_provider.retries import Backoff, is_outcome_unknown, should_retry
from airflow_opportunity_provider.schemas import validate_add_or_update_payload, validate_put_request
from airflow_opportunity_provider.serialization import dumps_bytes

T = TypeVar("T")
Reader = Callable[[int, Mapping[str, str], Any], T]

USER_AGENT = f"airflow-opportunity-provider/{__version__}"
_POOL_SIZE = 32

_NEVER_SENT = (
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.ConnectTimeoutError,
    urllib3.exceptions.NameResolutionError,
    urllib3.exceptions.SSLError,
)


def _never_sent(error: requests.ConnectionError) -> bool:
    """Whether a connection error happened before any byte of the request left this machine."""
    if isinstance(error, requests.ConnectTimeout | requests.exceptions.SSLError):
        return True
    reason = error.args[0] if error.args else None
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the cause
    return isinstance(reason, _NEVER_SENT)


class OpportunityHook(BaseHook):
    """Calls the v1 add-or-update and the v2 put/get opportunity endpoints.

    The connection (type ``opportunity_crm``) holds either platform's settings, or both:
    v1 in host/port/login/password, v2 in ``extra`` (see the README's connection table).

    :param opportunity_conn_id: the Airflow connection to use.
    :param settings: settings to use instead of reading a connection (tests, scripts).
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
    ) -> None:
        super().__init__()
        self.opportunity_conn_id = opportunity_conn_id
        self._settings = settings
        self._session: requests.Session | None = None
        self._token_cache: TokenCache | None = None
        self._setup_lock = threading.Lock()
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
    def session(self) -> requests.Session:
        """One pooled session for every call of this hook, so connections are reused."""
        if self._session is None:
            with self._setup_lock:
                if self._session is None:
                    session = requests.Session()
                    # Retries are ours (they know which calls are idempotent); urllib3 must not
                    # silently resend a request on its own.
                    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=_POOL_SIZE, max_retries=0)
                    session.mount("https://", adapter)
                    session.mount("http://", adapter)
                    session.headers["User-Agent"] = USER_AGENT
                    self._session = session
        return self._session

    @property
    def token_cache(self) -> TokenCache:
        """The v2 token cache (a static token, or client-credential tokens fetched on demand)."""
        if self._token_cache is None:
            with self._setup_lock:
                if self._token_cache is None:
                    self._token_cache = TokenCache(self.settings.v2_token)
        return self._token_cache

    def close(self) -> None:
        """Close the pooled connections."""
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- the endpoints -------------------------------------------------------------------

    def add_or_update_opportunity(self, payload: Mapping[str, Any]) -> int:
        """Create an opportunity (no ``id`` in the payload) or update one (with ``id``), on v1.

        A create whose outcome cannot be known (read timeout, connection dropped after
        sending, 500, 502, 504) is not sent again: it raises
        :class:`~airflow_opportunity_provider.errors.OpportunityOutcomeUnknownError`.

        :param payload: the opportunity fields, validated against the v1 schema before sending.
        :return: the id of the created or updated opportunity.
        """
        validate_add_or_update_payload(payload)
        return self._add_or_update_validated(payload)

    def _add_or_update_validated(self, payload: Mapping[str, Any]) -> int:
        call = prepare_v1_add_or_update(self.settings, payload)
        return self._call(
            "POST",
            call.url,
            body=call.body,
            headers=call.signed_headers,
            read=call.read,
            what=call.what,
            idempotent=call.idempotent,
            payload=payload,
        )

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
        validate_put_request(document)
        return self._put_validated(
            int(opportunity_id), opportunity_type, payload, None if language_id is None else int(language_id)
        )

    def _put_validated(
        self, opportunity_id: int, opportunity_type: str, payload: Mapping[str, Any], language_id: int | None
    ) -> dict[str, Any]:
        path = v2_opportunity_path(opportunity_id, opportunity_type, language_id)
        what = v2_put_what(opportunity_id, opportunity_type)
        return v2_record(self._v2_call("PUT", path, dumps_bytes(payload), what), what)

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
        path = v2_opportunity_path(
            int(opportunity_id), opportunity_type, None if language_id is None else int(language_id)
        )
        answer = self._v2_call("GET", path, None, f"The v2 get of opportunity {opportunity_id}")
        if isinstance(answer, dict):
            return [answer]
        return list(answer or [])

    def test_connection(self) -> tuple[bool, str]:
        """Check every platform the connection configures, changing nothing.

        v1 sends the platform's signed test ping; v2 obtains a token (client credentials)
        and reads an opportunity, where "not found" still proves the token is accepted.
        """
        results = []
        try:
            settings = self.settings
            if not settings.has_v1 and not settings.has_v2:
                return False, (
                    "The connection configures neither platform: fill in host, login and password "
                    "for v1, or extra.v2_base_url with a token or client credentials for v2."
                )
            if settings.has_v1:
                self.ping_v1()
                results.append("v1 signed ping accepted")
            if settings.has_v2:
                try:
                    self.get_opportunity(1)
                except OpportunityApiError as error:
                    if error.status_code != 404:
                        raise
                results.append("v2 token accepted")
        except OpportunityError as error:
            return False, str(error)
        except Exception as error:
            return False, f"{type(error).__name__}: {error}"
        return True, "; ".join(results)

    def ping_v1(self) -> None:
        """Send the v1 platform's signed connectivity check (``test?action=ping``)."""
        base_url, api_key, api_secret = self.settings.require_v1()
        body = b"{}"
        request_string = v1_request_string(base_url, V1_PING)
        self._call(
            "POST",
            base_url.rstrip("/") + V1_PING,
            body=body,
            headers=lambda: sign_v1_request(api_key, api_secret, request_string, body),
            read=read_v1_ping,
            what="The v1 test ping",
            idempotent=True,
        )

    # -- v2 authentication ---------------------------------------------------------------

    def _bearer_token(self) -> str:
        cache = self.token_cache
        token = cache.current()
        if token is not None:
            return token
        with cache.lock:
            token = cache.current()
            if token is None:
                token = self._fetch_token(cache)
        return token

    def _fetch_token(self, cache: TokenCache) -> str:
        settings = self.settings
        token_url, form = v2_token_request(settings)

        def read(status: int, headers: Mapping[str, str], body: Any) -> str:
            token = read_v2_token_answer(cache, settings.conn_id, status, headers, body)
            mask_secret(token)
            return token

        self.log.info("Fetching a v2 access token from %s", token_url)
        return self._call(
            "POST",
            token_url,
            body=None,
            form=form,
            headers=dict,
            read=read,
            what="The v2 token request",
            idempotent=True,
        )

    def _v2_call(self, method: str, path: str, body: bytes | None, what: str) -> Any:
        base_url = self.settings.require_v2()
        url = base_url + path
        sent_token: dict[str, str] = {}

        def headers() -> dict[str, str]:
            token = self._bearer_token()
            sent_token["value"] = token
            result = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            if body is not None:
                result["Content-Type"] = "application/json"
            return result

        def read(status: int, answer_headers: Mapping[str, str], answer: Any) -> Any:
            return read_v2_answer(status, answer_headers, answer, what)

        def call() -> Any:
            return self._call(method, url, body=body, headers=headers, read=read, what=what, idempotent=True)

        try:
            return call()
        except OpportunityAuthenticationError as error:
            # A token can be revoked or expire early: fetch a new one once and repeat once.
            if error.status_code != 401 or self.token_cache.is_static:
                raise
            self.log.info("%s answered 401; fetching a new token and repeating it once", what)
            self.token_cache.invalidate(sent_token.get("value"))
            return call()

    # -- sending with retries ------------------------------------------------------------

    def _call(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None,
        headers: Callable[[], dict[str, str]],
        read: Reader[T],
        what: str,
        idempotent: bool,
        payload: Mapping[str, Any] | None = None,
        form: Mapping[str, str] | None = None,
    ) -> T:
        """Send one logical call: each attempt gets fresh headers (a new v1 date and signature)."""
        settings = self.settings
        timeout = (settings.connect_timeout, settings.read_timeout)

        def attempt() -> T:
            try:
                try:
                    response = self.session.request(
                        method,
                        url,
                        data=body if form is None else form,
                        headers=headers(),
                        timeout=timeout,
                        verify=settings.verify,
                    )
                except requests.ReadTimeout:
                    raise OpportunityConnectionError(
                        f"{what} got no answer within {settings.read_timeout:g} s.", sent=True
                    ) from None
                except requests.ConnectionError as error:
                    sent = not _never_sent(error)
                    stage = "lost its connection after sending" if sent else "could not connect"
                    raise OpportunityConnectionError(
                        f"{what} {stage} ({type(error).__name__}).", sent=sent
                    ) from None
                return read(response.status_code, response.headers, decode_body(response.content))
            except OpportunityError as error:
                if not idempotent and payload is not None and is_outcome_unknown(error):
                    raise OpportunityOutcomeUnknownError(
                        payload, str(error), status_code=getattr(error, "status_code", None)
                    ) from None
                raise

        def log_retry(retry_state: Any) -> None:
            error = retry_state.outcome.exception()
            wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
            self.log.warning(
                "%s failed (attempt %d of %d): %s; retrying in %.1f s",
                what,
                retry_state.attempt_number,
                settings.max_retries + 1,
                error,
                wait,
            )

        retrying = Retrying(
            stop=stop_after_attempt(settings.max_retries + 1),
            wait=self.backoff,
            retry=retry_if_exception(lambda error: should_retry(error, idempotent)),
            before_sleep=log_retry,
            reraise=True,
        )
        return retrying(attempt)
