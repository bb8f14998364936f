"""What the UI's Test button runs (``OpportunityHook.test_connection``): one attempt at each
configured platform, in parallel, answered within the connection's timeout and a second.

A message names the platform and the address tried, speaks only of that platform's fields, and
never holds a secret or the connection id (the UI tests a form under a throwaway id).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from airflow_opportunity_provider.connection import OpportunitySettings
from airflow_opportunity_provider.errors import (
    OpportunityApiError,
    OpportunityAuthenticationError,
    OpportunityConfigurationError,
    OpportunityConnectionError,
    OpportunityError,
    OpportunityNotFoundError,
)
from airflow_opportunity_provider.flow import NeedToken
from airflow_opportunity_provider.protocol import origin_of

if TYPE_CHECKING:
    from airflow_opportunity_provider.hooks.opportunity import OpportunityHook

V1_LABEL = "v1 (iVvy)"
V2_LABEL = "v2 (Nexus)"
#: Seconds the button may take beyond the connection's timeout.
GRACE_SECONDS = 1.0
_SHORTEST_SECRET = 5
# An id no opportunity has: the v2 check reads it, and "not found" proves the token works.
_PROBE_ID = 1
# Where an error's own advice starts: the button gives its own, about one platform only.
_ADVICE = re.compile(
    r"(?:[:;,]\s*|\.\s+|\s+\()(?:check|fill in|correct|rename)\b.*$", re.IGNORECASE | re.DOTALL
)

V1_FIELDS = "the host and port, login (the v1 API key) and password (the v1 API secret)"
V1_ADDRESS_FIELDS = "the host and port (reachable from the Airflow API server?)"
V1_CREDENTIAL_FIELDS = "login (the v1 API key) and password (the v1 API secret)"


@dataclass(frozen=True)
class PlatformResult:
    """How one platform answered the button.

    :param label: ``v1 (iVvy)`` or ``v2 (Nexus)``.
    :param address: ``scheme://host:port`` tried.
    :param ok: whether it passed.
    :param message: what happened, and for a failure which fields to check.
    """

    label: str
    address: str
    ok: bool
    message: str

    def __str__(self) -> str:
        return f"{self.label} at {self.address}: {self.message}"


def _clean(text: str, settings: OpportunitySettings) -> str:
    """An error's words without its own advice, the connection id or any secret."""
    return _clean_config(_ADVICE.sub("", text).strip().rstrip("."), settings)


def _v1(hook: OpportunityHook, settings: OpportunitySettings) -> PlatformResult:
    address = origin_of(settings.v1_base_url or "")
    try:
        hook.ping_v1()
    except OpportunityAuthenticationError as error:
        return PlatformResult(
            V1_LABEL, address, False, f"{_clean(str(error), settings)}. Check {V1_CREDENTIAL_FIELDS}."
        )
    except OpportunityConnectionError as error:
        return PlatformResult(
            V1_LABEL, address, False, f"{_clean(str(error), settings)}. Check {V1_ADDRESS_FIELDS}."
        )
    except OpportunityError as error:
        return PlatformResult(V1_LABEL, address, False, f"{_clean(str(error), settings)}. Check {V1_FIELDS}.")
    return PlatformResult(V1_LABEL, address, True, "the signed test ping was accepted")


def _v2(hook: OpportunityHook, settings: OpportunitySettings) -> PlatformResult:
    address = origin_of(settings.v2_base_url or "")
    static = bool(settings.v2_token)
    token_address = origin_of(settings.v2_token_url or "")
    credential_fields = (
        "extra.v2_token (the pre-issued token)"
        if static
        else "extra.v2_client_id, extra.v2_client_secret and extra.v2_scope"
    )
    try:
        if not static:
            try:
                token = hook._token(NeedToken())
            except OpportunityAuthenticationError as error:
                return PlatformResult(
                    V2_LABEL, address, False, f"{_clean(str(error), settings)}. Check {credential_fields}."
                )
            except OpportunityError as error:
                return PlatformResult(
                    V2_LABEL,
                    address,
                    False,
                    f"{_clean(str(error), settings)}. Check extra.v2_oauth_url, the token endpoint "
                    f"({token_address}).",
                )
            # The issued token, used as a pre-issued one: a refusal is not answered by a second
            # token request.
            hook = hook.with_settings(v2_token=token)
        # "Not found" is the answer hoped for: the token was accepted.
        with contextlib.suppress(OpportunityNotFoundError):
            hook.get_opportunity(_PROBE_ID)
    except OpportunityAuthenticationError as error:
        return PlatformResult(
            V2_LABEL, address, False, f"{_clean(str(error), settings)}. Check {credential_fields}."
        )
    except OpportunityConnectionError as error:
        return PlatformResult(
            V2_LABEL, address, False, f"{_clean(str(error), settings)}. Check extra.v2_base_url."
        )
    except OpportunityApiError as error:
        return PlatformResult(
            V2_LABEL, address, False, f"{_clean(str(error), settings)}. Check extra.v2_base_url."
        )
    except OpportunityError as error:
        return PlatformResult(
            V2_LABEL,
            address,
            False,
            f"{_clean(str(error), settings)}. Check extra.v2_base_url and {credential_fields}.",
        )
    if static:
        return PlatformResult(V2_LABEL, address, True, "the pre-issued token was accepted")
    return PlatformResult(V2_LABEL, address, True, f"a token from {token_address} was issued and accepted")


