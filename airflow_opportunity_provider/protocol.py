"""One description per endpoint call of both platforms, free of any HTTP client.

A :class:`Call` says where a request goes, what it carries, how it is authenticated, whether it
may be sent twice, how its success answer reads and which error an error answer stands for.
``flow`` decides from it what every answer means; the two HTTP clients only send bytes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote_plus, urlencode, urlsplit

from airflow_opportunity_provider.answers import token_error, v1_error, v2_error
from airflow_opportunity_provider.auth import client_credentials_form
from airflow_opportunity_provider.connection import (
    CLIENT_ID_FIELD,
    CLIENT_SECRET_FIELD,
    PASSWORD_FIELD,
    OpportunitySettings,
    check_credential,
)
from airflow_opportunity_provider.errors import (
    V2,
    OpportunityApiError,
    OpportunityAuthenticationError,
)
from airflow_opportunity_provider.schemas import (
    CheckedPutRequest,
    CheckedV1Payload,
    check_add_or_update_payload,
)
from airflow_opportunity_provider.serialization import dumps_bytes

T = TypeVar("T")

V1_ADD_OR_UPDATE = "/api/1.0/venue?action=addOrUpdateOpportunity"
V1_PING = "/api/1.0/test?action=ping"
V1_LIST = "/api/1.0/crm?action=getOpportunityList"
V2_OPPORTUNITIES = "/api/v2/opportunities"
OPPORTUNITY_TYPES = ("Pre", "Post")
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


class Auth(enum.Enum):
    """How a call is authenticated."""

    NONE = "none"
    #: Signed with HMAC-SHA1 at the moment each attempt is sent (v1).
    V1_SIGNED = "v1_signed"
    #: An OAuth2 bearer token from the token cache (v2).
    BEARER = "bearer"


class AnswerRefusal(Exception):
    """A 2xx answer whose body says the platform did not do it (v1 ``success: false``).

    :param error: the error the body stands for.
    """

    def __init__(self, error: OpportunityApiError) -> None:
        super().__init__(str(error))
        self.error = error


class UnusableAnswer(Exception):
    """A 2xx answer that is not the platform's answer (no id, not the expected shape).

    :param reason: what is wrong with it, without quoting the body.
    """


@dataclass(frozen=True)
class Call(Generic[T]):
    """One endpoint call, ready for either HTTP client to send and for ``flow`` to read.

    :param endpoint: which endpoint, for counting and tests (``"v1_add_or_update"``, ...).
    :param method: the HTTP method.
    :param url: where the request goes.
    :param what: names the call in messages ("The v1 create of opportunity 'X'").
    :param auth: how each attempt is authenticated.
    :param idempotent: ``False`` for a v1 create, which must never be repeated on a guess.
    :param read_success: the value of a 2xx answer's decoded JSON; raises :class:`AnswerRefusal`
        or :class:`UnusableAnswer`.
    :param read_error: the error an error answer stands for, from status, headers and body.
    :param body: the exact body bytes (which a v1 signature covers).
    :param content_type: the body's ``Content-Type``.
    :param request_string: for v1, the path and query as sent, which the signature covers.
    :param payload: the fields of a v1 create, carried by an outcome-unknown error.
    :param secrets: secrets the body holds (a client secret), hidden from every message.
    :param extra_headers: the connection's ``extra.headers``, sent with every attempt.
    :param read_not_json: the error a 2xx answer that is not JSON stands for, from its status and
        content type, when this call knows what such an answer means; ``None`` leaves it an
        answer that is not the platform's (its outcome unknown).
    """

    endpoint: str
    method: str
    url: str
    what: str
    auth: Auth
    idempotent: bool
    read_success: Callable[[Any], T] = field(repr=False)
    read_error: Callable[[int, Mapping[str, str], Any], OpportunityApiError] = field(repr=False)
    body: bytes | None = field(default=None, repr=False)
    content_type: str | None = None
    request_string: str = ""
    payload: Mapping[str, Any] | None = field(default=None, repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)
    extra_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    read_not_json: Callable[[int, str], OpportunityApiError] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """The scheme, host and port the call goes to, for messages (never a path's query or userinfo)."""
        return origin_of(self.url)


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL, without user info, path or query.

    :param url: any absolute URL.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}" if parts.scheme else host + port


