"""The mock's v1 ``externalUrls`` over real loopback HTTP: stored on create, merged by ``ref`` on
update, every invalid entry refused with nothing stored; and the dates the server puts on records."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import requests

from airflow_opportunity_provider.errors import PayloadValidationError
from airflow_opportunity_provider.mock_crm import MockCrmServer, v1
from airflow_opportunity_provider.mock_crm.pytest_plugin import post_v1
from airflow_opportunity_provider.schemas import ADD_OR_UPDATE_OPPORTUNITY, load_schema
from airflow_opportunity_provider.schemas import validate_add_or_update_payload as schema_check

CREATE = {"venueId": "107", "name": "N", "contactId": "2", "typeId": "3", "sourceId": "4", "stageId": "5"}
A = {"ref": "row-a", "url": "https://warehouse.example.com/a", "label": "Row A"}
B = {"ref": "row-b", "url": "https://warehouse.example.com/b"}
C = {"ref": "row-c", "label": "Row C"}


def _create(server: MockCrmServer, external_urls: Any) -> int:
    response = post_v1(server, {**CREATE, "externalUrls": external_urls})
    assert response.status_code == 200, response.text
    return int(response.json()["id"])


def _update(server: MockCrmServer, opportunity_id: int, **fields: Any) -> requests.Response:
    return post_v1(server, {"id": opportunity_id, "venueId": "107", **fields})


def _stored_urls(server: MockCrmServer, opportunity_id: int) -> list[dict[str, Any]]:
    record = server.store.v1_record(opportunity_id)
    assert record is not None
    return list(record["externalUrls"])


def _error(response: requests.Response) -> tuple[int, int, str, list[str]]:
    body = response.json()
    return response.status_code, body["specificCode"], body["message"], body["additionalMessages"]


def test_a_create_stores_every_entry_with_all_three_keys(mock_crm: MockCrmServer) -> None:
    new_id = _create(mock_crm, [A, B, {"ref": "gone", "url": None}])

    assert _stored_urls(mock_crm, new_id) == [A, {**B, "label": None}]


def test_a_create_without_external_urls_stores_an_empty_list(mock_crm: MockCrmServer) -> None:
    first = post_v1(mock_crm, CREATE).json()["id"]
    second = _create(mock_crm, None)

    assert _stored_urls(mock_crm, first) == []
    assert _stored_urls(mock_crm, second) == []


def test_an_update_merges_entries_by_ref(mock_crm: MockCrmServer) -> None:
    new_id = _create(mock_crm, [A, B])

    response = _update(
        mock_crm,
        new_id,
        externalUrls=[
            {"ref": "row-a", "label": "Renamed"},  # keeps its url
            {"ref": "row-b", "url": None},  # removed
            C,  # added at the end
        ],
    )

    assert response.json() == {"success": True, "id": new_id}
    assert _stored_urls(mock_crm, new_id) == [{**A, "label": "Renamed"}, {**C, "url": None}]


def test_an_update_can_replace_a_url_and_keep_the_label(mock_crm: MockCrmServer) -> None:
    new_id = _create(mock_crm, [A])

    _update(mock_crm, new_id, externalUrls=[{"ref": "row-a", "url": "https://elsewhere.example.com/a"}])

    assert _stored_urls(mock_crm, new_id) == [{**A, "url": "https://elsewhere.example.com/a"}]


def test_an_update_without_external_urls_keeps_them(mock_crm: MockCrmServer) -> None:
    new_id = _create(mock_crm, [A, B])

    _update(mock_crm, new_id, name="Renamed")

    assert _stored_urls(mock_crm, new_id) == [A, {**B, "label": None}]


def test_null_removes_every_entry(mock_crm: MockCrmServer) -> None:
    new_id = _create(mock_crm, [A, B, C])

    response = _update(mock_crm, new_id, externalUrls=None)

    assert response.status_code == 200
    assert _stored_urls(mock_crm, new_id) == []


def test_removing_an_unknown_ref_changes_nothing(mock_crm: MockCrmServer) -> None:
    new_id = _create(mock_crm, [A])

    response = _update(mock_crm, new_id, externalUrls=[{"ref": "never-stored", "url": None}])

    assert response.status_code == 200
    assert _stored_urls(mock_crm, new_id) == [A]


def test_a_fourth_entry_after_the_merge_is_refused_and_nothing_changes(mock_crm: MockCrmServer) -> None:
    new_id = _create(mock_crm, [A, B, C])
    before = mock_crm.store.v1_record(new_id)

    refused = _update(mock_crm, new_id, name="Renamed", externalUrls=[{"ref": "row-d"}])
    after_refusal = mock_crm.store.v1_record(new_id)
    # Removing one in the same request makes room.
    accepted = _update(mock_crm, new_id, externalUrls=[{"ref": "row-a", "url": None}, {"ref": "row-d"}])

    status, specific, message, additional = _error(refused)
    assert (status, specific, message) == (400, 23016, "'externalUrls' does not validate")
    assert "at most 3 external URLs; this request would leave 4" in additional[0]
    assert after_refusal == before  # the name in the refused request was not stored either
    assert accepted.status_code == 200
    assert [entry["ref"] for entry in _stored_urls(mock_crm, new_id)] == ["row-b", "row-c", "row-d"]
    assert mock_crm.counters["v1_updates"] == 1


INVALID_EXTERNAL_URLS = [
    pytest.param([{"ref": "a"}, {"ref": "b"}, {"ref": "c"}, {"ref": "d"}], "At most 3", id="four-entries"),
    pytest.param("https://x", "must be a list", id="not-a-list"),
    pytest.param({"ref": "a"}, "must be a list", id="an-object"),
    pytest.param(["https://x"], "externalUrls[0] must be an object", id="entry-not-an-object"),
    pytest.param([{"url": "https://x"}], "externalUrls[0].ref is required", id="missing-ref"),
    pytest.param([{"ref": ""}], "externalUrls[0].ref is required", id="empty-ref"),
    pytest.param([{"ref": 5}], "externalUrls[0].ref is required", id="ref-not-a-string"),
    pytest.param([{"ref": "r" * 256}], "ref must be at most 255 characters", id="ref-too-long"),
    pytest.param([A, {"ref": "row-a", "url": None}], "externalUrls[1].ref 'row-a' is given twice", id="dup"),
    pytest.param([{"ref": "a", "url": "http://x"}], "externalUrls[0].url must be an https:// URL", id="http"),
    pytest.param([{"ref": "a", "url": 5}], "externalUrls[0].url must be an https:// URL", id="url-number"),
    pytest.param([{"ref": "a", "label": 5}], "externalUrls[0].label must be a string", id="label-number"),
    pytest.param([{"ref": "a", "label": None}], "externalUrls[0].label must be a string", id="label-null"),
    pytest.param([{"ref": "a", "label": "l" * 256}], "label must be at most 255", id="label-too-long"),
    pytest.param(
        [B, {"ref": "a", "href": "x"}], "externalUrls[1] has unknown key(s) 'href'", id="unknown-key"
    ),
]


@pytest.mark.parametrize(("external_urls", "fragment"), INVALID_EXTERNAL_URLS)
def test_an_invalid_create_is_refused_naming_the_problem(
    mock_crm: MockCrmServer, external_urls: Any, fragment: str
) -> None:
    response = post_v1(mock_crm, {**CREATE, "externalUrls": external_urls})

    status, specific, message, additional = _error(response)
    assert (status, specific, message) == (400, 23016, "'externalUrls' does not validate")
    assert fragment in additional[0], additional
    assert mock_crm.store.v1_records() == []


@pytest.mark.parametrize(("external_urls", "fragment"), INVALID_EXTERNAL_URLS)
def test_an_invalid_update_is_refused_and_changes_nothing(
    mock_crm: MockCrmServer, external_urls: Any, fragment: str
) -> None:
    new_id = _create(mock_crm, [A])
    before = mock_crm.store.v1_record(new_id)

    response = _update(mock_crm, new_id, name="Renamed", externalUrls=external_urls)

    assert _error(response)[:2] == (400, 23016)
    assert fragment in _error(response)[3][0]
    assert mock_crm.store.v1_record(new_id) == before


@pytest.mark.parametrize(("external_urls", "fragment"), INVALID_EXTERNAL_URLS)
def test_the_schema_refuses_what_the_mock_refuses(external_urls: Any, fragment: str) -> None:
    payload = {"id": 1, "venueId": 1, "externalUrls": external_urls}
    if fragment.endswith("is given twice"):
        # Uniqueness by a key is beyond JSON Schema: the client checks it, the platform refuses it.
        schema_check(payload)
        return
    with pytest.raises(PayloadValidationError) as raised:
        schema_check(payload)
    assert all(path.startswith("$.externalUrls") for path, _ in raised.value.problems)


def test_the_schema_and_the_mock_share_their_limits() -> None:
    definition = load_schema(ADD_OR_UPDATE_OPPORTUNITY)["properties"]["externalUrls"]
    entry = load_schema(ADD_OR_UPDATE_OPPORTUNITY)["$defs"]["externalUrl"]

    assert definition["maxItems"] == v1.MAX_EXTERNAL_URLS == 3
    assert entry["properties"]["ref"]["maxLength"] == v1.MAX_EXTERNAL_URL_TEXT == 255
    assert entry["properties"]["label"]["maxLength"] == v1.MAX_EXTERNAL_URL_TEXT
    assert tuple(entry["properties"]) == v1.EXTERNAL_URL_KEYS


def test_the_longest_ref_and_label_are_accepted(mock_crm: MockCrmServer) -> None:
    longest = {"ref": "r" * 255, "url": "https://x.example.com", "label": "l" * 255}

    new_id = _create(mock_crm, [longest])

    assert _stored_urls(mock_crm, new_id) == [longest]


def test_inspection_shows_external_urls(mock_crm: MockCrmServer) -> None:
    new_id = _create(mock_crm, [A])

    records = requests.get(mock_crm.base_url + "/_mock/opportunities", timeout=5).json()["v1"]

    assert [(record["id"], record["externalUrls"]) for record in records] == [(new_id, [A])]


class _Clock:
    """A clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2019, 4, 12, 9, 0, 35, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> _Clock:
    return _Clock()


