"""What goes on the wire for each endpoint, and how each answer is read, free of any HTTP client.

The ``requests`` hook and the asyncio bulk client both build their requests and read their
answers here, so the two can never disagree about a path, a header or an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from airflow_opportunity_provider.auth import TokenCache, client_credentials_form, sign_v1_request
from airflow_opportunity_provider.connection import OpportunitySettings
from airflow_opportunity_provider.errors import (
    OpportunityApiError,
    OpportunityAuthenticationError,
    OpportunityRequestFailedError,
    v1_error,
    v2_error,
)
from airflow_opportunity_provider.serialization import dumps_bytes

V1_ADD_OR_UPDATE = "/api/1.0/venue?action=addOrUpdateOpportunity"
V1_PING = "/api/1.0/test?action=ping"
V2_OPPORTUNITIES = "/api/v2/opportunities"
OPPORTUNITY_TYPES = ("Pre", "Post")


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


def read_v1_answer(status: int, headers: Mapping[str, str], body: Any, what: str) -> int:
    """Return the opportunity id from a v1 answer, or raise the error it stands for.

    :param status: the HTTP status.
    :param headers: the answer's headers.
    :param body: the decoded answer body.
    :param what: names the call in messages.
    """
    if status == 200 and isinstance(body, dict) and body.get("success") is True:
        try:
            return int(body["id"])
        except (KeyError, TypeError, ValueError):
            raise OpportunityRequestFailedError(
                f"{what} answered success without a usable id ({body.get('id')!r}).",
                status_code=status,
                platform="v1",
                body=body,
            ) from None
    if status == 200 and not isinstance(body, dict):
        raise OpportunityRequestFailedError(
            f"{what} answered 200 with a body that is not a JSON object.",
            status_code=status,
            platform="v1",
            body=body,
        )
    raise v1_error(status, headers, body, what)


def read_v1_ping(status: int, headers: Mapping[str, str], body: Any) -> None:
    """Raise unless a v1 test ping succeeded."""
    if status == 200 and (not isinstance(body, dict) or body.get("success", True) is not False):
        return
    raise v1_error(status, headers, body, "The v1 test ping")


def read_v2_answer(status: int, headers: Mapping[str, str], body: Any, what: str) -> Any:
    """Return the decoded body of a v2 success, or raise the error the answer stands for.

    :param status: the HTTP status.
    :param headers: the answer's headers.
    :param body: the decoded answer body.
    :param what: names the call in messages.
    """
    if 200 <= status < 300:
        return body
    raise v2_error(status, headers, body, what)


def v2_token_request(settings: OpportunitySettings) -> tuple[str, dict[str, str]]:
    """The token endpoint and the client-credentials form to post to it.

    :param settings: the connection's settings; an error names what is missing.
    """
    client_id, client_secret, token_url = (
        settings.v2_client_id,
        settings.v2_client_secret,
        settings.v2_token_url,
    )
    if not (client_id and client_secret and token_url):
        settings.require_v2()  # raises, naming the missing fields
        raise OpportunityAuthenticationError("The v2 client credentials are incomplete.")
    return token_url, client_credentials_form(client_id, client_secret, settings.v2_scope)


def read_v2_token_answer(
    cache: TokenCache, conn_id: str, status: int, headers: Mapping[str, str], body: Any
) -> str:
    """Keep the token from a token-endpoint answer in ``cache`` and return it, or raise.

    :param cache: where the token is kept.
    :param conn_id: the connection, named in the error.
    :param status: the HTTP status.
    :param headers: the answer's headers.
    :param body: the decoded answer body.
    """
    if status == 200 and isinstance(body, dict) and body.get("access_token"):
        return cache.store(body)
    if status in (400, 401, 403):
        raise OpportunityAuthenticationError(
            f"The v2 token endpoint refused the client credentials of connection {conn_id!r} "
            f"(HTTP {status}); check extra.v2_client_id, extra.v2_client_secret and extra.v2_scope.",
            status_code=status,
            platform="v2",
        )
    return read_v2_answer(status, headers, body, "The v2 token request")  # raises


@dataclass(frozen=True)
class V1Call:
    """One v1 add-or-update call, ready for any HTTP client to send and read.

    :param url: where to POST.
    :param body: the exact body bytes, which the signature covers.
    :param request_string: path and query as sent, which the signature covers.
    :param what: names the call in messages.
    :param idempotent: ``False`` for a create, which must never be repeated on a guess.
    :param api_key: the v1 API key.
    :param api_secret: the v1 API secret.
    """

    url: str
    body: bytes
    request_string: str
    what: str
    idempotent: bool
    api_key: str = field(repr=False)
    api_secret: str = field(repr=False)

    def signed_headers(self) -> dict[str, str]:
        """Headers for one attempt: signed now, since the platform refuses a date over 5 minutes old."""
        return sign_v1_request(self.api_key, self.api_secret, self.request_string, self.body)

    def read(self, status: int, headers: Mapping[str, str], body: Any) -> int:
        """The opportunity id from the answer, or the error it stands for."""
        return read_v1_answer(status, headers, body, self.what)


def prepare_v1_add_or_update(settings: OpportunitySettings, payload: Mapping[str, Any]) -> V1Call:
    """Build the v1 add-or-update call of an already validated payload.

    :param settings: the connection's settings; an error names missing v1 fields.
    :param payload: the opportunity fields.
    """
    base_url, api_key, api_secret = settings.require_v1()
    return V1Call(
        url=base_url.rstrip("/") + V1_ADD_OR_UPDATE,
        body=dumps_bytes(payload),
        request_string=v1_request_string(base_url, V1_ADD_OR_UPDATE),
        what=describe_v1_call(payload),
        idempotent=not is_v1_create(payload),
        api_key=api_key,
        api_secret=api_secret,
    )


def v2_put_what(opportunity_id: int, opportunity_type: str) -> str:
    """Name a v2 put in messages."""
    return f"The v2 put of {opportunity_type} opportunity {opportunity_id}"


def v2_record(answer: Any, what: str) -> dict[str, Any]:
    """The record a v2 put answered, or an error when a 200 came without one.

    :param answer: the decoded success body.
    :param what: names the call in messages.
    """
    if not isinstance(answer, dict):
        raise OpportunityApiError(f"{what} answered 200 without the record.", status_code=200, body=answer)
    return answer
