"""Protection of the page's changes against cross-site request forgery.

The Airflow UI's session is a cookie, which a browser also sends with a request another site
makes it send. So a change made with that cookie must carry, in a header only the page's own
script sets, a token signed for the same user; and a browser request must come from this origin.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer

# The header the page's script sends the token in. A cross-origin page cannot add a header of its
# own to a request that carries cookies without a CORS preflight, which the API server refuses.
TOKEN_HEADER = "X-Opportunity-Syncs-Token"
# A page left open longer than this must be loaded again before it can change anything.
TOKEN_MAX_AGE_SECONDS = 12 * 3600
_SALT = "airflow-opportunity-provider.opportunity-syncs.csrf"


def issue_token(user_id: str, secret: str) -> str:
    """A token that says the page was rendered for ``user_id`` (and when).

    :param user_id: the Airflow user's id.
    :param secret: the API server's secret key.
    """
    return URLSafeTimedSerializer(secret, salt=_SALT).dumps(user_id)


def token_is_valid(token: str, user_id: str, secret: str, max_age: int = TOKEN_MAX_AGE_SECONDS) -> bool:
    """Whether ``token`` was issued for ``user_id`` with ``secret`` less than ``max_age`` seconds ago.

    :param token: the token the request carried.
    :param user_id: the id of the user the request is authenticated as.
    :param secret: the API server's secret key.
    :param max_age: the oldest token accepted, in seconds.
    """
    try:
        found = URLSafeTimedSerializer(secret, salt=_SALT).loads(token, max_age=max_age)
    except BadSignature:  # also an expired token: SignatureExpired is a BadSignature
        return False
    return isinstance(found, str) and found == user_id


def origin_is_allowed(origin: str, hosts: Iterable[str]) -> bool:
    """Whether a browser's ``Origin`` header names one of ``hosts`` (``host`` or ``host:port``).

    Only the host and port are compared: behind a proxy that ends TLS the API server may see
    ``http`` where the browser says ``https``.

    :param origin: the ``Origin`` header, e.g. ``https://airflow.example.com``.
    :param hosts: the host names (with ports) this server answers to.
    """
    netloc = urlsplit(origin).netloc.lower()
    return bool(netloc) and netloc in {host.lower() for host in hosts if host}


def same_site_fetch(value: str | None) -> bool:
    """Whether a ``Sec-Fetch-Site`` header (sent by every current browser) allows a change.

    :param value: the header, or ``None`` when the client sent none (not a browser).
    """
    return value is None or value == "same-origin"
