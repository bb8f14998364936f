"""How many v1 list requests each way of asking the CRM costs: printed, never asserted.

Two questions, each against the mock CRM (page cap 100) with its list honouring the filter and
ignoring it:
- adoption (``match_on``): ``NEW`` rows with no state over a venue of ``HELD`` records: the
  venue's list read once, against one filtered lookup (``{"name": ...}``) per row;
- reconciliation: ``UNKNOWN`` lost answers among ``CREATED`` records made by the run: what the
  reconciler spends (it chooses per venue), against one filtered lookup per unknown and one
  listing of the window.

Run: ``.venv/bin/python -m benchmarks.lookup_requests``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from airflow_opportunity_provider.hooks.async_client import AsyncOpportunityClient
from airflow_opportunity_provider.hooks.opportunity import OpportunityHook
from airflow_opportunity_provider.mock_crm import FaultConfig, MockCrmConfig, MockCrmServer
from airflow_opportunity_provider.mock_crm.testing import connection_dict
from airflow_opportunity_provider.references import reference_for
from airflow_opportunity_provider.transfers.keys import key_digest
from airflow_opportunity_provider.transfers.outcomes import Outcome
from airflow_opportunity_provider.transfers.reconcile import Matcher, Reconciler
from airflow_opportunity_provider.transfers.state import StateRecord

VENUE = 107
NEW, HELD = 2000, 500
CREATED, UNKNOWN = 2000, 40


def _lists(server: MockCrmServer) -> int:
    return int(server.counters.snapshot()["v1_lists"])


def _client(server: MockCrmServer) -> AsyncOpportunityClient:
    os.environ["AIRFLOW_CONN_OPPORTUNITY_DEFAULT"] = json.dumps(
        connection_dict(server.base_url, server.config)
    )
    return AsyncOpportunityClient.from_hook(OpportunityHook())


def adoption(server: MockCrmServer) -> tuple[int, int]:
    server.reset()
    server.seed_v1_records([{"venueId": VENUE, "name": f"Held {n}"} for n in range(HELD)])
    rows = [{"venueId": VENUE, "name": f"Held {n}" if n < HELD else f"New {n}"} for n in range(NEW)]

    async def once() -> int:
        before = _lists(server)
        async with _client(server) as client:
            matcher = Matcher(client, ["name"])
            for row in rows:
                await matcher.candidates(row, None)
        return _lists(server) - before

    async def per_row() -> int:
        before = _lists(server)
        async with _client(server) as client:
            for row in rows:
                async for _ in client.list_opportunities([VENUE], {"name": row["name"]}):
                    pass
        return _lists(server) - before

    return asyncio.run(once()), asyncio.run(per_row())


def reconciliation(server: MockCrmServer) -> tuple[int, int, int]:
    server.reset()
    now = time.time()
    keys = [f"K{n:05d}" for n in range(CREATED)]
    server.seed_v1_records(
        [
            {
                "venueId": VENUE,
                "name": f"Row {key}",
                "externalUrls": [{"ref": reference_for("bench.sync", key)}],
            }
            for key in keys
        ]
    )
    unknown = [
        StateRecord(
            key=key,
            digest=key_digest(key),
            crm_id=None,
            payload_hash="h",
            outcome=Outcome.UNKNOWN,
            run_id=None,
            attempted_at=now,
            create_hint={"venueId": str(VENUE), "name": f"Row {key}"},
        )
        for key in keys[:: CREATED // UNKNOWN]
    ]

    async def chosen() -> int:
        async with _client(server) as client:
            reconciler = Reconciler(client, "bench.sync")
            found = await reconciler.resolve(unknown)
            assert all(resolution.status == "found" for resolution in found.values()), found
            return reconciler.pages_read

    async def per_row() -> int:
        before = _lists(server)
        async with _client(server) as client:
            reconciler = Reconciler(client, "bench.sync")
            for record in unknown:
                await reconciler._one(str(VENUE), record)
        return _lists(server) - before

    async def listing() -> int:
        before = _lists(server)
        async with _client(server) as client:
            async for _ in client.list_opportunities(
                [VENUE], {"createdDate__GREATERTHAN": "2000-01-01 00:00:00 UTC"}
            ):
                pass
        return _lists(server) - before

    return asyncio.run(chosen()), asyncio.run(per_row()), asyncio.run(listing())


def main() -> None:
    """Print the table."""
    print("| List filter | Question | Chosen | Per-row lookups | One listing |")
    print("|---|---|---|---|---|")
    for ignores in (False, True):
        server = MockCrmServer(MockCrmConfig(faults=FaultConfig(list_ignores_filters=ignores))).start()
        try:
            label = "ignored" if ignores else "honoured"
            once, per_row = adoption(server)
            print(
                f"| {label} | adopt: {NEW} new rows, venue of {HELD} | {once} (listing) | {per_row} | {once} |"
            )
            chosen, per_row, listing = reconciliation(server)
            print(
                f"| {label} | reconcile: {UNKNOWN} unknown of {CREATED} created | {chosen} | {per_row} | {listing} |"
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
