"""Credentials that cannot be sent (a line break, a control character, a letter outside Latin-1)
are refused by both clients before anything leaves, with an error that names the field and
never quotes a secret or a signature.
"""

from __future__ import annotations

import dataclasses

import pytest

from airflow_opportunity_provider.connection import settings_from_connection
from airflow_opportunity_provider.errors import OpportunityConfigurationError
from tests.integration.hooks.both_clients import (
    API_KEY,
    API_SECRET,
    CLIENT_SECRET,
    TOKEN_PATH,
    V1_OK,
    BothClients,
    settings_for,
)
from tests.integration.hooks.fault_servers import FaultServer, answer

BAD_VALUES = {"line feed": "\n", "carriage return and line feed": "\r\nX-Injected: 1", "Cyrillic": "ключ"}


@pytest.mark.parametrize("bad", list(BAD_VALUES.values()), ids=list(BAD_VALUES))
@pytest.mark.parametrize(
    ("field", "named", "calls"),
    [
        ("v1_api_key", "login", ("create", "update")),
        ("v1_api_secret", "password", ("create", "update")),
        ("v2_client_id", "v2_client_id", ("put",)),
        ("v2_client_secret", "v2_client_secret", ("put",)),
    ],
)
def test_a_credential_that_cannot_be_sent_is_refused_before_sending(
    field: str, named: str, calls: tuple[str, ...], bad: str, both_clients: BothClients
) -> None:
    with FaultServer([answer(200, V1_OK)]) as server:
        settings = settings_for(server.base_url, token_url=server.base_url + TOKEN_PATH)
        # Settings made in code skip the connection's own checks: the call must still refuse.
        value = getattr(settings, field)
        broken = dataclasses.replace(settings, **{field: value[:4] + bad + value[4:]})
        for call in calls:
            hook, client = both_clients.run(broken, call, [server])
            assert hook.outcome == "OpportunityConfigurationError", hook
            assert named in str(hook.error)
            assert named in str(client.error)
            assert "Nothing was sent" in str(hook.error)
            assert server.received == []
            for text in (str(hook.error), repr(hook.error), str(client.error), repr(client.error)):
                assert "IWS" not in text
                assert (value[:4] + bad) not in text


@pytest.mark.parametrize("bad", list(BAD_VALUES.values()), ids=list(BAD_VALUES))
@pytest.mark.parametrize(
    ("place", "named"),
    [
        ("login", "login"),
        ("password", "password"),
        ("v2_client_id", "v2_client_id"),
        ("v2_client_secret", "v2_client_secret"),
        ("v2_token", "v2_token"),
    ],
)
def test_the_connection_refuses_such_a_credential_when_it_is_read(place: str, named: str, bad: str) -> None:
    fields = {"login": API_KEY, "password": API_SECRET}
    extra = {
        "v2_base_url": "https://v2.example.com",
        "v2_client_secret": CLIENT_SECRET,
        "v2_client_id": "client",
    }
    value = f"abcd{bad}efgh"
    if place in fields:
        fields[place] = value
    else:
        extra[place] = value
    with pytest.raises(OpportunityConfigurationError) as caught:
        settings_from_connection(
            "crm", host="https://v1.example.com", port=None, schema=None, extra=extra, **fields
        )
    assert named in str(caught.value)
    assert value not in str(caught.value)
    assert value not in repr(caught.value)


def test_an_extra_header_with_a_line_break_is_refused_when_the_connection_is_read() -> None:
    with pytest.raises(OpportunityConfigurationError, match=r"extra\.headers"):
        settings_for("http://127.0.0.1:1", headers={"X-Team": "data\r\nX-Injected: 1"})
