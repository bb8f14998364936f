"""The mock's v1 seeding, deleting and ``/_mock/references``: records entered or removed by hand in
the CRM, never counted as API calls, and the view that tells a row reached the CRM exactly once."""

from __future__ import annotations

import re
from typing import Any

import pytest
import requests

from airflow_opportunity_provider.mock_crm import FaultConfig, MockCrmServer
from airflow_opportunity_provider.mock_crm.pytest_plugin import post_v1

CREATE = {"venueId": "107", "name": "N", "contactId": "2", "typeId": "3", "sourceId": "4", "stageId": "5"}
V1_DATE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")


def _seed(server: MockCrmServer, records: Any) -> requests.Response:
    return requests.post(server.base_url + "/_mock/v1/opportunities", json=records, timeout=5)


def _delete(server: MockCrmServer, opportunity_id: int | str) -> requests.Response:
    return requests.delete(f"{server.base_url}/_mock/v1/opportunities/{opportunity_id}", timeout=5)


def _references(server: MockCrmServer) -> dict[str, list[int]]:
    answer: dict[str, list[int]] = requests.get(server.base_url + "/_mock/references", timeout=5).json()
    return answer


def test_seeding_over_http_stores_records_as_given_and_answers_their_ids(mock_crm: MockCrmServer) -> None:
    answer = _seed(
        mock_crm,
        [
            {"venueId": 107, "name": "By hand", "createdDate": "2019-04-12 09:00:35 UTC"},
            {"venueId": "200", "externalUrls": [{"ref": "row-9", "url": "https://x.example.com/9"}]},
        ],
    )

    assert (answer.status_code, answer.json()) == (200, {"ids": [1000, 1001]})
    first, second = mock_crm.store.v1_records()
    assert first == {
        "venueId": 107,
        "name": "By hand",
        "id": 1000,
        "createdDate": "2019-04-12 09:00:35 UTC",
        "modifiedDate": "2019-04-12 09:00:35 UTC",
        "externalUrls": [],
    }
    assert V1_DATE.fullmatch(second["createdDate"])
    assert second["modifiedDate"] == second["createdDate"]
    assert second["externalUrls"] == [{"ref": "row-9", "url": "https://x.example.com/9", "label": None}]


def test_seeding_is_neither_counted_nor_faulted(mock_crm: MockCrmServer) -> None:
    mock_crm.set_faults(FaultConfig(errors={503: 1.0}))

    answer = _seed(mock_crm, [{"venueId": 1}])
    ids = mock_crm.seed_v1_records([{"venueId": 1}])

    assert answer.json() == {"ids": [1000]}
    assert ids == [1001]
    counts = mock_crm.counters.snapshot()
    assert (counts["total_requests"], counts["v1_creates"]) == (0, 0)


def test_a_seeded_record_keeps_its_id_and_creates_count_on_after_it(mock_crm: MockCrmServer) -> None:
    ids = mock_crm.seed_v1_records([{"id": "2000", "venueId": 1}, {"venueId": 1}])
    created = post_v1(mock_crm, CREATE).json()["id"]

    assert ids == [2000, 2001]
    assert created == 2002
    assert [record["id"] for record in mock_crm.store.v1_records()] == [2000, 2001, 2002]


def test_seeded_modified_date_may_differ_from_created_date(mock_crm: MockCrmServer) -> None:
    (seeded_id,) = mock_crm.seed_v1_records(
        [{"venueId": 1, "createdDate": "2019-01-01 00:00:00 UTC", "modifiedDate": "2019-06-30 23:59:59 UTC"}]
    )

    record = mock_crm.store.v1_record(seeded_id)
    assert record is not None
    assert (record["createdDate"], record["modifiedDate"]) == (
        "2019-01-01 00:00:00 UTC",
        "2019-06-30 23:59:59 UTC",
    )


def test_a_seeded_record_can_be_updated_through_the_api(mock_crm: MockCrmServer) -> None:
    (seeded_id,) = mock_crm.seed_v1_records(
        [{"venueId": 1, "createdDate": "2019-01-01 00:00:00 UTC", "externalUrls": [{"ref": "row-1"}]}]
    )

    response = post_v1(
        mock_crm,
        {"id": seeded_id, "venueId": 1, "externalUrls": [{"ref": "row-1", "url": "https://x.example.com"}]},
    )

    record = mock_crm.store.v1_record(seeded_id)
    assert response.json() == {"success": True, "id": seeded_id}
    assert record is not None
    assert record["externalUrls"] == [{"ref": "row-1", "url": "https://x.example.com", "label": None}]
    assert record["createdDate"] == "2019-01-01 00:00:00 UTC"
    assert record["modifiedDate"] > "2019-01-01 00:00:00 UTC"


