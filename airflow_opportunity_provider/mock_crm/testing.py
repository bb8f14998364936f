"""The connection that points the provider at a running mock CRM server, for tests and the demo.

Use it with ``AIRFLOW_CONN_OPPORTUNITY_DEFAULT`` so DAGs and hooks read it the way they
read any Airflow connection.
"""

from __future__ import annotations

import json
from typing import Any

from airflow_opportunity_provider.mock_crm.config import MockCrmConfig
from airflow_opportunity_provider.mock_crm.server import TOKEN_PATH, MockCrmServer


def connection_dict(
    base_url: str, config: MockCrmConfig | None = None, *, static_token: bool = False, **extra: Any
) -> dict[str, Any]:
    """An ``opportunity_crm`` connection (as Airflow's JSON form) for a mock at ``base_url``.

    :param base_url: the mock's ``http://HOST:PORT``.
    :param config: the mock's configuration (its defaults when omitted).
    :param static_token: authenticate v2 with the pre-issued token instead of client credentials.
    :param extra: more ``extra`` fields (``timeout``, ``max_retries``, ...).
    """
    config = config or MockCrmConfig()
    host, port = base_url.rsplit(":", 1)
    v2: dict[str, Any] = {"v2_base_url": base_url}
    if static_token and config.static_token:
        v2["v2_token"] = config.static_token
    else:
        v2.update(
            v2_client_id=config.client_id,
            v2_client_secret=config.client_secret,
            v2_oauth_url=base_url + TOKEN_PATH,
        )
    return {
        "conn_type": "opportunity_crm",
        "host": host,
        "port": int(port),
        "login": config.api_key,
        "password": config.api_secret,
        "extra": {**v2, **extra},
    }


def connection_json(server: MockCrmServer, **options: Any) -> str:
    """:func:`connection_dict` of a started server, as the JSON an ``AIRFLOW_CONN_*`` variable holds.

    :param server: a started mock server.
    :param options: passed to :func:`connection_dict`.
    """
    return json.dumps(connection_dict(server.base_url, server.config, **options))
