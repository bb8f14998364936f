"""The connection's public shape: one Airflow connection holding either platform's settings, or both.

v1 lives in the standard fields (host, port, login = API key, password = API secret);
v2 and the shared settings live in ``extra``. See the README's connection table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_opportunity_provider.errors import OpportunityConfigurationError

CONN_TYPE = "opportunity_crm"
DEFAULT_CONN_ID = "opportunity_default"

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 5

V2_EXTRA_FIELDS = ("v2_base_url", "v2_token", "v2_client_id", "v2_client_secret", "v2_token_url", "v2_scope")
SHARED_EXTRA_FIELDS = ("timeout", "verify", "max_retries")


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
    :param v2_token_url: the v2 OAuth2 token endpoint.
    :param v2_scope: the scope to ask for.
    :param connect_timeout: seconds to wait for a connection.
    :param read_timeout: seconds to wait for an answer.
    :param verify: TLS certificate verification (``True``, ``False`` or a CA bundle path).
    :param max_retries: retries after the first attempt.
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

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret this connection holds, to register with the masker and to keep out of logs."""
        values = (self.v1_api_secret, self.v2_token, self.v2_client_secret)
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
                "extra.v2_token_url": self.v2_token_url,
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
    return OpportunitySettings(
        conn_id=conn_id,
        v1_base_url=base_url_from(host, port, schema),
        v1_api_key=login or None,
        v1_api_secret=password or None,
        v2_base_url=v2_base.rstrip("/") if v2_base else None,
        v2_token=text("v2_token"),
        v2_client_id=text("v2_client_id"),
        v2_client_secret=text("v2_client_secret"),
        v2_token_url=text("v2_token_url"),
        v2_scope=text("v2_scope"),
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        verify=_extra_bool(extra.get("verify"), conn_id, "verify"),
        max_retries=max_retries,
    )
