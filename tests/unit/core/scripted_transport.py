"""A transport for the call flow that answers from a script: the whole client, tested without sockets.

Each request takes the next reply of the script (an ``Answer`` or a ``TransportFault``); the last
reply repeats. Every request and every token asked for is recorded, so a test can count them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_opportunity_provider.flow import Answer, NeedToken, Request, TransportFault

Reply = Answer | TransportFault


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Answer:
    """An answer whose body is ``body`` as JSON (bytes and text are sent as they are)."""
    if isinstance(body, bytes):
        raw = body
    elif isinstance(body, str):
        raw = body.encode()
    else:
        raw = b"" if body is None else json.dumps(body).encode()
    return Answer(status, headers or {}, raw)


@dataclass
class ScriptedTransport:
    """Replies to requests in order; the last reply repeats.

    :param replies: the replies, one per request.
    :param tokens: the bearer tokens handed out, in order (the last repeats).
    """

    replies: Sequence[Reply]
    tokens: Sequence[str] = ("token-1", "token-2", "token-3")
    requests: list[Request] = field(default_factory=list)
    token_requests: list[NeedToken] = field(default_factory=list)

    def send(self, request: Request) -> Reply:
        index = min(len(self.requests), len(self.replies) - 1)
        self.requests.append(request)
        return self.replies[index]

    def token(self, need: NeedToken) -> str:
        index = min(len(self.token_requests), len(self.tokens) - 1)
        self.token_requests.append(need)
        return self.tokens[index]

    async def send_async(self, request: Request) -> Reply:
        return self.send(request)

    async def token_async(self, need: NeedToken) -> str:
        return self.token(need)