@pytest.mark.parametrize(
    ("records", "fragment"),
    [
        ({"venueId": 1}, "a JSON list"),
        ("records", "a JSON list"),
        ([{"venueId": 1}, "x"], "record 1: must be an object"),
        ([{"name": "no venue"}], "record 0: venueId is required"),
        ([{"venueId": "main"}], "record 0: venueId is required"),
        ([{"venueId": 1, "id": 0}], "record 0: id must be a whole number >= 1"),
        ([{"venueId": 1, "id": "x"}], "record 0: id must be a whole number >= 1"),
        ([{"venueId": 1, "id": 7}, {"venueId": 1, "id": "7"}], "record 1: the id 7 is already stored"),
        ([{"venueId": 1, "createdDate": "2019-04-12"}], "record 0: createdDate must read like"),
        ([{"venueId": 1, "createdDate": "2019-02-30 00:00:00 UTC"}], "record 0: createdDate must read like"),
        ([{"venueId": 1, "modifiedDate": "2019-04-12T09:00:35Z"}], "record 0: modifiedDate must read like"),
        ([{"venueId": 1, "externalUrls": [{"ref": str(i)} for i in range(4)]}], "record 0: At most 3"),
        (
            [{"venueId": 1, "externalUrls": [{"ref": "a", "url": "http://a"}]}],
            "record 0: externalUrls[0].url",
        ),
    ],
)
def test_a_bad_seed_stores_nothing_and_names_the_record(
    mock_crm: MockCrmServer, records: Any, fragment: str
) -> None:
    # A good record goes first, so that a refusal must also leave it unstored; it shifts the index.
    answer = _seed(mock_crm, [{"venueId": 1}, *records] if isinstance(records, list) else records)

    assert answer.status_code == 400
    expected = fragment.replace("record 1", "record 2").replace("record 0", "record 1")
    assert expected in answer.json()["error"], answer.json()
    assert mock_crm.store.v1_records() == []


def test_seeding_an_id_already_stored_is_refused(mock_crm: MockCrmServer) -> None:
    created = post_v1(mock_crm, CREATE).json()["id"]

    with pytest.raises(ValueError, match=f"the id {created} is already stored"):
        mock_crm.seed_v1_records([{"venueId": 1, "id": created}])
    assert len(mock_crm.store.v1_records()) == 1


def test_seeding_from_python_refuses_what_json_cannot_hold(mock_crm: MockCrmServer) -> None:
    with pytest.raises(ValueError, match="record 0: not a JSON value"):
        mock_crm.seed_v1_records([{"venueId": 1, "when": object()}])


def test_seeded_records_are_copies(mock_crm: MockCrmServer) -> None:
    record: dict[str, Any] = {"venueId": 1, "tags": ["a"]}
    (seeded_id,) = mock_crm.seed_v1_records([record])
    record["tags"].append("b")

    stored = mock_crm.store.v1_record(seeded_id)
    assert stored is not None
    assert stored["tags"] == ["a"]


def test_deleting_a_record_makes_a_later_update_answer_24222(mock_crm: MockCrmServer) -> None:
    created = post_v1(mock_crm, CREATE).json()["id"]
    kept = post_v1(mock_crm, CREATE).json()["id"]

    deleted = _delete(mock_crm, created)
    again = _delete(mock_crm, created)
    update = post_v1(mock_crm, {"id": created, "venueId": "107", "name": "Back?"})

    assert (deleted.status_code, deleted.json()) == (200, {"deleted": True, "id": created})
    assert (again.status_code, again.json()) == (404, {"deleted": False, "id": created})
    assert update.status_code == 404
    assert update.json()["specificCode"] == 24222
    assert [record["id"] for record in mock_crm.store.v1_records()] == [kept]
    assert mock_crm.counters["total_requests"] == 3  # the creates and the update, not the deletes


def test_deleting_from_python(mock_crm: MockCrmServer) -> None:
    (seeded_id,) = mock_crm.seed_v1_records([{"venueId": 1}])

    assert mock_crm.delete_v1_record(seeded_id) is True
    assert mock_crm.delete_v1_record(seeded_id) is False
    assert mock_crm.store.v1_records() == []


def test_a_delete_needs_a_numeric_id(mock_crm: MockCrmServer) -> None:
    answer = _delete(mock_crm, "abc")

    assert answer.status_code == 400
    assert "'abc' is not a v1 id" in answer.json()["error"]


def test_references_map_every_ref_to_the_records_holding_it(mock_crm: MockCrmServer) -> None:
    first = post_v1(mock_crm, {**CREATE, "externalUrls": [{"ref": "row-1"}, {"ref": "row-2"}]}).json()["id"]
    # The same row sent twice by a client that lost track: both records hold it.
    second = post_v1(mock_crm, {**CREATE, "externalUrls": [{"ref": "row-1"}]}).json()["id"]
    (seeded_id,) = mock_crm.seed_v1_records([{"venueId": 1, "externalUrls": [{"ref": "row-0"}]}])
    post_v1(mock_crm, CREATE)  # no external URL at all

    assert _references(mock_crm) == {"row-0": [seeded_id], "row-1": [first, second], "row-2": [first]}
    assert mock_crm.store.v1_references() == _references(mock_crm)


def test_references_follow_updates_and_deletes(mock_crm: MockCrmServer) -> None:
    first = post_v1(mock_crm, {**CREATE, "externalUrls": [{"ref": "row-1"}, {"ref": "row-2"}]}).json()["id"]
    second = post_v1(mock_crm, {**CREATE, "externalUrls": [{"ref": "row-3"}]}).json()["id"]

    post_v1(mock_crm, {"id": first, "venueId": "107", "externalUrls": [{"ref": "row-1", "url": None}]})
    mock_crm.delete_v1_record(second)

    assert _references(mock_crm) == {"row-2": [first]}


def test_references_are_not_counted_and_empty_at_first(mock_crm: MockCrmServer) -> None:
    assert _references(mock_crm) == {}
    assert mock_crm.counters["total_requests"] == 0


def test_reset_forgets_seeded_records(mock_crm: MockCrmServer) -> None:
    mock_crm.seed_v1_records([{"id": 4000, "venueId": 1, "externalUrls": [{"ref": "row-1"}]}])

    requests.post(mock_crm.base_url + "/_mock/reset", timeout=5)

    assert mock_crm.store.v1_records() == []
    assert _references(mock_crm) == {}
    assert post_v1(mock_crm, CREATE).json()["id"] == 1000
