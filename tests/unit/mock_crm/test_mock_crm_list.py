"""The mock's v1 ``getOpportunityList`` over real loopback HTTP: paging, every filter and how it
compares, the switches that make it ignore parameters, its signature check and its faults."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests

from airflow_opportunity_provider.auth import content_md5, sign_v1_request
from airflow_opportunity_provider.mock_crm import FaultConfig, MockCrmConfig, MockCrmServer
from airflow_opportunity_provider.mock_crm.pytest_plugin import (
    V1_LIST_REQUEST,
    V1_OPPORTUNITY_REQUEST,
    list_v1,
    post_v1,
)

PAGE_CAP = 10
# Seeded as ids 1000..1003; ids, venues and stages mix integers and strings, as clients send them.
RECORDS: list[dict[str, Any]] = [
    {
        "venueId": 107,
        "name": "Spring Gala",
        "contactId": "918",
        "stageId": "69",
        "createdDate": "2019-04-12 09:00:35 UTC",
    },
    {
        "venueId": "107",
        "name": "spring fair",
        "contactId": 918,
        "stageId": 70,
        "createdDate": "2019-04-12 18:30:00 UTC",
        "description": "",
    },
    {
        "venueId": "200",
        "name": "Autumn Ball",
        "stageId": "9",
        "createdDate": "2019-05-01 00:00:00 UTC",
        "description": None,
        "contact": {"firstName": "Ann"},
    },
    {
        "venueId": 200,
        "name": "Winter Gala Dinner",
        "contactId": "0918",
        "stageId": 100,
        "createdDate": "2020-01-01 12:00:00 UTC",
        "description": "VIP",
        "externalUrls": [{"ref": "row-4"}],
    },
]
CREATE = {"venueId": "107", "name": "N", "contactId": "2", "typeId": "3", "sourceId": "4", "stageId": "5"}


@pytest.fixture
def mock_crm_config() -> MockCrmConfig:
    return MockCrmConfig(list_page_cap=PAGE_CAP)


@pytest.fixture
def seeded(mock_crm: MockCrmServer) -> MockCrmServer:
    assert mock_crm.seed_v1_records(RECORDS) == [1000, 1001, 1002, 1003]
    return mock_crm


def _ids(body: dict[str, Any]) -> list[int]:
    return [record["id"] for record in body["results"]]


def _error(response: requests.Response) -> tuple[int, int, str, list[str]]:
    body = response.json()
    assert body["errorCode"] == response.status_code
    return response.status_code, body["specificCode"], body["message"], body["additionalMessages"]


# Paging


def test_the_answer_has_meta_and_every_record_field(seeded: MockCrmServer) -> None:
    body = list_v1(seeded)

    assert body["meta"] == {"totalResults": 4, "start": 0, "perPage": PAGE_CAP, "count": 4}
    assert _ids(body) == [1000, 1001, 1002, 1003]
    assert body["results"][0] == {
        **RECORDS[0],
        "id": 1000,
        "modifiedDate": "2019-04-12 09:00:35 UTC",
        "externalUrls": [],
    }
    assert body["results"][3]["externalUrls"] == [{"ref": "row-4", "url": None, "label": None}]


def test_a_record_created_through_the_api_is_listed_with_its_server_fields(mock_crm: MockCrmServer) -> None:
    link = {"ref": "row-1", "url": "https://warehouse.example.com/1", "label": "Row 1"}
    new_id = post_v1(mock_crm, {**CREATE, "externalUrls": [link]}).json()["id"]

    (record,) = list_v1(mock_crm, {"venueIds": [107]})["results"]

    assert record == mock_crm.store.v1_record(new_id)
    assert (record["id"], record["venueId"], record["externalUrls"]) == (new_id, "107", [link])
    assert record["createdDate"] == record["modifiedDate"]
    assert record["createdDate"].endswith(" UTC")


@pytest.fixture
def many(mock_crm: MockCrmServer) -> MockCrmServer:
    mock_crm.seed_v1_records([{"venueId": 1, "name": f"Row {i}"} for i in range(25)])
    return mock_crm


def test_the_page_size_defaults_to_the_cap_and_never_exceeds_it(many: MockCrmServer) -> None:
    default = list_v1(many)
    asked_more = list_v1(many, {"perPage": 50})

    assert default["meta"] == {"totalResults": 25, "start": 0, "perPage": PAGE_CAP, "count": PAGE_CAP}
    assert asked_more["meta"] == default["meta"]
    assert _ids(asked_more) == list(range(1000, 1010))


def test_pages_walk_every_record_once_in_id_order(many: MockCrmServer) -> None:
    seen: list[int] = []
    metas = []
    with requests.Session() as session:
        for start in range(0, 25, 4):
            body = list_v1(many, {"perPage": 4, "start": start}, session=session)
            metas.append(body["meta"])
            seen.extend(_ids(body))

    assert seen == list(range(1000, 1025))
    assert [meta["count"] for meta in metas] == [4, 4, 4, 4, 4, 4, 1]
    assert {meta["totalResults"] for meta in metas} == {25}
    assert [meta["start"] for meta in metas] == [0, 4, 8, 12, 16, 20, 24]


@pytest.mark.parametrize("start", [25, 26, 10_000])
def test_a_start_beyond_the_end_answers_an_empty_page(many: MockCrmServer, start: int) -> None:
    body = list_v1(many, {"start": start, "perPage": 5})

    assert body == {"meta": {"totalResults": 25, "start": start, "perPage": 5, "count": 0}, "results": []}


def test_numbers_may_come_as_strings_of_digits(many: MockCrmServer) -> None:
    body = list_v1(many, {"perPage": "3", "start": "22", "venueIds": ["1"]})

    assert body["meta"] == {"totalResults": 25, "start": 22, "perPage": 3, "count": 3}


def test_the_order_is_by_id_whatever_the_order_records_were_stored_in(mock_crm: MockCrmServer) -> None:
    mock_crm.seed_v1_records([{"id": 5000, "venueId": 1}, {"id": 1200, "venueId": 1}])
    post_v1(mock_crm, CREATE)  # after a seeded id the next create counts on from it: 5001
    mock_crm.seed_v1_records([{"id": 3000, "venueId": 1}])

    assert _ids(list_v1(mock_crm)) == [1200, 3000, 5000, 5001]
    assert _ids(list_v1(mock_crm, {"perPage": 2, "start": 1})) == [3000, 5000]


def test_an_empty_body_lists_the_first_page(seeded: MockCrmServer) -> None:
    response = post_v1(seeded, b"", request_string=V1_LIST_REQUEST)

    assert response.status_code == 200
    assert response.json()["meta"]["totalResults"] == 4


def test_an_empty_store_lists_nothing(mock_crm: MockCrmServer) -> None:
    assert list_v1(mock_crm) == {
        "meta": {"totalResults": 0, "start": 0, "perPage": PAGE_CAP, "count": 0},
        "results": [],
    }


def test_unknown_parameters_are_ignored(seeded: MockCrmServer) -> None:
    assert _ids(list_v1(seeded, {"sort": "name", "perpage": 1})) == [1000, 1001, 1002, 1003]


# Venues and filters


@pytest.mark.parametrize(
    ("venue_ids", "expected"),
    [
        ([107], [1000, 1001]),
        (["107"], [1000, 1001]),
        ([200, "107"], [1000, 1001, 1002, 1003]),
        ([999], []),
        ([], [1000, 1001, 1002, 1003]),
        (None, [1000, 1001, 1002, 1003]),
    ],
)
def test_venue_ids_keep_the_records_of_those_venues(
    seeded: MockCrmServer, venue_ids: Any, expected: list[int]
) -> None:
    body = list_v1(seeded, {"venueIds": venue_ids})

    assert _ids(body) == expected
    assert body["meta"]["totalResults"] == len(expected)


FILTER_CASES = [
    # Equals: exact text, letter case included; integers and strings of digits are one value.
    ({"name": "Spring Gala"}, [1000]),
    ({"name": "spring gala"}, []),
    ({"venueId": 107}, [1000, 1001]),
    ({"venueId": "107"}, [1000, 1001]),
    ({"stageId": 69}, [1000]),
    # In the id fields a leading zero does not matter either ("0918" is 918).
    ({"contactId": 918}, [1000, 1001, 1003]),
    ({"contactId": "0918"}, [1000, 1001, 1003]),
    ({"id": 1002}, [1002]),
    ({"id": "1002"}, [1002]),
    # Text searches ignore letter case.
    ({"name__CONTAINS": "GALA"}, [1000, 1003]),
    ({"name__NOTCONTAINS": "gala"}, [1001, 1002]),
    ({"name__BEGINS": "spring"}, [1000, 1001]),
    ({"name__ENDS": "BALL"}, [1002]),
    ({"name__CONTAINS": ""}, [1000, 1001, 1002, 1003]),
    ({"venueId__BEGINS": 10}, [1000, 1001]),
    # Bounds include the bound; numbers compare as numbers (9 < 69 < 70 < 100), whatever their type.
    ({"stageId__LESSTHAN": 69}, [1000, 1002]),
    ({"stageId__LESSTHAN": "69"}, [1000, 1002]),
    ({"stageId__GREATERTHAN": "70"}, [1001, 1003]),
    ({"stageId__GREATERTHAN": 69.5}, [1001, 1003]),
    ({"id__GREATERTHAN": 1002}, [1002, 1003]),
    # Dates compare as text, which orders them in time.
    ({"createdDate__GREATERTHAN": "2019-04-12 18:30:00 UTC"}, [1001, 1002, 1003]),
    ({"createdDate__LESSTHAN": "2019-04-12 18:30:00 UTC"}, [1000, 1001]),
    ({"createdDate__GREATERTHAN": "2019-04-12", "createdDate__LESSTHAN": "2019-04-13"}, [1000, 1001]),
    ({"createdDate__LESSTHAN": "2019-04-12"}, []),
    ({"modifiedDate__GREATERTHAN": "2020-01-01 00:00:00 UTC"}, [1003]),
    # Text bounds: "Autumn Ball" < "Spring Gala" < "Winter Gala Dinner" < "spring fair".
    ({"name__LESSTHAN": "Spring Gala"}, [1000, 1002]),
    ({"name__GREATERTHAN": "a"}, [1001]),
    # Not equal; a null or missing field matches no comparison, __NOT included.
    ({"name__NOT": "Autumn Ball"}, [1000, 1001, 1003]),
    ({"description__NOT": "VIP"}, [1001]),
    ({"description__NOTCONTAINS": "x"}, [1001, 1003]),
    ({"contactId__NOT": 918}, []),
    # Null, missing and empty.
    ({"description": "__ISNULL__"}, [1000, 1002]),
    ({"description__NOT": "__ISNULL__"}, [1001, 1003]),
    ({"contactId": "__ISNULL__"}, [1002]),
    ({"description__EMPTY": True}, [1000, 1001, 1002]),
    ({"description__EMPTY": False}, [1003]),
    ({"contact__EMPTY": False}, [1002]),
    # Objects and lists match no comparison, but are not null.
    ({"contact": "Ann"}, []),
    ({"contact__NOT": "Ann"}, []),
    ({"contact": "__ISNULL__"}, [1000, 1001, 1003]),
    ({"externalUrls__CONTAINS": "row"}, []),
    # A field no record has.
    ({"colour": "red"}, []),
    ({"colour": "__ISNULL__"}, [1000, 1001, 1002, 1003]),
    # Several keys must all match.
    ({"venueId": 200, "name__CONTAINS": "gala"}, [1003]),
    ({"name__CONTAINS": "gala", "stageId__LESSTHAN": 69, "description__EMPTY": True}, [1000]),
    ({}, [1000, 1001, 1002, 1003]),
]


@pytest.mark.parametrize(
    ("filters", "expected"), FILTER_CASES, ids=[json.dumps(case[0]) for case in FILTER_CASES]
)
def test_each_filter_keeps_what_its_rule_says(
    seeded: MockCrmServer, filters: dict[str, Any], expected: list[int]
) -> None:
    body = list_v1(seeded, {"filter": filters})

    assert _ids(body) == expected
    assert body["meta"]["totalResults"] == len(expected)


def test_a_true_value_matches_a_stored_boolean(mock_crm: MockCrmServer) -> None:
    mock_crm.seed_v1_records([{"venueId": 1, "vip": True}, {"venueId": 1, "vip": False}])

    assert _ids(list_v1(mock_crm, {"filter": {"vip": True}})) == [1000]
    assert _ids(list_v1(mock_crm, {"filter": {"vip": "false"}})) == [1001]


def test_filters_venues_and_paging_combine(seeded: MockCrmServer) -> None:
    body = list_v1(
        seeded, {"venueIds": [107, 200], "filter": {"name__CONTAINS": "a"}, "perPage": 2, "start": 1}
    )

    assert body["meta"] == {"totalResults": 4, "start": 1, "perPage": 2, "count": 2}
    assert _ids(body) == [1001, 1002]


# Refusals


@pytest.mark.parametrize(
    ("parameters", "message", "fragment"),
    [
        ({"perPage": 0}, "'perPage' does not validate", "whole number >= 1"),
        ({"perPage": -5}, "'perPage' does not validate", "whole number >= 1"),
        ({"perPage": "ten"}, "'perPage' does not validate", "whole number >= 1"),
        ({"perPage": 2.5}, "'perPage' does not validate", "whole number >= 1"),
        ({"perPage": True}, "'perPage' does not validate", "whole number >= 1"),
        ({"start": -1}, "'start' does not validate", "whole number >= 0"),
        ({"start": "first"}, "'start' does not validate", "whole number >= 0"),
        ({"venueIds": "107"}, "'venueIds' does not validate", "a list of venue ids"),
        ({"venueIds": {"id": 107}}, "'venueIds' does not validate", "a list of venue ids"),
        ({"venueIds": [107, "main"]}, "'venueIds' does not validate", "got 'main'"),
        ({"filter": ["name", "x"]}, "'filter' does not validate", "must be an object"),
        ({"filter": "name=x"}, "'filter' does not validate", "must be an object"),
        ({"filter": {"name__LIKE": "x"}}, "'filter' does not validate", "unknown suffix '__LIKE'"),
        ({"filter": {"name__contains": "x"}}, "'filter' does not validate", "unknown suffix '__contains'"),
        ({"filter": {"name__": "x"}}, "'filter' does not validate", "unknown suffix '__'"),
        ({"filter": {"__CONTAINS": "x"}}, "'filter' does not validate", "names no field"),
        ({"filter": {"name__EMPTY": "yes"}}, "'filter' does not validate", "takes true or false"),
        ({"filter": {"name__EMPTY": 1}}, "'filter' does not validate", "takes true or false"),
        ({"filter": {"name__CONTAINS": "__ISNULL__"}}, "'filter' does not validate", "__NOT only"),
        ({"filter": {"name": None}}, "'filter' does not validate", "got null"),
        ({"filter": {"name": ["a", "b"]}}, "'filter' does not validate", 'got ["a", "b"]'),
        ({"filter": {"name": {"a": 1}}}, "'filter' does not validate", "a string, a number or true/false"),
    ],
)
def test_a_malformed_request_is_refused_naming_the_parameter(
    seeded: MockCrmServer, parameters: dict[str, Any], message: str, fragment: str
) -> None:
    response = post_v1(seeded, parameters, request_string=V1_LIST_REQUEST)

    status, specific, answered_message, additional = _error(response)
    assert (status, specific, answered_message) == (400, 23016, message)
    assert fragment in additional[0], additional
    assert seeded.counters["v1_lists"] == 0
    assert seeded.counters["by_status"] == {"400": 1}


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"x"'])
def test_a_body_that_is_not_an_object_is_refused(seeded: MockCrmServer, body: bytes) -> None:
    response = post_v1(seeded, body, request_string=V1_LIST_REQUEST)

    assert _error(response)[:3] == (400, 23016, "The request does not validate")


# The switches that make the list ignore parameters


def test_ignoring_filters_keeps_venues_and_paging(seeded: MockCrmServer) -> None:
    seeded.set_faults(FaultConfig(list_ignores_filters=True))

    everything = list_v1(seeded, {"filter": {"name": "Autumn Ball"}})
    one_venue = list_v1(seeded, {"filter": {"name": "Autumn Ball"}, "venueIds": [107]})
    paged = list_v1(seeded, {"filter": {"name": "Autumn Ball"}, "perPage": 1, "start": 3})
    malformed = list_v1(seeded, {"filter": {"name__LIKE": "x"}})

    assert _ids(everything) == [1000, 1001, 1002, 1003]
    assert _ids(one_venue) == [1000, 1001]
    assert (_ids(paged), paged["meta"]["totalResults"]) == ([1003], 4)
    assert _ids(malformed) == [1000, 1001, 1002, 1003]


def test_ignoring_venue_ids_keeps_filters(seeded: MockCrmServer) -> None:
    seeded.set_faults(FaultConfig(list_ignores_venue_ids=True))

    everything = list_v1(seeded, {"venueIds": [107]})
    filtered = list_v1(seeded, {"venueIds": [107], "filter": {"name__CONTAINS": "gala"}})
    malformed = list_v1(seeded, {"venueIds": "107"})

    assert _ids(everything) == [1000, 1001, 1002, 1003]
    assert _ids(filtered) == [1000, 1003]
    assert _ids(malformed) == [1000, 1001, 1002, 1003]


def test_the_switches_are_set_over_http_and_off_by_default(seeded: MockCrmServer) -> None:
    defaults = requests.get(seeded.base_url + "/_mock/faults", timeout=5).json()
    answer = requests.post(
        seeded.base_url + "/_mock/faults",
        json={"list_ignores_filters": True, "list_ignores_venue_ids": True},
        timeout=5,
    )
    ignored = list_v1(seeded, {"venueIds": [107], "filter": {"name": "Autumn Ball"}})
    refused = requests.post(seeded.base_url + "/_mock/faults", json={"list_ignores_filters": "no"}, timeout=5)

    assert (defaults["list_ignores_filters"], defaults["list_ignores_venue_ids"]) == (False, False)
    assert answer.status_code == 200
    assert seeded.faults == FaultConfig(list_ignores_filters=True, list_ignores_venue_ids=True)
    assert _ids(ignored) == [1000, 1001, 1002, 1003]
    assert refused.status_code == 400
    assert "list_ignores_filters must be true or false" in refused.json()["error"]


def test_reset_turns_the_switches_off(seeded: MockCrmServer) -> None:
    seeded.set_faults(FaultConfig(list_ignores_filters=True))
    seeded.reset()
    seeded.seed_v1_records(RECORDS)

    assert _ids(list_v1(seeded, {"filter": {"name": "Autumn Ball"}})) == [1002]


# Signature, method and counting


def test_an_unsigned_list_is_refused(seeded: MockCrmServer) -> None:
    response = requests.post(seeded.base_url + V1_LIST_REQUEST, json={}, timeout=5)

    assert response.status_code == 401
    assert "X-Api-Authorization" in response.json()["message"]
    assert seeded.counters["auth_failures"] == 1
    assert seeded.counters["v1_lists"] == 0


def test_a_tampered_list_is_refused(seeded: MockCrmServer) -> None:
    signed = json.dumps({"venueIds": [107]}).encode()
    tampered = json.dumps({"venueIds": [200]}).encode()
    headers = sign_v1_request(seeded.config.api_key, seeded.config.api_secret, V1_LIST_REQUEST, signed)

    changed_body = requests.post(seeded.base_url + V1_LIST_REQUEST, data=tampered, headers=headers, timeout=5)
    with_new_md5 = requests.post(
        seeded.base_url + V1_LIST_REQUEST,
        data=tampered,
        headers={**headers, "Content-MD5": content_md5(tampered)},
        timeout=5,
    )

    assert changed_body.status_code == with_new_md5.status_code == 401
    assert "Content-MD5" in changed_body.json()["message"]
    assert "signature" in with_new_md5.json()["message"]


def test_a_list_signed_for_another_path_is_refused(seeded: MockCrmServer) -> None:
    body = b"{}"
    headers = sign_v1_request(seeded.config.api_key, seeded.config.api_secret, V1_OPPORTUNITY_REQUEST, body)

    response = requests.post(seeded.base_url + V1_LIST_REQUEST, data=body, headers=headers, timeout=5)

    assert response.status_code == 401


def test_a_list_with_the_wrong_secret_is_refused(seeded: MockCrmServer) -> None:
    response = post_v1(seeded, {}, request_string=V1_LIST_REQUEST, api_secret="not-the-secret")

    assert response.status_code == 401
    assert "not-the-secret" not in response.text


def test_the_list_only_answers_post_in_the_crm_namespace(seeded: MockCrmServer) -> None:
    wrong_method = requests.get(seeded.base_url + V1_LIST_REQUEST, timeout=5)
    wrong_namespace = post_v1(seeded, {}, request_string="/api/1.0/venue?action=getOpportunityList")

    assert wrong_method.status_code == 405
    assert wrong_namespace.status_code == 404


def test_lists_are_counted_and_change_nothing(seeded: MockCrmServer) -> None:
    before = seeded.store.v1_records()
    list_v1(seeded)
    list_v1(seeded, {"filter": {"name": "x"}})

    counts = seeded.counters.snapshot()
    assert (counts["v1_lists"], counts["total_requests"]) == (2, 2)
    assert counts["by_endpoint"] == {"v1_list": 2}
    assert counts["by_status"] == {"200": 2}
    assert (counts["v1_creates"], counts["v1_updates"]) == (0, 0)
    assert seeded.store.v1_records() == before


# Faults


@pytest.mark.parametrize("status", [429, 500, 503])
def test_injected_errors_apply_to_the_list(seeded: MockCrmServer, status: int) -> None:
    seeded.set_faults(FaultConfig(errors={status: 1.0}, retry_after=2))

    response = post_v1(seeded, {}, request_string=V1_LIST_REQUEST)

    assert response.status_code == status
    assert response.json()["errorCode"] == status
    assert response.headers.get("Retry-After") == ("2" if status in (429, 503) else None)
    assert seeded.counters["rejected_by_fault"] == 1
    assert seeded.counters["v1_lists"] == 0


def test_the_rate_limit_applies_to_the_list(seeded: MockCrmServer) -> None:
    seeded.set_faults(FaultConfig(rate_limit=1, burst=2))
    with requests.Session() as session:
        statuses = [
            post_v1(seeded, {}, request_string=V1_LIST_REQUEST, session=session).status_code for _ in range(4)
        ]

    assert statuses[:2] == [200, 200]
    assert 429 in statuses[2:]
    assert seeded.counters["rate_limited"] == statuses.count(429)


def test_latency_applies_to_the_list(seeded: MockCrmServer) -> None:
    seeded.set_faults(FaultConfig(latency=0.2))

    started = time.perf_counter()
    list_v1(seeded)

    assert time.perf_counter() - started >= 0.2


def test_a_list_is_never_dropped_after_commit(seeded: MockCrmServer) -> None:
    seeded.set_faults(FaultConfig(drop_after_commit_rate=1.0))

    body = list_v1(seeded)

    assert body["meta"]["totalResults"] == 4
    assert seeded.counters["dropped_after_commit"] == 0
