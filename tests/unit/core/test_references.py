"""The sync's reference and the reading of the v1 list: pure functions, no server."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_opportunity_provider.errors import OpportunityAmbiguousMatchError, OpportunityApiError
from airflow_opportunity_provider.protocol import OpportunityPage
from airflow_opportunity_provider.references import (
    MAX_EXTERNAL_URLS,
    REFERENCE_PREFIX,
    ListPaging,
    check_url_template,
    field_text,
    lookup_filter,
    platform_time,
    reference_entry,
    reference_for,
    the_one,
    with_reference,
)


def test_the_reference_is_stable_across_releases() -> None:
    # Written down once: a change here would make every stored record unfindable.
    assert reference_for("warehouse_to_crm.load", "WH-000001") == (
        "airflow-sync:f24b44da4351ff538613164d17969f3926aaea7e"
    )


@pytest.mark.parametrize(
    ("sync_name", "key"),
    [("s", ""), ("s", "k"), ("a" * 1000, "b" * 5000), ("ünï", "кей\x00\n"), ("s", '["1","2"]')],
)
def test_the_reference_has_one_length_whatever_the_key(sync_name: str, key: str) -> None:
    reference = reference_for(sync_name, key)
    assert reference.startswith(REFERENCE_PREFIX)
    assert len(reference) == len(REFERENCE_PREFIX) + 40 == 53
    assert reference == reference_for(sync_name, key)  # the same for every retry and run


def test_distinct_syncs_and_keys_get_distinct_references() -> None:
    long_a, long_b = "k" * 600 + "A", "k" * 600 + "B"
    pairs = [
        ("s", long_a),
        ("s", long_b),
        ("a:b", "c"),  # a name and a key must not run into each other
        ("a", "b:c"),
        ("s", "WH-1"),
        ("t", "WH-1"),
        ("s", "WH-10"),
        ("s1", "0"),
        ("s", "10"),
    ]
    references = {reference_for(sync, key) for sync, key in pairs}
    assert len(references) == len(pairs)
    keys = {reference_for("one.sync", f"WH-{number:06d}") for number in range(20_000)}
    assert len(keys) == 20_000


def test_the_entry_carries_ref_label_and_an_escaped_url() -> None:
    entry = reference_entry(
        "airflow-sync:x",
        label="Warehouse sync",
        url_template="https://dwh.example.com/{sync_name}/rows/{key}",
        sync_name="a.b",
        key="WH/1 ?&",
    )
    assert entry == {
        "ref": "airflow-sync:x",
        "url": "https://dwh.example.com/a.b/rows/WH%2F1%20%3F%26",
        "label": "Warehouse sync",
    }
    assert reference_entry("r", label=None) == {"ref": "r"}


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("http://example.com/{key}", "https://"),
        ("https://example.com/{row}", "placeholders"),
        ("https://example.com/{0}", "placeholders"),
        (12, "https://"),
    ],
)
def test_a_bad_url_template_is_refused_naming_the_parameter(template: Any, problem: str) -> None:
    with pytest.raises(ValueError, match="reference_url") as refused:
        check_url_template(template)
    assert problem in str(refused.value)


def test_the_mapping_keeps_its_own_entries_and_more_than_three_is_refused() -> None:
    ours = {"ref": "airflow-sync:x", "label": "Warehouse sync"}
    own = [{"ref": "erp", "url": "https://erp.example.com/1"}, {"ref": "web", "url": None}]
    payload = with_reference({"name": "n", "externalUrls": own}, ours)
    assert payload["externalUrls"] == [*own, ours]
    # An entry of the sync's own ref is replaced, not doubled.
    again = with_reference(payload, ours)
    assert again["externalUrls"] == [*own, ours]
    assert with_reference({"name": "n"}, ours)["externalUrls"] == [ours]
    with pytest.raises(ValueError, match="at most 3") as refused:
        with_reference({"externalUrls": [{"ref": str(n)} for n in range(MAX_EXTERNAL_URLS)]}, ours)
    assert "reference=False" in str(refused.value)
    with pytest.raises(ValueError, match="externalUrls must be a list"):
        with_reference({"externalUrls": "https://x"}, ours)


def test_the_lookup_window_is_in_the_lists_date_format_with_a_days_slack() -> None:
    assert platform_time(1_555_059_635) == "2019-04-12 09:00:35 UTC"
    assert lookup_filter("Lead", 1_555_059_635 + 86_400) == {
        "name": "Lead",
        "createdDate__GREATERTHAN": "2019-04-12 09:00:35 UTC",
    }
    assert lookup_filter() == {}


def test_field_text_reads_numbers_and_their_digits_alike() -> None:
    assert field_text(107) == field_text("107") == field_text(" 107 ") == field_text(107.0) == "107"
    assert field_text("Lead A") == "Lead A"
    assert field_text(None) is None


def _page(total: int, start: int, count: int, per_page: int = 100) -> OpportunityPage:
    return OpportunityPage(total, start, per_page, [{"id": start + n} for n in range(count)])


def test_paging_follows_what_each_page_held_when_the_server_caps_per_page() -> None:
    paging = ListPaging(per_page=100)
    # The server caps pages at 30: starts follow 30, 60, 90; the fourth page ends the list.
    assert paging.next_start(_page(100, 0, 30, 30)) == 30
    assert paging.next_start(_page(100, 30, 30, 30)) == 60
    assert paging.next_start(_page(100, 60, 30, 30)) == 90
    assert paging.next_start(_page(100, 90, 10, 30)) is None
    assert paging.pages == 4


def test_paging_stops_at_an_empty_page_and_on_an_empty_list() -> None:
    assert ListPaging().next_start(_page(0, 0, 0)) is None
    paging = ListPaging(per_page=10)
    assert paging.next_start(_page(50, 0, 10, 10)) == 10
    assert paging.next_start(_page(50, 10, 0, 10)) is None  # records went away meanwhile


def test_a_list_that_never_ends_is_an_error_not_an_endless_read() -> None:
    paging = ListPaging(per_page=10)

    # The server ignores `start` and claims ever more records: bounded by the first page's total.
    def endless() -> None:
        for _ in range(100):
            assert paging.next_start(OpportunityPage(30 + paging.pages * 1000, 0, 10, [{"id": 1}] * 10))

    with pytest.raises(OpportunityApiError, match="kept answering"):
        endless()
    assert paging.pages <= 30 // 10 + 2


def test_per_page_must_be_a_whole_number() -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="per_page"):
            ListPaging(bad)  # type: ignore[arg-type]


def test_the_one_record_holding_a_reference() -> None:
    def record(record_id: int, *refs: str) -> dict[str, Any]:
        return {"id": record_id, "externalUrls": [{"ref": ref, "url": None, "label": ""} for ref in refs]}

    records = [record(1, "other"), record(2, "mine", "other"), {"id": 3}, {"id": 4, "externalUrls": None}]
    assert the_one("mine", records) == 2
    assert the_one("absent", records) is None
    with pytest.raises(OpportunityAmbiguousMatchError, match=r"ids 2, 5") as refused:
        the_one("mine", [*records, record(5, "mine")])
    assert refused.value.ids == [2, 5]