@pytest.fixture
def dated_crm(clock: _Clock) -> Iterator[MockCrmServer]:
    with MockCrmServer(clock=clock).running() as server:
        yield server


def _dates(server: MockCrmServer, opportunity_id: int) -> tuple[str, str]:
    record = server.store.v1_record(opportunity_id)
    assert record is not None
    return record["createdDate"], record["modifiedDate"]


def test_a_create_sets_both_dates_and_every_update_moves_modified_date(
    dated_crm: MockCrmServer, clock: _Clock
) -> None:
    new_id = post_v1(dated_crm, CREATE).json()["id"]
    created = _dates(dated_crm, new_id)
    clock.now += timedelta(hours=1, seconds=2)
    _update(dated_crm, new_id, name="Renamed")
    first_update = _dates(dated_crm, new_id)
    clock.now += timedelta(days=1)
    _update(dated_crm, new_id)  # an update that changes no field still counts as a change
    second_update = _dates(dated_crm, new_id)

    assert created == ("2019-04-12 09:00:35 UTC", "2019-04-12 09:00:35 UTC")
    assert first_update == ("2019-04-12 09:00:35 UTC", "2019-04-12 10:00:37 UTC")
    assert second_update == ("2019-04-12 09:00:35 UTC", "2019-04-13 10:00:37 UTC")


