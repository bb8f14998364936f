"""The mock CRM's state: stored v1 and v2 opportunities and the request counters.

The server's event loop writes; tests read and seed from their own thread. Every method takes a
lock and every read returns a copy, so a reader never sees a half-made change.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from airflow_opportunity_provider.mock_crm import v1

V2_TYPES = ("Pre", "Post")
# How the v1 platform writes a record's createdDate and modifiedDate: "2019-04-12 09:00:35 UTC".
V1_DATE_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
_V1_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} UTC$")

# The names of the plain counters that snapshot() always reports, even at zero.
COUNTER_NAMES = (
    "v1_creates",
    "v1_updates",
    "v1_lists",
    "v2_puts",
    "token_issued",
    "token_refused",
    "auth_failures",
    "rejected_by_fault",
    "rate_limited",
    "dropped_after_commit",
)


def seed_v2_record(opportunity_id: int, opportunity_type: str) -> dict[str, Any]:
    """The record a v2 opportunity has before any PUT (deterministic, so tests can predict it).

    :param opportunity_id: the platform's opportunity id.
    :param opportunity_type: ``"Pre"`` or ``"Post"``.
    """
    return {
        "Type": opportunity_type,
        "ID": opportunity_id,
        "VisitID": 500000 + opportunity_id,
        "CustomerID": 700000 + opportunity_id,
        "OpportunityName": f"Seed opportunity {opportunity_id}",
        "OpportunityID": f"OPP-{opportunity_id:06d}",
        "OpportunityCategoryID": 1,
        "OpportunityStageID": 1,
        "OpportunityCompetitorID": None,
        "AcctPotential": Decimal("0.00"),
        "SalesRevenue": Decimal("0.00"),
        "PendingCloseDate": None,
        "VisitCustomerOpportunityID": None,
        "FollowUpSentDate": None,
    }


def format_v1_date(moment: datetime) -> str:
    """``moment`` as the v1 platform writes a record date, in UTC: ``2019-04-12 09:00:35 UTC``.

    :param moment: an aware datetime (a naive one is taken as UTC).
    """
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime(V1_DATE_FORMAT)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class OpportunityStore:
    """Stored opportunities of both platforms.

    v1 records keep the fields exactly as the client sent them (strings stay strings) plus the
    ones the server sets: ``id``, ``createdDate`` and ``modifiedDate`` (``V1_DATE_FORMAT``, from
    ``clock``) and ``externalUrls`` (a list, ``[]`` when none). v2 records are the flat
    ``V2OpportunityPrePostFlat`` shape, money as ``Decimal``.

    :param first_v1_id: the id the first v1 create is given.
    :param v2_seed_ids: the v2 ids that exist, each with a ``Pre`` and a ``Post`` record.
    :param clock: the time v1 records are dated with (UTC now when omitted).
    """

    def __init__(
        self, first_v1_id: int, v2_seed_ids: Iterable[int], clock: Callable[[], datetime] | None = None
    ) -> None:
        self._lock = threading.Lock()
        self._first_v1_id = first_v1_id
        self._v2_seed_ids = tuple(v2_seed_ids)
        self._clock = clock or _utc_now
        self._v1: dict[int, dict[str, Any]] = {}
        self._next_v1_id = first_v1_id
        self._v2: dict[tuple[int, str], dict[str, Any]] = {}
        self.reset()

    def reset(self) -> None:
        """Forget every v1 record, restart v1 ids and put the v2 records back to their seed."""
        with self._lock:
            self._v1 = {}
            self._next_v1_id = self._first_v1_id
            self._v2 = {(i, t): seed_v2_record(i, t) for i in self._v2_seed_ids for t in V2_TYPES}

    # v1

    def v1_create(self, write: v1.OpportunityWrite) -> int:
        """Store a new v1 opportunity and return the id given to it.

        :param write: a checked create; the store keeps its fields, so do not change them after.
        :raises v1.V1Refusal: when its external URLs do not fit (nothing is stored then).
        """
        with self._lock:
            external_urls = write.merged_external_urls([])
            new_id = self._next_v1_id
            self._next_v1_id += 1
            now = format_v1_date(self._clock())
            self._v1[new_id] = {
                **write.fields,
                "id": new_id,
                "createdDate": now,
                "modifiedDate": now,
                v1.EXTERNAL_URLS: external_urls,
            }
            return new_id

    def v1_exists(self, opportunity_id: int) -> bool:
        """Whether a v1 opportunity with this id is stored.

        :param opportunity_id: the v1 id.
        """
        with self._lock:
            return opportunity_id in self._v1

    def v1_update(self, opportunity_id: int, write: v1.OpportunityWrite) -> bool:
        """Merge a checked update into a stored v1 opportunity; ``False`` when there is none.

        The fields given replace the stored ones, external URLs merge by ``ref`` and
        ``modifiedDate`` becomes now.

        :param opportunity_id: the v1 id.
        :param write: a checked update; the store keeps its fields.
        :raises v1.V1Refusal: when the merged external URLs do not fit (nothing changes then).
        """
        with self._lock:
            record = self._v1.get(opportunity_id)
            if record is None:
                return False
            external_urls = write.merged_external_urls(record[v1.EXTERNAL_URLS])
            record.update(write.fields)
            record[v1.EXTERNAL_URLS] = external_urls
            record["modifiedDate"] = format_v1_date(self._clock())
            return True

    def v1_seed(self, records: Sequence[Mapping[str, Any]]) -> list[int]:
        """Store records as if entered by hand in the CRM: every one of them, or none on a problem.

        Each record needs ``venueId`` (a whole number) and may carry ``id`` (a whole number not yet
        stored; a new id otherwise), ``createdDate`` and ``modifiedDate`` (``V1_DATE_FORMAT``;
        now, and ``createdDate``, when left out) and ``externalUrls`` (the API's rules). Any other
        field is kept as given. The records must be JSON values; the store keeps copies.

        :param records: the records to store.
        :return: the id of each record, in order.
        :raises ValueError: naming the first record that cannot be stored.
        """
        with self._lock:
            now = format_v1_date(self._clock())
            taken = set(self._v1)
            next_id = self._next_v1_id
            prepared: list[dict[str, Any]] = []
            for index, given in enumerate(records):
                record = _seed_record(given, index, now)
                if "id" in record:
                    if record["id"] in taken:
                        raise ValueError(f"record {index}: the id {record['id']} is already stored")
                else:
                    while next_id in taken:
                        next_id += 1
                    record["id"] = next_id
                taken.add(record["id"])
                # Ids count on after the highest one stored, as a database's auto-increment does.
                next_id = max(next_id, record["id"] + 1)
                prepared.append(record)
            for record in prepared:
                self._v1[record["id"]] = record
            self._next_v1_id = next_id
            return [record["id"] for record in prepared]

    def v1_delete(self, opportunity_id: int) -> bool:
        """Delete one v1 opportunity, as a salesperson might; ``False`` when there is none.

        :param opportunity_id: the v1 id.
        """
        with self._lock:
            return self._v1.pop(opportunity_id, None) is not None

    def v1_record(self, opportunity_id: int) -> dict[str, Any] | None:
        """A copy of one stored v1 opportunity, or ``None``.

        :param opportunity_id: the v1 id.
        """
        with self._lock:
            record = self._v1.get(opportunity_id)
            return copy.deepcopy(record) if record is not None else None

    def v1_records(self) -> list[dict[str, Any]]:
        """Copies of every stored v1 opportunity, in id order."""
        with self._lock:
            return [copy.deepcopy(self._v1[key]) for key in sorted(self._v1)]

    def v1_page(
        self, matches: Callable[[Mapping[str, Any]], bool], start: int, count: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """One page of the v1 opportunities that ``matches`` accepts, in id order.

        Only the page is copied, so paging through many records costs one pass per page.

        :param matches: says whether a record belongs to the list; it must not change the record.
        :param start: how many matching records to skip.
        :param count: the most records to return.
        :return: ``(how many records match in all, copies of the page's records)``.
        """
        with self._lock:
            found = [self._v1[key] for key in sorted(self._v1) if matches(self._v1[key])]
            return len(found), [copy.deepcopy(record) for record in found[start : start + count]]

    def v1_references(self) -> dict[str, list[int]]:
        """Every external URL ``ref`` stored on a v1 opportunity, with the ids that carry it.

        A ref held by two records, or none, is how a test tells that a row reached the CRM twice or
        not at all.
        """
        with self._lock:
            found: dict[str, list[int]] = {}
            for key in sorted(self._v1):
                for entry in self._v1[key][v1.EXTERNAL_URLS]:
                    found.setdefault(entry["ref"], []).append(key)
            return dict(sorted(found.items()))

    # v2

    def v2_exists(self, opportunity_id: int) -> bool:
        """Whether a v2 opportunity with this id exists (of either type).

        :param opportunity_id: the v2 id.
        """
        with self._lock:
            return (opportunity_id, V2_TYPES[0]) in self._v2 or (opportunity_id, V2_TYPES[1]) in self._v2

    def v2_record(self, opportunity_id: int, opportunity_type: str) -> dict[str, Any] | None:
        """A copy of one v2 record, or ``None``.

        :param opportunity_id: the v2 id.
        :param opportunity_type: ``"Pre"`` or ``"Post"``.
        """
        with self._lock:
            record = self._v2.get((opportunity_id, opportunity_type))
            return dict(record) if record is not None else None

    def v2_update(
        self, opportunity_id: int, opportunity_type: str, changes: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Apply ``changes`` to a v2 record and return a copy of it, or ``None`` when it does not exist.

        :param opportunity_id: the v2 id.
        :param opportunity_type: ``"Pre"`` or ``"Post"``.
        :param changes: flat record fields to set.
        """
        with self._lock:
            record = self._v2.get((opportunity_id, opportunity_type))
            if record is None:
                return None
            record.update(changes)
            return dict(record)

    def v2_records(self) -> list[dict[str, Any]]:
        """Copies of every v2 record, by id then type."""
        with self._lock:
            return [
                dict(self._v2[key]) for key in sorted(self._v2, key=lambda k: (k[0], V2_TYPES.index(k[1])))
            ]


def _seed_record(given: Any, index: int, now: str) -> dict[str, Any]:
    """Check one record to seed and return what the store keeps; see ``OpportunityStore.v1_seed``."""
    if not isinstance(given, Mapping):
        raise ValueError(f"record {index}: must be an object")
    try:
        # A JSON round trip makes a deep copy and proves the record can be answered as JSON.
        record: dict[str, Any] = json.loads(json.dumps(dict(given)))
    except (TypeError, ValueError) as error:
        raise ValueError(f"record {index}: not a JSON value ({error})") from None
    if not v1.is_whole_number(record.get("venueId")):
        raise ValueError(f"record {index}: venueId is required, a whole number")
    if "id" in record:
        if not v1.is_whole_number(record["id"]) or int(record["id"]) < 1:
            raise ValueError(f"record {index}: id must be a whole number >= 1")
        record["id"] = int(record["id"])
    for name in ("createdDate", "modifiedDate"):
        if name in record and not _is_v1_date(record[name]):
            raise ValueError(f"record {index}: {name} must read like '2019-04-12 09:00:35 UTC'")
    record.setdefault("createdDate", now)
    record.setdefault("modifiedDate", record["createdDate"])
    try:
        changes = v1.parse_external_urls(record.get(v1.EXTERNAL_URLS))
        record[v1.EXTERNAL_URLS] = v1.merge_external_urls([], changes)
    except v1.V1Refusal as refusal:
        raise ValueError(
            f"record {index}: {'; '.join(refusal.additional_messages or [refusal.message])}"
        ) from None
    return record


def _is_v1_date(value: Any) -> bool:
    if not isinstance(value, str) or _V1_DATE.match(value) is None:
        return False
    try:
        datetime.strptime(value, V1_DATE_FORMAT)
    except ValueError:
        return False
    return True


class Counters:
    """Request counts: in total, per endpoint, per status, and named events (``v1_creates``, ...).

    Requests to ``/_mock/*`` are not counted, so inspecting the server does not change them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0
        self._by_endpoint: Counter[str] = Counter()
        self._by_status: Counter[str] = Counter()
        self._events: Counter[str] = Counter()
        # API requests being answered now, and the most there ever were at once.
        self._in_flight = 0
        self._peak_in_flight = 0

    def enter(self) -> None:
        """An API request arrived (it is answered, refused or dropped later)."""
        with self._lock:
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)

    def leave(self) -> None:
        """An API request that :meth:`enter` counted is done."""
        with self._lock:
            self._in_flight -= 1

    def record(self, endpoint: str, status: int | str, *events: str) -> None:
        """Count one answered (or dropped) request and the events it caused.

        :param endpoint: the endpoint's name (``"v1_opportunity"``, ``"v2_put"``, ...).
        :param status: the status answered, or ``"dropped"``.
        :param events: named events to add one to (``"v1_creates"``, ...).
        """
        with self._lock:
            self._total += 1
            self._by_endpoint[endpoint] += 1
            self._by_status[str(status)] += 1
            for event in events:
                self._events[event] += 1

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of every count."""
        with self._lock:
            data: dict[str, Any] = {
                "total_requests": self._total,
                "by_endpoint": dict(self._by_endpoint),
                "by_status": dict(self._by_status),
                "peak_in_flight": self._peak_in_flight,
            }
            for name in COUNTER_NAMES:
                data[name] = self._events[name]
            for name, value in self._events.items():
                data.setdefault(name, value)
            return data

    def __getitem__(self, name: str) -> Any:
        """One count from :meth:`snapshot` (``counters["v1_creates"]``).

        :param name: a key of :meth:`snapshot`.
        """
        return self.snapshot()[name]

    def reset(self) -> None:
        """Set every count back to zero."""
        with self._lock:
            self._total = 0
            self._by_endpoint.clear()
            self._by_status.clear()
            self._events.clear()
            self._peak_in_flight = self._in_flight