def v1_request_string(base_url: str, request_string: str) -> str:
    """The path and query as sent, which is what the v1 signature covers.

    A base URL with a path prefix (a proxy mount) puts that prefix in front of the API path.

    :param base_url: the v1 base URL.
    :param request_string: the API path and query.
    """
    _, _, rest = base_url.partition("://")
    _, slash, prefix = rest.partition("/")
    return (f"/{prefix.rstrip('/')}" if slash and prefix else "") + request_string


def v2_opportunity_path(
    opportunity_id: int, opportunity_type: str | None = None, language_id: int | None = None
) -> str:
    """The v2 path and query of one opportunity.

    :param opportunity_id: the platform's own opportunity id (>= 1).
    :param opportunity_type: ``"Pre"`` or ``"Post"``; a GET may leave it out for both.
    :param language_id: the language of localized content.
    """
    query: dict[str, Any] = {}
    if opportunity_type is not None:
        query["opportunityType"] = opportunity_type
    if language_id is not None:
        query["LanguageId"] = language_id
    path = f"{V2_OPPORTUNITIES}/{int(opportunity_id)}"
    return f"{path}?{urlencode(query)}" if query else path


def describe_v1_call(payload: Mapping[str, Any]) -> str:
    """Name a v1 call in messages: an update by its id, a create by its name."""
    if payload.get("id") not in (None, ""):
        return f"The v1 update of opportunity {payload.get('id')}"
    return f"The v1 create of opportunity {payload.get('name')!r}"


def is_v1_create(payload: Mapping[str, Any]) -> bool:
    """A v1 call without ``id`` creates a record, so it is not safe to repeat."""
    return payload.get("id") in (None, "")


