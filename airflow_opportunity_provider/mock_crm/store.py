"""The mock CRM's state: stored v1 and v2 opportunities and the request counters.

The server's event loop writes; tests read from their own thread. Every method takes a lock and
every read returns a copy, so a reader never sees a half-made change.
"""

from __future__ import annotations

import copy
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

V2_TYPES = ("Pre", "Post")

# The names of the plain counters that snapshot() always reports, even at zero.
COUNTER_NAMES = (
    "v1_creates",
    "v1_updates",
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


class OpportunityStore:
    """Stored opportunities of both platforms.

    v1 records keep the fields exactly as the client sent them (strings stay strings) plus
    ``id``; v2 records are the flat ``V2OpportunityPrePostFlat`` shape, money as ``Decimal``.

    :param first_v1_id: the id the first v1 create is given.
    :param v2_seed_ids: the v2 ids that exist, each with a ``Pre`` and a ``Post`` record.
    """

    def __init__(self, first_v1_id: int, v2_seed_ids: Iterable[int]) -> None:
        self._lock = threading.Lock()
        self._first_v1_id = first_v1_id
        self._v2_seed_ids = tuple(v2_seed_ids)
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

    def v1_create(self, fields: Mapping[str, Any]) -> int:
        """Store a new v1 opportunity and return the id given to it.

        :param fields: the fields as received; the store keeps them, so do not change them after.
        """
        with self._lock:
            new_id = self._next_v1_id
            self._next_v1_id += 1
            self._v1[new_id] = {**fields, "id": new_id}
            return new_id

    def v1_exists(self, opportunity_id: int) -> bool:
        """Whether a v1 opportunity with this id is stored.

        :param opportunity_id: the v1 id.
        """
        with self._lock:
            return opportunity_id in self._v1

    def v1_update(self, opportunity_id: int, fields: Mapping[str, Any]) -> bool:
        """Merge ``fields`` into a stored v1 opportunity; ``False`` when there is none.

        :param opportunity_id: the v1 id.
        :param fields: the fields as received (``id`` included or not); the store keeps them.
        """
        with self._lock:
            record = self._v1.get(opportunity_id)
            if record is None:
                return False
            record.update(fields)
            record["id"] = opportunity_id
            return True

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
