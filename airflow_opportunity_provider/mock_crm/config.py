"""What a mock CRM server knows before it starts: credentials, choice lists, seed data, faults.

The defaults are the credentials the example DAGs and tests use, so a server started with
``MockCrmConfig()`` answers them without further setup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from airflow_opportunity_provider.mock_crm.faults import FaultConfig

DEFAULT_API_KEY = "mock-api-key-0001"
DEFAULT_API_SECRET = "mock-api-secret-0001-abcdef"
DEFAULT_CLIENT_ID = "mock-client-id"
DEFAULT_CLIENT_SECRET = "mock-client-secret-abcdef"
DEFAULT_STATIC_TOKEN = "mock-static-token-abcdef"
DEFAULT_TOKEN_TTL = 3600.0
DEFAULT_CATEGORIES = ("New Business", "Existing Business", "Renewal")
DEFAULT_STAGES = ("Prospect", "Qualified", "Proposal", "Closed Won", "Closed Lost")
DEFAULT_V2_SEED_COUNT = 100
DEFAULT_FIRST_V1_ID = 1000
# The v1 platform refuses a request dated further than this from its clock (specificCode 23005).
DEFAULT_MAX_CLOCK_SKEW = 300.0
# The most records one getOpportunityList page holds, and its size when perPage is left out.
DEFAULT_LIST_PAGE_CAP = 100


@dataclass(frozen=True)
class MockCrmConfig:
    """Configuration of a :class:`~airflow_opportunity_provider.mock_crm.server.MockCrmServer`.

    Secrets are left out of ``repr`` so that printing a config never shows them.

    :param api_key: the v1 API key the server accepts.
    :param api_secret: the v1 API secret requests must be signed with.
    :param client_id: the v2 OAuth2 client id.
    :param client_secret: the v2 OAuth2 client secret.
    :param static_token: a pre-issued v2 bearer token that never expires; ``None`` or ``""`` for none.
    :param token_ttl: ``expires_in`` of issued tokens, in seconds; the server refuses them after.
    :param categories: v2 category names; category ``i`` (from 0) has ``CategoryID`` ``i + 1``.
    :param stages: v2 stage names; stage ``i`` (from 0) has ``StageID`` ``i + 1``.
    :param v2_seed_ids: the v2 opportunity ids that exist, each with a ``Pre`` and a ``Post`` record.
    :param first_v1_id: the id the first v1 create is given; later creates count up from it.
    :param max_clock_skew: seconds a v1 request date may differ from the server's clock.
    :param list_page_cap: the most records a v1 ``getOpportunityList`` page holds (a larger
        ``perPage`` is lowered to it), and the page size when ``perPage`` is left out.
    :param faults: the faults injected from the start, and restored by ``reset()``.
    """

    api_key: str = DEFAULT_API_KEY
    api_secret: str = field(default=DEFAULT_API_SECRET, repr=False)
    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = field(default=DEFAULT_CLIENT_SECRET, repr=False)
    static_token: str | None = field(default=DEFAULT_STATIC_TOKEN, repr=False)
    token_ttl: float = DEFAULT_TOKEN_TTL
    categories: Sequence[str] = DEFAULT_CATEGORIES
    stages: Sequence[str] = DEFAULT_STAGES
    v2_seed_ids: Sequence[int] = range(1, DEFAULT_V2_SEED_COUNT + 1)
    first_v1_id: int = DEFAULT_FIRST_V1_ID
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW
    list_page_cap: int = DEFAULT_LIST_PAGE_CAP
    faults: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "categories", tuple(self.categories))
        object.__setattr__(self, "stages", tuple(self.stages))
        problems = []
        if not self.api_key or not self.api_secret:
            problems.append("api_key and api_secret must not be empty")
        if not self.client_id or not self.client_secret:
            problems.append("client_id and client_secret must not be empty")
        if self.token_ttl <= 0:
            problems.append("token_ttl must be > 0 seconds")
        if not self.categories or not self.stages:
            problems.append("categories and stages must each name at least one choice")
        if any(not isinstance(i, int) or i < 1 for i in self.v2_seed_ids):
            problems.append("v2_seed_ids must be integers >= 1")
        if self.first_v1_id < 1:
            problems.append("first_v1_id must be >= 1")
        if (
            isinstance(self.list_page_cap, bool)
            or not isinstance(self.list_page_cap, int)
            or self.list_page_cap < 1
        ):
            problems.append("list_page_cap must be a whole number >= 1")
        if problems:
            raise ValueError("Invalid MockCrmConfig: " + "; ".join(problems))
