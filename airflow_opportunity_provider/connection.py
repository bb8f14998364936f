"""The connection's public shape: one Airflow connection holding either platform's settings, or both.

v1 lives in the standard fields (host, port, login = API key, password = API secret);
v2 and the shared settings live in ``extra``. See the README's connection table.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow_opportunity_provider.errors import OpportunityConfigurationError

CONN_TYPE = "opportunity_crm"
DEFAULT_CONN_ID = "opportunity_default"

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 5

V2_EXTRA_FIELDS = ("v2_base_url", "v2_token", "v2_client_id", "v2_client_secret", "v2_oauth_url", "v2_scope")
# The token endpoint's extra before it was renamed: Airflow masks every extra whose name holds
# "token", so the old name showed as *** in the UI. Still read, with a deprecation warning.
DEPRECATED_TOKEN_URL_FIELD = "v2_token_url"
SHARED_EXTRA_FIELDS = ("timeout", "verify", "max_retries")
# The HTTP options an HTTP connection has (apache-airflow-providers-http), with the same names.
HTTP_EXTRA_FIELDS = ("proxies", "cert", "trust_env", "headers")

# Headers this provider sets itself: a connection may not replace them through extra.headers.
RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "x-api-authorization",
        "x-api-version",
        "content-md5",
        "content-type",
        "content-length",
        "date",
        "ivvy-date",
        "host",
        "transfer-encoding",
    }
)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Extra header values under these names are registered with the secrets masker.
_SENSITIVE_HEADER = re.compile(r"key|token|secret|auth|password|signature|cookie", re.IGNORECASE)


# A line break, another control character (tab is allowed) or anything outside Latin-1.
_UNSAFE_IN_HEADER = re.compile("[\x00-\x08\x0a-\x1f\x7f\u0100-\U0010ffff]")


def is_header_safe(value: str) -> bool:
    """Whether ``value`` can go in an HTTP header line as it is: no line break, no control
    character, nothing outside Latin-1 (what every HTTP library would refuse, quoting it).

    :param value: a header value.
    """
    return _UNSAFE_IN_HEADER.search(value) is None


# The name each credential goes by in messages, the connection field a user corrects.
LOGIN_FIELD = "the login (the v1 API key)"
PASSWORD_FIELD = "the password (the v1 API secret)"
CLIENT_ID_FIELD = "extra.v2_client_id"
CLIENT_SECRET_FIELD = "extra.v2_client_secret"
TOKEN_FIELD = "extra.v2_token"


def check_credential(conn_id: str, field_name: str, value: str | None) -> None:
    """Refuse a credential holding a line break, a control character or a letter outside Latin-1.

    No platform issues such a key, secret or client id: it comes from a paste that took a line
    break along. Sent as it is, it would break a header line (the key, a token) or sign and
    authenticate with something the platform never issued (a secret, a client id), failing later
    with a vaguer error. The message names the field and never quotes the value.

    :param conn_id: the connection id, for the message.
    :param field_name: the field, as the user knows it (``"extra.v2_client_id"``).
    :param value: the credential, or ``None``.
    :raises OpportunityConfigurationError: naming the field.
    """
    if value is not None and not is_header_safe(value):
        raise OpportunityConfigurationError(
            f"Connection {conn_id!r}: {field_name} holds a line break, a control character or a letter "
            "outside Latin-1, which cannot be sent as it is; correct it. Nothing was sent."
        )


@dataclass(frozen=True)
class OpportunitySettings:
    """Everything a call needs from the connection, secrets kept out of ``repr``.

    :param conn_id: the Airflow connection id, for messages.
    :param v1_base_url: scheme, host and port of the v1 platform, or ``None``.
    :param v1_api_key: the v1 API key.
    :param v1_api_secret: the v1 API secret.
    :param v2_base_url: the v2 platform's base URL, or ``None``.
    :param v2_token: a pre-issued v2 bearer token.
    :param v2_client_id: the v2 OAuth2 client id.
    :param v2_client_secret: the v2 OAuth2 client secret.
    :param v2_token_url: the v2 OAuth2 token endpoint (``extra.v2_oauth_url``).
    :param v2_scope: the scope to ask for.
    :param connect_timeout: seconds to wait for a connection.
    :param read_timeout: seconds to wait for an answer.
    :param verify: TLS certificate verification (``True``, ``False`` or a CA bundle path).
    :param max_retries: retries after the first attempt.
    :param proxies: proxy URL per scheme (``{"https": "http://proxy:3128"}``), as an HTTP connection's
        ``proxies`` extra; ``None`` leaves it to the environment (see ``trust_env``).
    :param cert: a client certificate: the path of a PEM file holding the certificate and key,
        or ``(certificate, key)`` paths.
    :param trust_env: read ``HTTPS_PROXY``, ``HTTP_PROXY`` and ``NO_PROXY`` from the environment.
    :param headers: headers sent with every request (``extra.headers``).
    """

    conn_id: str
    v1_base_url: str | None = None
    v1_api_key: str | None = field(default=None, repr=False)
    v1_api_secret: str | None = field(default=None, repr=False)
    v2_base_url: str | None = None
    v2_token: str | None = field(default=None, repr=False)
    v2_client_id: str | None = None
    v2_client_secret: str | None = field(default=None, repr=False)
    v2_token_url: str | None = None
    v2_scope: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    verify: bool | str = True
    max_retries: int = DEFAULT_MAX_RETRIES
    proxies: Mapping[str, str] | None = field(default=None, repr=False)
    cert: str | tuple[str, str] | None = None
    trust_env: bool = True
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret this connection holds, to register with the masker and to keep out of logs."""
        values = [self.v1_api_secret, self.v2_token, self.v2_client_secret]
        for proxy in (self.proxies or {}).values():
            values.append(urlsplit(proxy).password)
        values += [value for name, value in self.headers.items() if _SENSITIVE_HEADER.search(name)]
        return tuple(value for value in values if value)

    def require_v1(self) -> tuple[str, str, str]:
        """The v1 base URL, API key and secret, or an error naming the fields to fill in."""
        base_url, api_key, api_secret = self.v1_base_url, self.v1_api_key, self.v1_api_secret
        if base_url and api_key and api_secret:
            return base_url, api_key, api_secret
        missing = [
            name
            for name, value in (
                ("host", base_url),
                ("login (the v1 API key)", api_key),
                ("password (the v1 API secret)", api_secret),
            )
            if not value
        ]
        raise OpportunityConfigurationError(
            f"Connection {self.conn_id!r} has no v1 settings: fill in {', '.join(missing)} to call "
            "the v1 add-or-update endpoint."
        )

    def require_v2(self) -> str:
        """The v2 base URL, or an error naming the fields to fill in when v2 cannot authenticate."""
        problems = []
        if not self.v2_base_url:
            problems.append("extra.v2_base_url")
        if not self.v2_token:
            client_fields = {
                "extra.v2_client_id": self.v2_client_id,
                "extra.v2_client_secret": self.v2_client_secret,
                "extra.v2_oauth_url": self.v2_token_url,
            }
            missing = [name for name, value in client_fields.items() if not value]
            if missing:
                problems.append(
                    "either extra.v2_token (a pre-issued token) or "
                    + ", ".join(client_fields)
                    + f" (client credentials; missing: {', '.join(missing)})"
                )
        if problems:
            raise OpportunityConfigurationError(
                f"Connection {self.conn_id!r} cannot call the v2 API: fill in {'; and '.join(problems)}."
            )
        return self.v2_base_url or ""

    @property
    def has_v1(self) -> bool:
        """Whether the connection holds v1 settings."""
        return bool(self.v1_base_url and self.v1_api_key and self.v1_api_secret)

    @property
    def has_v2(self) -> bool:
        """Whether the connection holds v2 settings."""
        return bool(
            self.v2_base_url
            and (self.v2_token or (self.v2_client_id and self.v2_client_secret and self.v2_token_url))
        )


