"""The mock CRM HTTP server: the v1 signed API, the v2 OAuth2 API and ``/_mock/*`` inspection,
built on ``aiohttp.web`` so one core answers thousands of small requests a second.

:class:`MockCrmServer` runs in a background thread for in-process tests (``start()``/``stop()``
or ``running()``) or in the foreground for the command line (``serve()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from aiohttp import BasicAuth, web

from airflow_opportunity_provider.mock_crm import v1, v1_list, v2
from airflow_opportunity_provider.mock_crm.config import MockCrmConfig
from airflow_opportunity_provider.mock_crm.faults import FaultConfig, FaultInjector
from airflow_opportunity_provider.mock_crm.store import Counters, OpportunityStore
from airflow_opportunity_provider.mock_crm.tokens import TokenRegistry

V1_OPPORTUNITY_ACTION = "addOrUpdateOpportunity"
V1_LIST_ACTION = "getOpportunityList"
V1_PING_ACTION = "ping"
TOKEN_PATH = "/oauth/token"
V2_OPPORTUNITY_PATH = "/api/v2/opportunities/{id}"

# What a handler gives back: the answer, the named events to count, and whether the answer is
# a stored write that a drop_after_commit fault may swallow.
_Outcome = tuple[web.Response, tuple[str, ...], bool]
_Handler = Callable[[web.Request, FaultInjector], Awaitable[_Outcome]]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(), status=status, headers=headers, content_type="application/json"
    )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class MockCrmServer:
    """A mock of both opportunity platforms, faithful to their signatures, rules and error answers.

    Not started when built: call :meth:`start` (background thread, own event loop) or use
    :meth:`running`. ``store`` and ``counters`` can be read from any thread.

    Endpoints: ``POST /api/1.0/venue?action=addOrUpdateOpportunity``,
    ``POST /api/1.0/crm?action=getOpportunityList`` and ``POST /api/1.0/test?action=ping``
    (IWS-signed); ``POST /oauth/token`` (client credentials); ``PUT`` and
    ``GET /api/v2/opportunities/{Id}`` (bearer token); and, without authentication,
    ``GET /_mock/opportunities``, ``POST /_mock/v1/opportunities`` (seed records),
    ``DELETE /_mock/v1/opportunities/{id}``, ``GET /_mock/references``, ``GET /_mock/counters``,
    ``POST /_mock/reset``, ``GET``/``POST /_mock/faults``, ``POST /_mock/expire-tokens``,
    ``GET /_mock/health`` and ``GET /_mock/connection`` (the caller's peer address and whether
    TCP_NODELAY is set).

    :param config: credentials, choice lists, seed data and initial faults.
    :param clock: the time v1 records are dated with (``createdDate``, ``modifiedDate``); UTC now
        when omitted. Request signatures are always checked against the real clock.
    """

    def __init__(
        self, config: MockCrmConfig | None = None, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.config = config or MockCrmConfig()
        self.store = OpportunityStore(self.config.first_v1_id, self.config.v2_seed_ids, clock)
        self.counters = Counters()
        self.tokens = TokenRegistry(self.config.static_token)
        self._injector = FaultInjector(self.config.faults)
        self._credentials = {self.config.api_key: self.config.api_secret}
        self._host = "127.0.0.1"
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._v1_opportunity_endpoint = self._api("v1_opportunity", "v1", self._v1_opportunity)
        self._v1_list_endpoint = self._api("v1_list", "v1", self._v1_list)
        self._v1_ping_endpoint = self._api("v1_ping", "v1", self._v1_ping)
        self._token_with_faults = self._api("oauth_token", "oauth", self._token_inner)

    def __repr__(self) -> str:
        return f"MockCrmServer(base_url={self.base_url if self._port else None!r}, config={self.config!r})"

    # Control, from any thread

    @property
    def faults(self) -> FaultConfig:
        """The faults in force."""
        return self._injector.faults

    def set_faults(self, faults: FaultConfig) -> None:
        """Replace the faults in force; takes effect for the next request (thread-safe).

        The random draws restart from ``faults.seed`` and the rate-limit bucket starts full.

        :param faults: the new faults; ``FaultConfig()`` turns every fault off.
        """
        # One reference swap: the event loop reads the injector once per request.
        self._injector = FaultInjector(faults)

    def expire_tokens_now(self) -> int:
        """Expire every issued v2 token, so the next call with one gets 401; returns how many.

        The static token stays valid.
        """
        return self.tokens.expire_all()

    def seed_v1_records(self, records: Sequence[Mapping[str, Any]]) -> list[int]:
        """Store v1 records as if entered by hand in the CRM: not counted, never faulted.

        Each needs ``venueId`` and may carry ``id``, ``createdDate``, ``modifiedDate`` and
        ``externalUrls`` (see ``OpportunityStore.v1_seed``). All are stored, or none.

        :param records: the records, as JSON objects.
        :return: the id of each record, in order.
        :raises ValueError: naming the first record that cannot be stored.
        """
        return self.store.v1_seed(records)

    def delete_v1_record(self, opportunity_id: int) -> bool:
        """Delete one v1 record, as a salesperson might; a later update of it answers 24222.

        :param opportunity_id: the v1 id.
        :return: ``False`` when there was no such record.
        """
        return self.store.v1_delete(opportunity_id)

    def reset(self) -> None:
        """Forget v1 records, zero the counters, put v2 records back to their seed and restore the
        faults the server was configured with (``config.faults``, all off by default).

        Issued tokens stay valid.
        """
        self.store.reset()
        self.counters.reset()
        self.set_faults(self.config.faults)

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The port the server listens on (the real one when started with port 0)."""
        if self._port is None:
            raise RuntimeError("The mock CRM server is not started; call start() first")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``, the base URL both platforms' clients point at."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    # Life cycle

    def start(self, host: str = "127.0.0.1", port: int = 0) -> MockCrmServer:
        """Start serving in a background thread with its own event loop; return once it listens.

        :param host: the address to listen on.
        :param port: the port; 0 picks a free one (read it from :attr:`port` / :attr:`base_url`).
        :raises OSError: when the address cannot be bound.
        """
        if self._thread is not None:
            raise RuntimeError("The mock CRM server is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open(host, port, access_log=False))
            except BaseException as error:  # handed to the starting thread
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._close())
                loop.close()

        thread = threading.Thread(target=run, name="mock-crm-server", daemon=True)
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]
        self._loop = loop
        self._thread = thread
        return self

    def stop(self) -> None:
        """Stop a server started with :meth:`start` and wait for its thread; safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = None
        self._thread = None
        self._port = None

    @contextlib.contextmanager
    def running(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[MockCrmServer]:
        """Start the server for the duration of a ``with`` block.

        :param host: the address to listen on.
        :param port: the port; 0 picks a free one.
        """
        self.start(host, port)
        try:
            yield self
        finally:
            self.stop()

    async def serve(
        self,
        host: str,
        port: int,
        stop: asyncio.Event,
        *,
        access_log: bool = False,
        on_ready: Callable[[str], None] | None = None,
    ) -> None:
        """Serve on the current event loop until ``stop`` is set (the command line's way to run).

        :param host: the address to listen on.
        :param port: the port; 0 picks a free one.
        :param stop: set it to shut the server down.
        :param access_log: log one line per request to the ``aiohttp.access`` logger.
        :param on_ready: called with :attr:`base_url` once the server listens.
        """
        await self._open(host, port, access_log=access_log)
        try:
            if on_ready is not None:
                on_ready(self.base_url)
            await stop.wait()
        finally:
            await self._close()
            self._port = None

    async def _open(self, host: str, port: int, *, access_log: bool) -> None:
        sock = socket.create_server((host, port), backlog=1024)
        try:
            runner = web.AppRunner(
                self.make_app(),
                access_log=logging.getLogger("aiohttp.access") if access_log else None,
                shutdown_timeout=1.0,
            )
            await runner.setup()
            await web.SockSite(runner, sock, backlog=1024).start()
        except BaseException:
            sock.close()
            raise
        self._runner = runner
        self._host = host
        self._port = sock.getsockname()[1]

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # The application

    def make_app(self) -> web.Application:
        """The ``aiohttp`` application with every route (useful with ``aiohttp``'s test client)."""
        app = web.Application()
        router = app.router
        router.add_route("*", "/api/1.0/{namespace}", self._v1_dispatch)
        router.add_post(TOKEN_PATH, self._token)
        router.add_put(V2_OPPORTUNITY_PATH, self._api("v2_put", "v2", self._v2_put))
        router.add_get(V2_OPPORTUNITY_PATH, self._api("v2_get", "v2", self._v2_get), allow_head=False)
        router.add_get("/_mock/opportunities", self._inspect_opportunities)
        router.add_post("/_mock/v1/opportunities", self._inspect_seed_v1)
        router.add_delete("/_mock/v1/opportunities/{id}", self._inspect_delete_v1)
        router.add_get("/_mock/references", self._inspect_references)
        router.add_get("/_mock/counters", self._inspect_counters)
        router.add_post("/_mock/reset", self._inspect_reset)
        router.add_get("/_mock/faults", self._inspect_faults)
        router.add_post("/_mock/faults", self._inspect_set_faults)
        router.add_post("/_mock/expire-tokens", self._inspect_expire_tokens)
        router.add_get("/_mock/health", self._inspect_health)
        router.add_get("/_mock/connection", self._inspect_connection)
        router.add_route("*", "/{tail:.*}", self._unknown_path)
        return app

    def _api(
        self, endpoint: str, platform: str, handler: _Handler
    ) -> Callable[[web.Request], Awaitable[Any]]:
        """Wrap an API handler with the faults and the counting every API request goes through."""

        async def handle(request: web.Request) -> web.StreamResponse:
            self.counters.enter()
            try:
                return await answer(request)
            finally:
                self.counters.leave()

        async def answer(request: web.Request) -> web.StreamResponse:
            injector = self._injector
            # Both refusals are decided on arrival, before anything is processed or stored.
            retry_after = injector.over_rate_limit()
            status = None if retry_after is not None else injector.injected_status()
            if injector.latency > 0:
                await asyncio.sleep(injector.latency)
            if retry_after is not None:
                self.counters.record(endpoint, 429, "rate_limited", "rejected_by_fault")
                return self._fault_answer(platform, 429, {"Retry-After": str(retry_after)})
            if status is not None:
                self.counters.record(endpoint, status, "rejected_by_fault")
                return self._fault_answer(platform, status, injector.retry_after_header(status))
            response, events, is_write = await handler(request, injector)
            if is_write and response.status == 200 and injector.drop_after_commit():
                self.counters.record(endpoint, "dropped", *events, "dropped_after_commit")
                transport = request.transport
                if transport is not None:
                    transport.abort()
                return response  # aiohttp finds the connection gone and writes nothing
            self.counters.record(endpoint, response.status, *events)
            return response

        return handle

    def _fault_answer(self, platform: str, status: int, headers: dict[str, str]) -> web.Response:
        phrase = _phrase(status)
        if platform == "v1":
            return _json({"errorCode": status, "message": phrase}, status, headers)
        if platform == "oauth":
            return _json({"error": "temporarily_unavailable", "error_description": phrase}, status, headers)
        if status == 401:
            headers = {**headers, "WWW-Authenticate": "Bearer"}
            return web.Response(text=v2.UNAUTHORIZED_MESSAGE, status=401, headers=headers)
        return _json({"Message": phrase}, status, headers)

    # v1

    async def _v1_dispatch(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        action = request.query.get("action")
        if request.method == "POST" and namespace == "venue" and action == V1_OPPORTUNITY_ACTION:
            return await self._v1_opportunity_endpoint(request)
        if request.method == "POST" and namespace == "crm" and action == V1_LIST_ACTION:
            return await self._v1_list_endpoint(request)
        if request.method == "POST" and namespace == "test" and action == V1_PING_ACTION:
            return await self._v1_ping_endpoint(request)
        if request.method != "POST":
            status, message = 405, "Method Not Allowed"
        else:
            status, message = 404, f"Unknown action '{namespace}?action={action}'"
        self.counters.record("v1_other", status)
        return _json({"errorCode": status, "message": message}, status)

    def _v1_verify(self, request: web.Request, body: bytes) -> None:
        v1.verify_signature(
            request.method,
            request.raw_path,
            request.headers,
            body,
            self._credentials,
            datetime.now(UTC),
            self.config.max_clock_skew,
        )

    async def _v1_opportunity(self, request: web.Request, injector: FaultInjector) -> _Outcome:
        body = await request.read()
        try:
            self._v1_verify(request, body)
        except v1.V1Refusal as refusal:
            return _json(refusal.body(), refusal.status), ("auth_failures",), False
        try:
            write = v1.parse_add_or_update(body, injector.faults.reject_names)
            if injector.unavailable(write.fields.get("name")):
                answer = self._fault_answer("v1", 503, injector.retry_after_header(503))
                return answer, ("rejected_by_fault",), False
            if write.opportunity_id is None:
                new_id = self.store.v1_create(write)
                return _json({"success": True, "id": new_id}), ("v1_creates",), True
            if not self.store.v1_update(write.opportunity_id, write):
                raise v1.not_found(write.opportunity_id)
            return _json({"success": True, "id": write.opportunity_id}), ("v1_updates",), True
        except v1.V1Refusal as refusal:
            return _json(refusal.body(), refusal.status), (), False

    async def _v1_list(self, request: web.Request, injector: FaultInjector) -> _Outcome:
        body = await request.read()
        try:
            self._v1_verify(request, body)
        except v1.V1Refusal as refusal:
            return _json(refusal.body(), refusal.status), ("auth_failures",), False
        try:
            query = v1_list.parse_list_request(
                body,
                self.config.list_page_cap,
                ignore_filters=injector.faults.list_ignores_filters,
                ignore_venue_ids=injector.faults.list_ignores_venue_ids,
            )
        except v1.V1Refusal as refusal:
            return _json(refusal.body(), refusal.status), (), False
        total, page = self.store.v1_page(query.matches, query.start, query.per_page)
        return _json(v1_list.list_answer(query, total, page)), ("v1_lists",), False

    async def _v1_ping(self, request: web.Request, injector: FaultInjector) -> _Outcome:
        body = await request.read()
        try:
            self._v1_verify(request, body)
        except v1.V1Refusal as refusal:
            return _json(refusal.body(), refusal.status), ("auth_failures",), False
        return _json({"success": True}), (), False

    # v2

    async def _token(self, request: web.Request) -> web.StreamResponse:
        if self._injector.faults.faults_on_token_endpoint:
            return await self._token_with_faults(request)
        response, events, _ = await self._token_inner(request, self._injector)
        self.counters.record("oauth_token", response.status, *events)
        return response

    async def _token_inner(self, request: web.Request, injector: FaultInjector) -> _Outcome:
        form = await request.post()
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if request.headers.get("Authorization", "").startswith("Basic "):
            with contextlib.suppress(ValueError):
                basic = BasicAuth.decode(request.headers["Authorization"])
                client_id, client_secret = basic.login, basic.password
        if form.get("grant_type") != "client_credentials":
            return _json({"error": "unsupported_grant_type"}, 400), ("token_refused",), False
        if not isinstance(client_id, str) or not isinstance(client_secret, str):
            return _json({"error": "invalid_request"}, 400), ("token_refused",), False
        if client_id != self.config.client_id or not _same(client_secret, self.config.client_secret):
            return _json({"error": "invalid_client"}, 401), ("token_refused",), False
        ttl = injector.faults.token_ttl or self.config.token_ttl
        token = self.tokens.issue(ttl)
        expires_in: float | int = int(ttl) if float(ttl).is_integer() else ttl
        answer = {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}
        scope = form.get("scope")
        if isinstance(scope, str) and scope:
            answer["scope"] = scope
        return _json(answer, headers={"Cache-Control": "no-store"}), ("token_issued",), False

    def _bearer_ok(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bool(token.strip()) and self.tokens.is_valid(token.strip())

    def _v2_unauthorized(self) -> _Outcome:
        response = web.Response(
            text=v2.UNAUTHORIZED_MESSAGE, status=401, headers={"WWW-Authenticate": "Bearer"}
        )
        return response, ("auth_failures",), False

    async def _v2_put(self, request: web.Request, injector: FaultInjector) -> _Outcome:
        body = await request.read()
        if not self._bearer_ok(request):
            return self._v2_unauthorized()
        raw_id = request.match_info["id"]
        try:
            opportunity_id = v2.parse_id(raw_id)
            if opportunity_id is None or not self.store.v2_exists(opportunity_id):
                raise v2.not_found(raw_id)
            opportunity_type, _ = v2.parse_query(request.query, type_required=True)
            assert opportunity_type is not None
            changes = v2.parse_put_body(
                body, self.config.categories, self.config.stages, injector.faults.reject_names
            )
            record = self.store.v2_update(opportunity_id, opportunity_type, changes)
            if record is None:
                raise v2.not_found(raw_id, opportunity_type)
        except v2.V2Refusal as refusal:
            return _json(refusal.body, refusal.status), (), False
        response = web.Response(body=v2.dumps(record).encode(), content_type="application/json")
        return response, ("v2_puts",), True

    async def _v2_get(self, request: web.Request, injector: FaultInjector) -> _Outcome:
        if not self._bearer_ok(request):
            return self._v2_unauthorized()
        raw_id = request.match_info["id"]
        try:
            opportunity_id = v2.parse_id(raw_id)
            if opportunity_id is None or not self.store.v2_exists(opportunity_id):
                raise v2.not_found(raw_id)
            opportunity_type, _ = v2.parse_query(request.query, type_required=False)
            types = [opportunity_type] if opportunity_type else ["Pre", "Post"]
            records = [self.store.v2_record(opportunity_id, t) for t in types]
            found = [record for record in records if record is not None]
            if not found:
                raise v2.not_found(raw_id, opportunity_type)
        except v2.V2Refusal as refusal:
            return _json(refusal.body, refusal.status), (), False
        return web.Response(body=v2.dumps(found).encode(), content_type="application/json"), (), False

    # Inspection (no authentication, never counted, never faulted)

    async def _inspect_opportunities(self, request: web.Request) -> web.StreamResponse:
        body = {"v1": self.store.v1_records(), "v2": self.store.v2_records()}
        return web.Response(body=v2.dumps(body).encode(), content_type="application/json")

    async def _inspect_seed_v1(self, request: web.Request) -> web.StreamResponse:
        try:
            records = json.loads(await request.read() or b"null")
            if not isinstance(records, list):
                raise ValueError("the body must be a JSON list of records")
            ids = self.seed_v1_records(records)
        except ValueError as error:
            return _json({"error": str(error)}, 400)
        return _json({"ids": ids})

    async def _inspect_delete_v1(self, request: web.Request) -> web.StreamResponse:
        raw_id = request.match_info["id"]
        if not v1.is_whole_number(raw_id):
            return _json({"error": f"{raw_id!r} is not a v1 id"}, 400)
        opportunity_id = int(raw_id)
        deleted = self.delete_v1_record(opportunity_id)
        return _json({"deleted": deleted, "id": opportunity_id}, 200 if deleted else 404)

    async def _inspect_references(self, request: web.Request) -> web.StreamResponse:
        return _json(self.store.v1_references())

    async def _inspect_counters(self, request: web.Request) -> web.StreamResponse:
        return _json(self.counters.snapshot())

    async def _inspect_reset(self, request: web.Request) -> web.StreamResponse:
        self.reset()
        return _json({"reset": True, "faults": self.faults.to_dict()})

    async def _inspect_faults(self, request: web.Request) -> web.StreamResponse:
        return _json(self.faults.to_dict())

    async def _inspect_set_faults(self, request: web.Request) -> web.StreamResponse:
        try:
            data = json.loads(await request.read() or b"{}")
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object of FaultConfig fields")
            faults = FaultConfig.from_dict(data)
        except ValueError as error:
            return _json({"error": str(error)}, 400)
        self.set_faults(faults)
        return _json(faults.to_dict())

    async def _inspect_expire_tokens(self, request: web.Request) -> web.StreamResponse:
        return _json({"expired": self.expire_tokens_now()})

    async def _inspect_health(self, request: web.Request) -> web.StreamResponse:
        return _json({"status": "ok"})

    async def _inspect_connection(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        nodelay = bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)) if sock is not None else None
        peer = transport.get_extra_info("peername") if transport is not None else None
        return _json({"peer": list(peer) if peer else None, "tcp_nodelay": nodelay})

    async def _unknown_path(self, request: web.Request) -> web.StreamResponse:
        self.counters.record("unknown", 404)
        return _json({"Message": f"No resource at {request.path}"}, 404)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