def test_dates_are_written_in_utc(dated_crm: MockCrmServer, clock: _Clock) -> None:
    clock.now = datetime(2024, 1, 1, 11, 30, 0, tzinfo=timezone(timedelta(hours=10)))

    new_id = post_v1(dated_crm, CREATE).json()["id"]

    assert _dates(dated_crm, new_id) == ("2024-01-01 01:30:00 UTC", "2024-01-01 01:30:00 UTC")


def test_a_refused_update_leaves_modified_date(dated_crm: MockCrmServer, clock: _Clock) -> None:
    new_id = _create(dated_crm, [A, B, C])
    clock.now += timedelta(minutes=5)

    refused = _update(dated_crm, new_id, externalUrls=[{"ref": "row-d"}])

    assert refused.status_code == 400
    assert _dates(dated_crm, new_id) == ("2019-04-12 09:00:35 UTC", "2019-04-12 09:00:35 UTC")


def test_dates_and_ids_sent_by_a_client_are_ignored(dated_crm: MockCrmServer) -> None:
    new_id = post_v1(
        dated_crm, {**CREATE, "createdDate": "2000-01-01 00:00:00 UTC", "modifiedDate": "yesterday"}
    ).json()["id"]
    _update(dated_crm, new_id, createdDate="1999-01-01 00:00:00 UTC")

    record = dated_crm.store.v1_record(new_id)
    assert record is not None
    assert (record["id"], record["createdDate"], record["modifiedDate"]) == (
        new_id,
        "2019-04-12 09:00:35 UTC",
        "2019-04-12 09:00:35 UTC",
    )
