"""Which proxy a request goes through, decided once for both HTTP clients.

The connection's ``extra.proxies`` come first; then, unless ``extra.trust_env`` is false, the
environment's ``HTTPS_PROXY``, ``HTTP_PROXY`` and ``NO_PROXY``, read exactly as ``requests`` reads
them. The ``requests`` hook and the aiohttp client both send each request where this says.
"""

from __future__ import annotations

from collections.abc import Mapping

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
