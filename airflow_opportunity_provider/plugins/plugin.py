"""The Airflow plugin: the Opportunity syncs app mounted in the API server, and its entry in the UI's menu.

Every Airflow process loads plugins, task processes too, so this module imports nothing heavy:
the FastAPI app (and Airflow's API security code with it) is built on the app's first request.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/opportunity-syncs"
NAV_ROUTE = "opportunity-syncs"
NAME = "Opportunity syncs"

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class LazyApp:
    """An ASGI app that builds the real one on its first call.

    :param factory: returns the ASGI app to serve.
    """

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._app: Any = None
        self._lock = threading.Lock()

    @property
    def app(self) -> Any:
        """The real app, built once."""
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = self._factory()
        return self._app

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        await self.app(scope, receive, send)

    def __repr__(self) -> str:
        return "airflow_opportunity_provider.plugins.app:create_app"


def _create_app() -> Any:
    from airflow_opportunity_provider.plugins.app import create_app

    return create_app()


def _page_href() -> str:
    """The page's address as the UI's menu links it: under ``[api] base_url``'s path, if it has one."""
    from airflow.configuration import conf

    root = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    return f"{root}{URL_PREFIX}/"


class OpportunitySyncsPlugin(AirflowPlugin):
    """The Opportunity syncs page of this provider, with its own entry in the Airflow UI's navigation."""

    name = "opportunity_syncs"
    fastapi_apps = [{"app": LazyApp(_create_app), "url_prefix": URL_PREFIX, "name": NAME}]
    external_views = [
        {
            "name": NAME,
            "href": _page_href(),
            "destination": "nav",
            "url_route": NAV_ROUTE,
        }
    ]
