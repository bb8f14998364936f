"""Which proxy a request goes through, decided once for both HTTP clients.

The connection's ``extra.proxies`` come first; then, unless ``extra.trust_env`` is false, the
environment's ``HTTPS_PROXY``, ``HTTP_PROXY`` and ``NO_PROXY``, read exactly as ``requests`` reads
them. The ``requests`` hook and the aiohttp client both send each request where this says.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from requests.utils import get_environ_proxies, select_proxy


def proxy_for(url: str, proxies: Mapping[str, str] | None, trust_env: bool) -> str | None:
    """The proxy URL for a request to ``url``, or ``None`` to connect directly.

    :param url: where the request goes.
    :param proxies: the connection's proxies per scheme (``{"https": "http://proxy:3128"}``).
    :param trust_env: also read the proxy environment variables (``NO_PROXY`` only bypasses those).
    """
    chosen = dict(proxies or {})
    if trust_env:
        for scheme, proxy in get_environ_proxies(url, no_proxy=None).items():
            chosen.setdefault(scheme, proxy)
    return select_proxy(url, chosen)


class ProxyChoice:
    """:func:`proxy_for`, remembered per scheme and host for the life of one client.

    Reading the environment costs more than a request's whole set-up on loopback, and neither
    the connection nor (in one task) the environment changes while a client lives.

    :param proxies: the connection's proxies per scheme.
    :param trust_env: also read the proxy environment variables.
    """

    def __init__(self, proxies: Mapping[str, str] | None, trust_env: bool) -> None:
        self._proxies = dict(proxies or {})
        self._trust_env = trust_env
        self._chosen: dict[tuple[str, str], str | None] = {}

    def __call__(self, url: str) -> str | None:
        """The proxy URL for a request to ``url``, or ``None`` to connect directly.

        :param url: where the request goes.
        """
        parts = urlsplit(url)
        origin = (parts.scheme, parts.netloc)
        if origin not in self._chosen:
            self._chosen[origin] = proxy_for(url, self._proxies, self._trust_env)
        return self._chosen[origin]
