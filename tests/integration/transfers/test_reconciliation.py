"""The sync asks the CRM: records it already holds are adopted on a first sync, records deleted
there are rejected or created again. Over real loopback against the mock CRM, each case also with
the mock's list ignoring its filter and venues (as a server that does not support them would)."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_opportunity_provider import sample_warehouse
from airflow_opportunity_provider.mock_crm import FaultConfig, MockCrmServer
from airflow_opportunity_provider.transfers import SqlToOpportunityOperator
from tests.integration.transfers.helpers import records_by_ref, reject_rows, run, state_rows

pytestmark = pytest.mark.usefixtures("airflow_db")

Factory = Callable[..., SqlToOpportunityOperator]


@pytest.fixture(params=["list-filters", "list-ignores-filters"])
def crm(request: pytest.FixtureRequest, mock_crm: MockCrmServer) -> MockCrmServer:
    ignores = request.param == "list-ignores-filters"
    mock_crm.set_faults(FaultConfig(list_ignores_filters=ignores, list_ignores_venue_ids=ignores))
    return mock_crm


def _rows(path: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(path) as connection:
        return [
            (ref, name, int(venue))
            for ref, name, venue in connection.execute(
                "SELECT opportunity_ref, name, venue_id FROM crm_opportunities ORDER BY opportunity_ref"
            )
        ]


def test_a_first_sync_adopts_the_records_the_crm_holds_and_rejects_names_that_match_twice(
    warehouse: Callable[..., Path], state_db: Path, make_operator: Factory, crm: MockCrmServer
) -> None:
    rows = _rows(warehouse(120))
    by_hand = crm.seed_v1_records(
        [{"venueId": venue, "name": name, "stageId": 1} for _, name, venue in rows[:100]]
    )
    twins = crm.seed_v1_records(
        [{"venueId": venue, "name": name} for _, name, venue in rows[100:102] for _ in range(2)]
    )
    noise = crm.seed_v1_records([{"venueId": rows[0][2], "name": f"Unrelated {n}"} for n in range(30)])
    lists_before = crm.counters.snapshot()["v1_lists"]

    summary, failure = run(make_operator(match_on=["name"], max_rejected=2))

    assert failure is None, failure
    assert (summary["adopted"], summary["updated"], summary["created"], summary["rejected"]) == (
        100,
        100,
        18,
        2,
    )
    counters = crm.counters.snapshot()
    assert counters["v1_creates"] == 18
    list_requests = counters["v1_lists"] - lists_before
    print(
        f"match_on over {len(by_hand) + len(twins) + len(noise)} CRM records: {list_requests} list requests"
    )
    # The 100 are updated in place, now carrying their row's reference; nothing was duplicated.
    records = {key: found for key, found in records_by_ref(crm).items() if key != "None"}
    assert sorted(records) == sorted(ref for ref, _, _ in rows[:100] + rows[102:])
    assert all(len(found) == 1 for found in records.values()), "a record was created twice"
    assert len(crm.store.v1_records()) == 100 + 4 + 30 + 18
    state = state_rows(state_db)
    assert sorted(int(state[ref]["crm_id"]) for ref, _, _ in rows[:100]) == sorted(by_hand)
    assert all(len(ids) == 1 for ids in crm.store.v1_references().values())
    assert len(crm.store.v1_references()) == 118
    ambiguous = [row for row in reject_rows(state_db) if row["error_code"] == "ambiguous_match"]
    assert sorted(row["source_key"] for row in ambiguous) == [rows[100][0], rows[101][0]]
    for row, pair in zip(
        sorted(ambiguous, key=lambda r: r["source_key"]), (twins[:2], twins[2:]), strict=True
    ):
        assert all(str(candidate) in row["error_message"] for candidate in pair)

    # The next run sends nothing for the adopted rows, and rejects the twins again.
    before = crm.counters.snapshot()["total_requests"]
    again, failure = run(make_operator(match_on=["name"], max_rejected=2))
    assert failure is None, failure
    assert (again["unchanged"], again["rejected"], again["created"], again["adopted"]) == (118, 2, 0, 0)
    sent = crm.counters.snapshot()["total_requests"] - before
    assert sent == again["requests_sent"]
    assert crm.counters.snapshot()["v1_creates"] == 18


def test_without_match_on_a_first_sync_creates_every_row(
    warehouse: Callable[..., Path], state_db: Path, make_operator: Factory, crm: MockCrmServer
) -> None:
    rows = _rows(warehouse(10))
    crm.seed_v1_records([{"venueId": venue, "name": name} for _, name, venue in rows])
    summary, failure = run(make_operator())
    assert failure is None
    assert (summary["created"], summary["adopted"]) == (10, 0)
    assert crm.counters.snapshot()["v1_lists"] == 0  # nothing asked of the list either


def test_records_deleted_in_the_crm_are_rejected_until_recreated_on_request(
    warehouse: Callable[..., Path], state_db: Path, make_operator: Factory, crm: MockCrmServer
) -> None:
    path = warehouse(20)
    summary, failure = run(make_operator())
    assert (failure, summary["created"]) == (None, 20)
    state = state_rows(state_db)
    gone = sorted(state)[:5]
    for key in gone:
        assert crm.delete_v1_record(int(state[key]["crm_id"]))
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE crm_opportunities SET description = COALESCE(description, '') || ' (v2)'")

    # Default: the five are rejected with 24222 and a message naming the stored id; the rest update.
    summary, failure = run(make_operator())
    assert failure is not None
    assert (summary["updated"], summary["rejected"], summary["missing"], summary["created"]) == (15, 5, 5, 0)
    rejects = [row for row in reject_rows(state_db) if row["error_code"] == "24222"]
    assert sorted(row["source_key"] for row in rejects) == gone
    for row in rejects:
        assert f"record {state[row['source_key']]['crm_id']}" in row["error_message"]
        assert "on_missing_record='recreate'" in row["error_message"]
    # And so on every run until someone acts: never created behind the user's back.
    summary, failure = run(make_operator())
    assert (summary["rejected"], summary["missing"], summary["created"]) == (5, 5, 0)
    assert crm.counters.snapshot()["v1_creates"] == 20

    summary, failure = run(make_operator(on_missing_record="recreate"))
    assert failure is None, failure
    assert (summary["created"], summary["missing"], summary["rejected"]) == (5, 5, 0)
    records = records_by_ref(crm)
    assert sorted(records) == sorted(state)
    assert all(len(found) == 1 for found in records.values())
    now = state_rows(state_db)
    for key in gone:
        assert now[key]["outcome"] == "created"
        assert now[key]["crm_id"] == str(records[key][0]["id"]) != state[key]["crm_id"]

    before = crm.counters.snapshot()["total_requests"]
    summary, failure = run(make_operator())
    assert (failure, summary["unchanged"]) == (None, 20)
    assert crm.counters.snapshot()["total_requests"] == before


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"target": "v2", "on_missing_record": "recreate"}, "v2 platform only updates"),
        ({"on_missing_record": "delete"}, "on_missing_record must be"),
        ({"match_on": []}, "match_on must be"),
        ({"match_on": ["id"]}, "cannot use 'id'"),
        ({"target": "v2", "match_on": ["name"]}, "match_on needs target='v1'"),
        ({"reference": "yes"}, "reference must be True or False"),
        ({"reference_url": "http://x/{key}"}, "https://"),
        ({"unknown_grace_seconds": -1}, "unknown_grace_seconds"),
    ],
)
def test_reconciliation_parameters_are_checked_when_the_dag_is_parsed(
    make_operator: Factory, options: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        make_operator(**options)


def test_a_v2_record_the_platform_does_not_hold_is_rejected_and_counted_missing(
    warehouse: Callable[..., Path], state_db: Path, make_operator: Factory, mock_crm: MockCrmServer
) -> None:
    warehouse(1)

    def nexus(row: dict[str, Any]) -> dict[str, Any]:
        gone = row["nexus_id"] == 1
        return {
            "Id": 99_999 if gone else row["nexus_id"],
            "opportunityType": row["opportunity_type"],
            "OpportunityName": f"{row['opportunity_name']} (sync)",
        }

    summary, failure = run(
        make_operator(
            sql=sample_warehouse.V2_SQL + " LIMIT 10",
            key_columns=["nexus_id", "opportunity_type"],
            mapping=nexus,
            target="v2",
            sync_name="test.nexus",
        )
    )
    assert failure is not None  # a rejected row, with the default max_rejected=0
    assert (summary["missing"], summary["rejected"], summary["updated"]) == (2, 2, 8)
    missing = [row for row in reject_rows(state_db) if row["error_code"] == "404"]
    assert len(missing) == 2
    assert all("opportunity 99999" in row["error_message"] for row in missing)
    assert all("recreate" not in row["error_message"] for row in missing)  # v2 cannot create