def base_url_from(host: str | None, port: int | None, schema: str | None = None) -> str | None:
    """Build a base URL the way ``HttpHook`` does: the host may carry its scheme (https otherwise).

    :param host: the connection's host, with or without ``scheme://`` and a path.
    :param port: the connection's port, if any.
    :param schema: the connection's schema field, used as the scheme when it is http or https.
    """
    if not host:
        return None
    host = host.strip().rstrip("/")
    if "://" in host:
        scheme, rest = host.split("://", 1)
    else:
        scheme = schema if schema in ("http", "https") else "https"
        rest = host
    authority, _, path = rest.partition("/")
    if port and ":" not in authority:
        authority = f"{authority}:{port}"
    return f"{scheme}://{authority}" + (f"/{path}" if path else "")


def _extra_float(extra: Mapping[str, Any], name: str, default: float, conn_id: str) -> float:
    raw = extra.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise OpportunityConfigurationError(
            f"Connection {conn_id!r}: extra.{name} must be a number of seconds, got {raw!r}."
        ) from None
    if value <= 0:
        raise OpportunityConfigurationError(f"Connection {conn_id!r}: extra.{name} must be above 0.")
    return value


def _extra_bool(raw: Any, conn_id: str, name: str) -> bool | str:
    if raw is None or raw == "":
        return True
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    # Anything else is a path to a CA bundle, which requests accepts as ``verify``.
    return str(raw)


