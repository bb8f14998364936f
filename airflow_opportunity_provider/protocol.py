"""What goes on the wire for each endpoint, and how each answer is read, free of any HTTP client.

The ``requests`` hook and the asyncio bulk client both build their requests and read their
answers here, so the two can never disagree about a path, a header or an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from airflow_opportunity_provider.auth import TokenCache, client_credentials_form
from airflow_opportunity_provider.connection import OpportunitySettings
from airflow_opportunity_provider.errors import (
    OpportunityAuthenticationError,
    OpportunityRequestFailedError,
    v1_error,
    v2_error,
)

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
