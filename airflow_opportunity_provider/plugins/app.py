"""The Opportunity syncs pages and their actions: a FastAPI app the API server mounts.

Every route authenticates the caller with the core API's own security dependencies (the UI's
``_token`` cookie or an ``Authorization: Bearer`` header) and asks Airflow's auth manager for
permission: reading needs DAG read access; a change needs DAG and connection edit access.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode, urlsplit

from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_connection, requires_access_dag
from airflow.api_fastapi.logging.decorators import action_logging
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from airflow_opportunity_provider.plugins import csrf, sync_states
from airflow_opportunity_provider.plugins.config import configured_state_ids
from airflow_opportunity_provider.plugins.render import render

log = logging.getLogger(__name__)

TITLE = "Opportunity syncs"
T = TypeVar("T")


# -- request bodies --------------------------------------------------------------------------------

_Text = Annotated[str, Field(min_length=1, max_length=500)]


class SyncReference(BaseModel):
    """Which sync an action is for."""

    model_config = ConfigDict(extra="forbid")

    state: str = Field(min_length=1, max_length=250, description="~local or a state connection id")
    sync_name: str = Field(min_length=1, max_length=250)
    partition: int | None = Field(default=None, ge=0)


class ResolveBody(SyncReference):
    """Record the CRM id of a row whose create had an unknown outcome."""

    source_key: _Text
    # Unknown outcomes come only from v1 creates, whose ids are whole numbers.
    crm_id: str = Field(pattern=r"^[0-9]{1,20}$", description="the v1 id the CRM gave the record")


class ResendBody(SyncReference):
    """Rows to send again on the next run."""

    source_keys: list[_Text] = Field(min_length=1, max_length=1000)


class RetryCodeBody(SyncReference):
    """An error code whose rejected rows are all to be sent again."""

    code: str = Field(min_length=1, max_length=64)


class ForgetBody(SyncReference):
    """Forget a sync: the number of state rows the person was shown and confirmed."""

    expected_rows: int = Field(ge=0)


class ActionResult(BaseModel):
    """What an action did."""

    message: str
    changed: int
    next: str | None = None


# -- dependencies ----------------------------------------------------------------------------------


def _secret() -> str:
    from airflow.api_fastapi.auth.tokens import get_signing_key

    return get_signing_key("api", "secret_key")


def _own_hosts(request: Request) -> list[str]:
    from airflow.configuration import conf

    hosts = [request.headers.get("host", ""), request.url.netloc]
    base_url = conf.get("api", "base_url", fallback="") or ""
    if base_url:
        hosts.append(urlsplit(base_url).netloc)
    return hosts


async def require_page_token(request: Request, user: GetUserDep) -> None:
    """Refuse a change that another site could have made a logged-in browser send.

    A browser's request must come from this origin (``Origin`` and ``Sec-Fetch-Site``), and a
    request authenticated by the session cookie must carry the token the page was rendered with.
    A client that authenticates only with a bearer token needs no page token: no browser adds
    that header by itself.
    """
    origin = request.headers.get("origin")
    if origin is not None and not csrf.origin_is_allowed(origin, _own_hosts(request)):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Cross-origin changes are refused")
    if not csrf.same_site_fetch(request.headers.get("sec-fetch-site")):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Cross-site changes are refused")
    bearer = request.headers.get("authorization", "").lower().startswith("bearer ")
    if bearer and COOKIE_NAME_JWT_TOKEN not in request.cookies:
        return
    token = request.headers.get(csrf.TOKEN_HEADER, "")
    if not token or not csrf.token_is_valid(token, str(user.get_id()), _secret()):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"The {csrf.TOKEN_HEADER} header is missing or stale: load the page again",
        )


_READ = [Depends(requires_access_dag("GET"))]


def _write(event: str) -> list[Any]:
    # In this order: nothing is logged, or done, for a caller without permission or token.
    return [
        Depends(requires_access_dag("PUT")),
        Depends(requires_access_connection("PUT")),
        Depends(require_page_token),
        Depends(action_logging(event)),
    ]


# -- helpers ---------------------------------------------------------------------------------------


def _prefix(request: Request) -> str:
    # Where the API server mounted this app (with [api] base_url's path in front of it).
    return str(request.scope.get("root_path", "")).rstrip("/")


def _linker(request: Request) -> Callable[..., str]:
    prefix = _prefix(request)

    def link(path: str, **params: Any) -> str:
        query = {name: value for name, value in params.items() if value is not None}
        return prefix + path + (f"?{urlencode(query)}" if query else "")

    return link


def _known_state(state: str) -> str:
    """Only the configured states: a request cannot make the page open any other connection."""
    if state not in configured_state_ids():
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            "No such state: add its connection id to [opportunity_crm] state_conn_ids",
        )
    return state


def _can_edit(user: Any) -> bool:
    from airflow.api_fastapi.app import get_auth_manager

    manager = get_auth_manager()
    return bool(
        manager.is_authorized_dag(method="PUT", user=user)
        and manager.is_authorized_connection(method="PUT", user=user)
    )


def _page_context(request: Request, user: Any) -> dict[str, Any]:
    return {
        "csrf_token": csrf.issue_token(str(user.get_id()), _secret()),
        "csrf_header": csrf.TOKEN_HEADER,
        "link": _linker(request),
        "can_edit": _can_edit(user),
    }


def _detail_or_404(state: str, name: str, partition: int | None, code: str | None = None) -> Any:
    try:
        return sync_states.sync_detail(_known_state(state), name, partition, code=code)
    except sync_states.SyncNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    except sync_states.StateUnavailableError as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error)) from None


def _act(body: SyncReference, action: Callable[[], T]) -> T:
    """Run a change, its errors turned into HTTP answers (the operation logs who made it)."""
    _known_state(body.state)
    try:
        return action()
    except (sync_states.SyncNotFoundError, sync_states.KeyNotFoundError) as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    except (sync_states.ChangedSinceConfirmedError, sync_states.SyncBusyError) as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
    except sync_states.StateUnavailableError as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error)) from None


# -- routes ----------------------------------------------------------------------------------------

router = APIRouter()


@router.get("/", response_class=HTMLResponse, dependencies=_READ, name="syncs")
def syncs_page(request: Request, user: GetUserDep) -> HTMLResponse:
    """Every sync of every configured state."""
    state_ids = configured_state_ids()
    listing = sync_states.list_syncs(state_ids)
    return HTMLResponse(
        render(
            "syncs.html",
            listing=listing,
            locations=[sync_states.location_of(state_id) for state_id in state_ids],
            **_page_context(request, user),
        )
    )


@router.get("/sync", response_class=HTMLResponse, dependencies=_READ, name="sync")
def sync_page(
    request: Request,
    user: GetUserDep,
    state: Annotated[str, Query(min_length=1, max_length=250)],
    name: Annotated[str, Query(min_length=1, max_length=250)],
    partition: Annotated[int | None, Query(ge=0)] = None,
    code: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> HTMLResponse:
    """One sync: its runs, a chart of their outcomes, its unknowns and rejects, and its actions."""
    detail = _detail_or_404(state, name, partition, code)
    return HTMLResponse(render("sync.html", detail=detail, **_page_context(request, user)))


@router.get("/sync/forget", response_class=HTMLResponse, dependencies=_READ, name="forget")
def forget_page(
    request: Request,
    user: GetUserDep,
    state: Annotated[str, Query(min_length=1, max_length=250)],
    name: Annotated[str, Query(min_length=1, max_length=250)],
    partition: Annotated[int | None, Query(ge=0)] = None,
) -> HTMLResponse:
    """The confirmation before forgetting a sync, naming how many rows go."""
    detail = _detail_or_404(state, name, partition)
    return HTMLResponse(render("forget.html", detail=detail, **_page_context(request, user)))


@router.post("/actions/resolve", dependencies=_write("opportunity_syncs_resolve"))
def resolve_action(body: ResolveBody, user: GetUserDep) -> ActionResult:
    """Record the CRM id of a row whose create had an unknown outcome."""
    changed = _act(
        body,
        lambda: sync_states.resolve(
            body.state, body.sync_name, body.partition, body.source_key, body.crm_id, actor=user.get_name()
        ),
    )
    if not changed:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"{body.source_key!r} has no unknown outcome to resolve"
        )
    return ActionResult(message=f"Recorded CRM id {body.crm_id} for {body.source_key}.", changed=changed)


@router.post("/actions/resend", dependencies=_write("opportunity_syncs_resend"))
def resend_action(body: ResendBody, user: GetUserDep) -> ActionResult:
    """Mark rows to be sent again by the next run."""
    result = _act(
        body,
        lambda: sync_states.resend(
            body.state, body.sync_name, body.partition, body.source_keys, actor=user.get_name()
        ),
    )
    changed = result.marked
    skipped = len(set(body.source_keys)) - changed
    note = (
        f" {skipped} were not marked (not in the state, or an unknown outcome to resolve first)."
        if skipped
        else ""
    )
    return ActionResult(message=f"The next run sends {changed} rows again.{note}", changed=changed)


@router.post("/actions/retry-code", dependencies=_write("opportunity_syncs_retry_code"))
def retry_code_action(body: RetryCodeBody, user: GetUserDep) -> ActionResult:
    """Mark every row rejected with one error code to be sent again."""
    changed = _act(
        body,
        lambda: sync_states.retry_code(
            body.state, body.sync_name, body.partition, body.code, actor=user.get_name()
        ),
    )
    return ActionResult(
        message=f"The next run sends the {changed} rejects with code {body.code} again.", changed=changed
    )


@router.post("/actions/forget", dependencies=_write("opportunity_syncs_forget"))
def forget_action(request: Request, body: ForgetBody, user: GetUserDep) -> ActionResult:
    """Delete a sync's state and rejects, once the person confirmed how many rows go."""
    changed = _act(
        body,
        lambda: sync_states.forget(
            body.state,
            body.sync_name,
            body.partition,
            actor=user.get_name(),
            expected_rows=body.expected_rows,
        ),
    )
    return ActionResult(
        message=f"Forgot {body.sync_name}: {changed} rows deleted.",
        changed=changed,
        next=_linker(request)("/"),
    )


def create_app() -> FastAPI:
    """The app the API server mounts under the plugin's URL prefix."""
    app = FastAPI(title=TITLE, docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(router)
    return app