def usable_id(value: Any) -> int | None:
    """An opportunity id as the platform may write it (an integer >= 1 or its digits), else ``None``.

    :param value: the ``id`` of an answer.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 1 else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
        return number if number >= 1 else None
    return None


# -- v1 --------------------------------------------------------------------------------------


def _v1_success(body: Any, what: str) -> dict[str, Any]:
    """The body of a v1 success, or the refusal or unusable answer it is."""
    if not isinstance(body, dict):
        raise UnusableAnswer("its body is JSON but not an object")
    success = body.get("success")
    if success is True:
        return body
    if success is False or "errorCode" in body or "specificCode" in body:
        raise AnswerRefusal(v1_error(200, {}, body, what))
    raise UnusableAnswer("its body has no `success` field")


def _v1_call(
    settings: OpportunitySettings,
    endpoint: str,
    path: str,
    body: bytes,
    what: str,
    read_success: Callable[[Any], T],
    *,
    idempotent: bool,
    payload: Mapping[str, Any] | None = None,
) -> Call[T]:
    base_url, _, api_secret = settings.require_v1()
    # Settings made in code never passed the connection's checks; the key is checked as a header.
    check_credential(settings.conn_id, PASSWORD_FIELD, api_secret)

    def read_error(status: int, headers: Mapping[str, str], answer: Any) -> OpportunityApiError:
        return v1_error(status, headers, answer, what)

    return Call(
        endpoint=endpoint,
        method="POST",
        url=base_url.rstrip("/") + path,
        what=what,
        auth=Auth.V1_SIGNED,
        idempotent=idempotent,
        read_success=read_success,
        read_error=read_error,
        body=body,
        content_type=JSON,
        request_string=v1_request_string(base_url, path),
        payload=payload,
        extra_headers=settings.headers,
    )


def v1_add_or_update(
    settings: OpportunitySettings, payload: Mapping[str, Any] | CheckedV1Payload
) -> Call[int]:
    """The v1 ``addOrUpdateOpportunity`` call: a create without ``id``, an update with it.

    Its value is the opportunity id of a success answer ``{"success": true, "id": 755}``; a
    success without a usable id is not the platform's answer.

    :param settings: the connection's settings; an error names missing v1 fields.
    :param payload: the opportunity fields (checked here unless already checked).
    """
    checked = check_add_or_update_payload(payload)
    fields = checked.fields
    creates = checked.creates
    what = describe_v1_call(fields)

    def read(answer: Any) -> int:
        body = _v1_success(answer, what)
        opportunity_id = usable_id(body.get("id"))
        if opportunity_id is None:
            raise UnusableAnswer("it says success but carries no usable opportunity id")
        return opportunity_id

    return _v1_call(
        settings,
        "v1_add_or_update",
        V1_ADD_OR_UPDATE,
        dumps_bytes(fields),
        what,
        read,
        idempotent=not creates,
        payload=fields if creates else None,
    )


def v1_ping(settings: OpportunitySettings) -> Call[None]:
    """The v1 platform's signed connectivity check (``test?action=ping``), which changes nothing.

    :param settings: the connection's settings.
    """

    what = "The v1 test ping"

    def read(answer: Any) -> None:
        if isinstance(answer, dict) and answer.get("success") is False:
            raise AnswerRefusal(v1_error(200, {}, answer, what))

    return _v1_call(settings, "v1_ping", V1_PING, b"{}", what, read, idempotent=True)


@dataclass(frozen=True)
class OpportunityPage:
    """One page of the v1 opportunity list.

    :param total: ``meta.totalResults``: how many records match in all.
    :param start: ``meta.start``: the offset of the first record of this page.
    :param per_page: ``meta.perPage``: the page size the server used (it may cap what was asked).
    :param results: the records of this page.
    """

    total: int
    start: int
    per_page: int
    results: list[dict[str, Any]]


def v1_list(
    settings: OpportunitySettings,
    *,
    venue_ids: Sequence[int | str] | None,
    filter: Mapping[str, Any] | None = None,
    start: int = 0,
    per_page: int = 100,
) -> Call[OpportunityPage]:
    """One page of ``crm?action=getOpportunityList``: a read, so it may be repeated.

    :param settings: the connection's settings.
    :param venue_ids: the venues to list (``None`` for every venue).
    :param filter: the platform's filter object (``{"name__BEGINS": "x"}``).
    :param start: the zero-based offset of the first record.
    :param per_page: how many records to ask for (the server may cap it).
    """
    request: dict[str, Any] = {"perPage": per_page, "start": start}
    if venue_ids is not None:
        request["venueIds"] = list(venue_ids)
    if filter:
        request["filter"] = dict(filter)
    what = f"The v1 opportunity list (from record {start})"

    def read(answer: Any) -> OpportunityPage:
        if not isinstance(answer, dict):
            raise UnusableAnswer("its body is JSON but not an object")
        if answer.get("success") is False or "errorCode" in answer:
            raise AnswerRefusal(v1_error(200, {}, answer, what))
        meta, results = answer.get("meta"), answer.get("results")
        if not isinstance(meta, dict) or not isinstance(results, list):
            raise UnusableAnswer("its body has no `meta` object and `results` list")
        if not all(isinstance(record, dict) for record in results):
            raise UnusableAnswer("its `results` hold something that is not a record")
        try:
            total = int(meta.get("totalResults", len(results)))
            first = int(meta.get("start", start))
            size = int(meta.get("perPage", per_page))
        except (TypeError, ValueError):
            raise UnusableAnswer("its `meta` holds counts that are not numbers") from None
        return OpportunityPage(total, first, size, results)

    return _v1_call(
        settings,
        "v1_list",
        V1_LIST,
        dumps_bytes(request),
        what,
        read,
        idempotent=True,
    )


# -- v2 --------------------------------------------------------------------------------------


def v2_put_what(opportunity_id: int, opportunity_type: str) -> str:
    """Name a v2 put in messages."""
    return f"The v2 put of {opportunity_type} opportunity {opportunity_id}"


def _v2_error_reader(what: str) -> Callable[[int, Mapping[str, str], Any], OpportunityApiError]:
    def read_error(status: int, headers: Mapping[str, str], answer: Any) -> OpportunityApiError:
        return v2_error(status, headers, answer, what)

    return read_error


def v2_put(settings: OpportunitySettings, request: CheckedPutRequest) -> Call[dict[str, Any]]:
    """The v2 ``PUT /api/v2/opportunities/{Id}`` call: an update, idempotent.

    Its value is the full record the platform answered.

    :param settings: the connection's settings; an error names missing v2 fields.
    :param request: the checked put request.
    """
    base_url = settings.require_v2()
    what = v2_put_what(request.opportunity_id, request.opportunity_type)

    def read(answer: Any) -> dict[str, Any]:
        if not isinstance(answer, dict):
            raise UnusableAnswer("its body is not the updated record")
        return answer

    path = v2_opportunity_path(request.opportunity_id, request.opportunity_type, request.language_id)
    return Call(
        endpoint="v2_put",
        method="PUT",
        url=base_url + path,
        what=what,
        auth=Auth.BEARER,
        idempotent=True,
        read_success=read,
        read_error=_v2_error_reader(what),
        body=dumps_bytes(request.body),
        content_type=JSON,
        extra_headers=settings.headers,
    )


def v2_get(
    settings: OpportunitySettings,
    opportunity_id: int,
    opportunity_type: str | None = None,
    language_id: int | None = None,
) -> Call[list[dict[str, Any]]]:
    """The v2 ``GET`` of one opportunity: its records (both types when none is given).

    :param settings: the connection's settings.
    :param opportunity_id: the platform's own opportunity id.
    :param opportunity_type: ``"Pre"``, ``"Post"`` or ``None`` for both.
    :param language_id: the language of localized content.
    """
    base_url = settings.require_v2()
    what = f"The v2 get of opportunity {opportunity_id}"

    def read(answer: Any) -> list[dict[str, Any]]:
        records = [answer] if isinstance(answer, dict) else answer
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise UnusableAnswer("its body is not a list of records")
        return records

    return Call(
        endpoint="v2_get",
        method="GET",
        url=base_url + v2_opportunity_path(opportunity_id, opportunity_type, language_id),
        what=what,
        auth=Auth.BEARER,
        idempotent=True,
        read_success=read,
        read_error=_v2_error_reader(what),
        extra_headers=settings.headers,
    )


def v2_token(settings: OpportunitySettings) -> Call[Mapping[str, Any]]:
    """The OAuth2 client-credentials token request; its value is the token answer to cache.

    A 200 without a non-empty string ``access_token`` is an authentication error, never a token.

    :param settings: the connection's settings; an error names missing credential fields.
    """
    client_id, client_secret, token_url = (
        settings.v2_client_id,
        settings.v2_client_secret,
        settings.v2_token_url,
    )
    if not (client_id and client_secret and token_url):
        settings.require_v2()  # raises, naming the missing fields
        raise OpportunityAuthenticationError("The v2 client credentials are incomplete.")
    check_credential(settings.conn_id, CLIENT_ID_FIELD, client_id)
    check_credential(settings.conn_id, CLIENT_SECRET_FIELD, client_secret)
    what = "The v2 token request"
    host = origin_of(token_url)

    def read(answer: Any) -> Mapping[str, Any]:
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if isinstance(token, str) and token.strip():
            return answer
        keys = ", ".join(sorted(str(key) for key in answer)) if isinstance(answer, dict) else "none"
        raise AnswerRefusal(
            OpportunityAuthenticationError(
                f"The v2 token endpoint at {host} answered without a usable access_token (the answer's "
                f"fields: {keys}); check that extra.v2_oauth_url is the OAuth2 token endpoint.",
                status_code=200,
                platform=V2,
            )
        )

    def read_error(status: int, headers: Mapping[str, str], answer: Any) -> OpportunityApiError:
        return token_error(status, headers, answer, what, host)

    def read_not_json(status: int, content_type: str) -> OpportunityApiError:
        # A sign-in page or a proxy's notice, not a token endpoint: asking again brings the same page.
        return OpportunityAuthenticationError(
            f"The v2 token endpoint at {host} answered HTTP {status} with a body that is not JSON "
            f"({content_type}) and so no access_token; check that extra.v2_oauth_url is the OAuth2 token "
            "endpoint.",
            status_code=status,
            platform=V2,
        )

    return Call(
        endpoint="v2_token",
        method="POST",
        url=token_url,
        what=what,
        auth=Auth.NONE,
        # Asking for a token twice only issues two tokens.
        idempotent=True,
        read_success=read,
        read_error=read_error,
        body=urlencode(client_credentials_form(client_id, client_secret, settings.v2_scope)).encode(),
        content_type=FORM,
        # The body carries the secret form-encoded: hide both spellings.
        secrets=(client_secret, quote_plus(client_secret)),
        extra_headers=settings.headers,
        read_not_json=read_not_json,
    )