def settings_from_connection(
    conn_id: str,
    *,
    host: str | None,
    port: int | None,
    schema: str | None,
    login: str | None,
    password: str | None,
    extra: Mapping[str, Any] | str | None,
) -> OpportunitySettings:
    """Read an Airflow connection's fields into :class:`OpportunitySettings`.

    :param conn_id: the connection id, for messages.
    :param host: v1 host (may carry the scheme).
    :param port: v1 port.
    :param schema: v1 scheme when the host carries none.
    :param login: the v1 API key.
    :param password: the v1 API secret.
    :param extra: the ``extra`` dict (or its JSON text).
    """
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except ValueError:
            raise OpportunityConfigurationError(
                f"Connection {conn_id!r}: extra is not valid JSON; write it as a JSON object."
            ) from None
    extra = dict(extra or {})
    # The UI form may store its fields with the extra__<conn_type>__ prefix older forms used.
    prefix = f"extra__{CONN_TYPE}__"
    for key in list(extra):
        if key.startswith(prefix):
            extra.setdefault(key[len(prefix) :], extra.pop(key))

    def text(name: str) -> str | None:
        value = extra.get(name)
        return str(value).strip() or None if value is not None else None

    timeout_raw = extra.get("timeout")
    if isinstance(timeout_raw, list | tuple) and len(timeout_raw) == 2:
        connect_timeout = _extra_float({"t": timeout_raw[0]}, "t", DEFAULT_CONNECT_TIMEOUT, conn_id)
        read_timeout = _extra_float({"t": timeout_raw[1]}, "t", DEFAULT_READ_TIMEOUT, conn_id)
    else:
        read_timeout = _extra_float(extra, "timeout", DEFAULT_READ_TIMEOUT, conn_id)
        connect_timeout = min(DEFAULT_CONNECT_TIMEOUT, read_timeout)
    retries_raw = extra.get("max_retries")
    try:
        max_retries = DEFAULT_MAX_RETRIES if retries_raw in (None, "") else int(retries_raw)
    except (TypeError, ValueError):
        raise OpportunityConfigurationError(
            f"Connection {conn_id!r}: extra.max_retries must be a whole number, got {retries_raw!r}."
        ) from None
    if max_retries < 0:
        raise OpportunityConfigurationError(f"Connection {conn_id!r}: extra.max_retries must be 0 or more.")
    v2_base = text("v2_base_url")
    token_url = text("v2_oauth_url")
    if token_url is None and text(DEPRECATED_TOKEN_URL_FIELD) is not None:
        warnings.warn(
            f"Connection {conn_id!r}: extra.{DEPRECATED_TOKEN_URL_FIELD} is deprecated (Airflow masks it as a "
            "secret); rename it to extra.v2_oauth_url.",
            DeprecationWarning,
            stacklevel=2,
        )
        token_url = text(DEPRECATED_TOKEN_URL_FIELD)
    login = login or None
    static_token = text("v2_token")
    for field_name, value in (
        (LOGIN_FIELD, login),
        (PASSWORD_FIELD, password or None),
        (TOKEN_FIELD, static_token),
        (CLIENT_ID_FIELD, text("v2_client_id")),
        (CLIENT_SECRET_FIELD, text("v2_client_secret")),
    ):
        check_credential(conn_id, field_name, value)
    return OpportunitySettings(
        conn_id=conn_id,
        v1_base_url=base_url_from(host, port, schema),
        v1_api_key=login,
        v1_api_secret=password or None,
        v2_base_url=v2_base.rstrip("/") if v2_base else None,
        v2_token=static_token,
        v2_client_id=text("v2_client_id"),
        v2_client_secret=text("v2_client_secret"),
        v2_token_url=token_url,
        v2_scope=text("v2_scope"),
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        verify=_extra_bool(extra.get("verify"), conn_id, "verify"),
        max_retries=max_retries,
        proxies=_extra_proxies(extra.get("proxies", extra.get("proxy")), conn_id),
        cert=_extra_cert(extra.get("cert"), conn_id),
        trust_env=_extra_flag(extra.get("trust_env"), conn_id, "trust_env"),
        headers=_extra_headers(extra.get("headers"), conn_id),
    )