def _missing_fields(settings: OpportunitySettings) -> str:
    """What to fill in when neither platform is complete, about the platform the form started on."""
    started_v1 = any((settings.v1_base_url, settings.v1_api_key, settings.v1_api_secret))
    started_v2 = any(
        (
            settings.v2_base_url,
            settings.v2_token,
            settings.v2_client_id,
            settings.v2_client_secret,
            settings.v2_token_url,
        )
    )
    advice = []
    for started, require in ((started_v1, settings.require_v1), (started_v2, settings.require_v2)):
        if started:
            try:
                require()
            except OpportunityConfigurationError as error:
                advice.append(_clean_config(str(error), settings))
    if advice:
        return " ".join(advice)
    return (
        "The connection configures neither platform: fill in host, login and password for v1 (iVvy), "
        "or extra.v2_base_url with a token or client credentials for v2 (Nexus)."
    )


def _clean_config(text: str, settings: OpportunitySettings) -> str:
    """A configuration error's words (its advice is the point) without the connection id or a secret."""
    text = text.replace(f"Connection {settings.conn_id!r}", "The connection").replace(
        repr(settings.conn_id), ""
    )
    for secret in settings.secrets:
        # As Airflow's masker does: a value this short would hide ordinary words, not a secret.
        if len(secret) >= _SHORTEST_SECRET:
            text = text.replace(secret, "***")
    return text


def check_connection(hook: OpportunityHook) -> tuple[bool, str]:
    """Test every platform the hook's connection configures, changing nothing.

    v1 sends its signed test ping; v2 obtains one token (client credentials) and reads an
    opportunity, where "not found" still proves the token is accepted. Each request is made once
    (no retries), both platforms at once, and the answer comes within the connection's timeout
    and :data:`GRACE_SECONDS`, even from a host that accepts and never answers.

    :param hook: the hook of the connection under test.
    :returns: ``(passed, message)`` as Airflow's ``test_connection`` contract asks.
    """
    try:
        settings = hook.settings
    except OpportunityConfigurationError as error:
        return False, _clean_config(str(error), OpportunitySettings(conn_id=hook.opportunity_conn_id))
    except Exception as error:
        return False, f"The connection could not be read ({type(error).__name__})."
    if not settings.has_v1 and not settings.has_v2:
        return False, _missing_fields(settings)
    budget = settings.read_timeout + GRACE_SECONDS
    # One attempt per request, each bounded by the connection's timeout.
    once = hook.with_settings(
        max_retries=0, connect_timeout=min(settings.connect_timeout, settings.read_timeout)
    )
    checks: list[tuple[str, str, Callable[[], PlatformResult]]] = []
    if settings.has_v1:
        checks.append((V1_LABEL, origin_of(settings.v1_base_url or ""), lambda: _v1(once, settings)))
    if settings.has_v2:
        # Its own hook: its own session and token cache, so the two threads share nothing.
        v2_hook = once.with_settings()
        checks.append((V2_LABEL, origin_of(settings.v2_base_url or ""), lambda: _v2(v2_hook, settings)))
    results: dict[str, PlatformResult] = {}

    def run(label: str, check: Callable[[], PlatformResult]) -> None:
        try:
            results[label] = check()
        except Exception as error:  # the button must answer, whatever the check ran into
            results[label] = PlatformResult(label, "", False, f"the test failed ({type(error).__name__})")

    threads = [
        threading.Thread(target=run, args=(label, check), name=f"test-connection-{label}", daemon=True)
        for label, _, check in checks
    ]
    deadline = time.monotonic() + budget
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
    answers = []
    for label, address, _ in checks:
        result = results.get(label)
        if result is None:
            # Still waiting: a host that trickles its answer, or two slow requests of v2.
            fields = V1_ADDRESS_FIELDS if label == V1_LABEL else "extra.v2_base_url and extra.v2_oauth_url"
            result = PlatformResult(label, address, False, f"no answer within {budget:g} s. Check {fields}.")
        elif not result.address:
            result = PlatformResult(label, address, result.ok, result.message)
        answers.append(result)
    passed = all(result.ok for result in answers)
    # The failures first: they are what the person pressed the button to learn.
    answers.sort(key=lambda result: result.ok)
    return passed, " ".join(
        f"{result}." if not str(result).endswith(".") else str(result) for result in answers
    )