def _extra_proxies(raw: Any, conn_id: str) -> dict[str, str] | None:
    """``extra.proxies``: a dict of scheme -> proxy URL (as requests takes it), or one URL for both."""
    if raw in (None, "", {}):
        return None
    if isinstance(raw, str):
        raw = {"http": raw, "https": raw}
    if not isinstance(raw, Mapping):
        raise OpportunityConfigurationError(
            f"Connection {conn_id!r}: extra.proxies must map a scheme to a proxy URL, e.g. "
            '{"https": "http://proxy.internal:3128"}.'
        )
    proxies: dict[str, str] = {}
    for scheme, url in raw.items():
        if scheme not in ("http", "https") or not isinstance(url, str) or not url.strip():
            raise OpportunityConfigurationError(
                f"Connection {conn_id!r}: extra.proxies takes the keys 'http' and 'https', each with a proxy "
                "URL such as http://proxy.internal:3128."
            )
        if urlsplit(url.strip()).scheme not in ("http", "https"):
            raise OpportunityConfigurationError(
                f"Connection {conn_id!r}: the {scheme} proxy must be an http:// or https:// URL."
            )
        proxies[scheme] = url.strip()
    return proxies


def _extra_cert(raw: Any, conn_id: str) -> str | tuple[str, str] | None:
    if raw in (None, ""):
        return None
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list | tuple) and len(raw) == 2 and all(isinstance(p, str) and p for p in raw):
        return (raw[0], raw[1])
    raise OpportunityConfigurationError(
        f"Connection {conn_id!r}: extra.cert must be the path of a PEM file with the certificate and key, "
        "or a list of two paths [certificate, key]."
    )


def _extra_flag(raw: Any, conn_id: str, name: str) -> bool:
    value = _extra_bool(raw, conn_id, name)
    if isinstance(value, str):
        raise OpportunityConfigurationError(f"Connection {conn_id!r}: extra.{name} must be true or false.")
    return value


def _extra_headers(raw: Any, conn_id: str) -> dict[str, str]:
    if raw in (None, "", {}):
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
    if not isinstance(raw, Mapping):
        raise OpportunityConfigurationError(
            f'Connection {conn_id!r}: extra.headers must be an object of header names and values, e.g. {{"X-Team": "data"}}.'
        )
    headers: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise OpportunityConfigurationError(
                f"Connection {conn_id!r}: extra.headers has a header name that is not a valid token: {name!r}."
            )
        if name.lower() in RESERVED_HEADERS:
            raise OpportunityConfigurationError(
                f"Connection {conn_id!r}: extra.headers may not set {name}: this provider sets it on every "
                "request (the signature, the token or the body's type); remove it."
            )
        if not isinstance(value, str | int) or not is_header_safe(str(value)):
            raise OpportunityConfigurationError(
                f"Connection {conn_id!r}: the value of extra.headers[{name!r}] must be text without line breaks "
                "or control characters."
            )
        headers[name] = str(value)
    return headers
