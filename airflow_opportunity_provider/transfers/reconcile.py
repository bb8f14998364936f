"""The sync asks the CRM: unknown creates looked up by their reference, existing records matched.

:class:`Reconciler` settles creates whose outcome is unknown. Each carried the sync's reference
(``references.reference_for``), so the record, if the CRM stored it, holds that ``ref``:

- **found** (one record): the row is ``created`` with that id; its next change is an update;
- **not found**, and the create's in-flight mark older than ``unknown_grace_seconds``: the create
  was lost; the row is created again, with the same reference;
- **not found yet** (a request may still be in the CRM's hands), or the lookup failed: the row
  stays ``unknown``;
- **several** records hold the reference: the row stays ``unknown`` with the ids, for a person.

Per venue it picks the cheaper of two ways, by requests: one filtered lookup per row (name and
creation date narrow it when the server honours the filter), or reading the venue's records
created since the oldest in-flight mark once and indexing them by reference. The first page of
that listing is read either way; it says how many pages the listing would take, and whether the
server honoured the filter (a record created before the window, or of another venue, says it did
not; per-row lookups would then each read the whole venue).

:class:`Matcher` adopts records the CRM already holds (``match_on``): the venue's records are
read once per run (one request per page), indexed by the ``match_on`` fields, and a row with no
CRM id is matched against them. Per-row filtered lookups would cost one request per new row when
the server honours the filter and a whole venue's pages per row when it does not; a first sync
of thousands of rows over a venue of a few hundred records takes a few pages instead.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_opportunity_provider.errors import OpportunityError
from airflow_opportunity_provider.hooks.async_client import AsyncOpportunityClient
from airflow_opportunity_provider.references import (
    CREATED_AFTER_SLACK_SECONDS,
    REFERENCE_PREFIX,
    ListPaging,
    field_text,
    lookup_filter,
    match_key,
    platform_time,
    reference_for,
    references_of,
)
from airflow_opportunity_provider.transfers.state import StateRecord

log = logging.getLogger(__name__)

DEFAULT_UNKNOWN_GRACE_SECONDS = 600.0
FOUND = "found"
LOST = "lost"
PENDING = "pending"


@dataclass(frozen=True, slots=True)
class Resolution:
    """What the CRM says about one unknown create.

    :param status: :data:`FOUND`, :data:`LOST` or :data:`PENDING`.
    :param crm_id: the record's id, when found.
    :param code: why it is still pending (a reason code).
    :param message: and in words.
    """

    status: str
    crm_id: int | None = None
    code: str = ""
    message: str = ""


class Reconciler:
    """Looks unknown creates of one sync up in the CRM by their reference.

    :param client: the open async client.
    :param sync_name: the sync's name (part of every reference).
    :param grace_seconds: how old an in-flight mark must be before "not found" means "lost".
    :param per_page: the list's page size to ask for.
    :param clock: the time source (epoch seconds).
    """

    def __init__(
        self,
        client: AsyncOpportunityClient,
        sync_name: str,
        grace_seconds: float = DEFAULT_UNKNOWN_GRACE_SECONDS,
        *,
        per_page: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.sync_name = sync_name
        self.grace_seconds = grace_seconds
        self.per_page = per_page
        self.clock = clock
        #: List pages read, for the run's figures.
        self.pages_read = 0

    async def resolve(self, records: Sequence[StateRecord]) -> dict[str, Resolution]:
        """The resolution of each record (by digest).

        :param records: unresolved creates of the sync partition.
        """
        resolutions: dict[str, Resolution] = {}
        by_venue: dict[str, list[StateRecord]] = {}
        for record in records:
            venue = (record.create_hint or {}).get("venueId")
            if venue in (None, ""):
                resolutions[record.digest] = Resolution(
                    PENDING,
                    code="no_hint",
                    message="the state holds no venue for this create, so it cannot be looked up",
                )
            else:
                by_venue.setdefault(str(venue), []).append(record)
        for venue, group in by_venue.items():
            try:
                resolutions.update(await self._venue(venue, group))
            except OpportunityError as error:
                log.warning(
                    "Looking %d unknown create(s) up in venue %s failed: %s", len(group), venue, error
                )
                for record in group:
                    resolutions[record.digest] = Resolution(
                        PENDING, code="lookup_failed", message=f"the lookup failed: {error}"
                    )
        return resolutions

    def _reference(self, record: StateRecord) -> str:
        return reference_for(self.sync_name, record.key)

    def _verdict(self, record: StateRecord, ids: list[int]) -> Resolution:
        """A record's resolution from the ids of the records that hold its reference."""
        if len(ids) == 1:
            return Resolution(FOUND, ids[0])
        if ids:
            listed = ", ".join(map(str, sorted(ids)))
            return Resolution(
                PENDING,
                code="ambiguous_reference",
                message=f"{len(ids)} CRM records carry this row's reference (ids {listed}); keep one "
                "and resolve the row to it",
            )
        age = self.clock() - (record.attempted_at or 0.0)
        if record.attempted_at is None or age >= self.grace_seconds:
            return Resolution(LOST)
        return Resolution(
            PENDING,
            code="not_found_yet",
            message=f"not in the CRM {age:.0f} s after it was sent; it counts as lost only after "
            f"unknown_grace_seconds={self.grace_seconds:g}",
        )

    async def _venue(self, venue: str, group: list[StateRecord]) -> dict[str, Resolution]:
        if len(group) == 1:
            (record,) = group
            return {record.digest: await self._one(venue, record)}
        since = min(record.attempted_at or 0.0 for record in group)
        window = lookup_filter(None, since)
        first = await self.client.list_opportunity_page([venue], window, start=0, per_page=self.per_page)
        self.pages_read += 1
        honoured = _honours(first.results, venue, platform_time(since - CREATED_AFTER_SLACK_SECONDS))
        pages = math.ceil(first.total / max(1, len(first.results))) if first.results else 1
        if honoured and pages > len(group):
            # Fewer requests: one filtered lookup per row.
            return {record.digest: await self._one(venue, record) for record in group}
        index: dict[str, list[int]] = {}
        paging = ListPaging(self.per_page)
        page = first
        while True:
            for found in page.results:
                for ref in references_of(found):
                    index.setdefault(ref, []).append(int(found["id"]))
            start = paging.next_start(page)
            if start is None:
                break
            page = await self.client.list_opportunity_page(
                [venue], window, start=start, per_page=self.per_page
            )
            self.pages_read += 1
        return {
            record.digest: self._verdict(record, sorted(set(index.get(self._reference(record), []))))
            for record in group
        }

    async def _one(self, venue: str, record: StateRecord) -> Resolution:
        hint = record.create_hint or {}
        reference = self._reference(record)
        paging = ListPaging(self.per_page)
        window = lookup_filter(hint.get("name"), record.attempted_at)
        ids: set[int] = set()
        start: int | None = 0
        while start is not None:
            page = await self.client.list_opportunity_page(
                [venue], window, start=start, per_page=self.per_page
            )
            self.pages_read += 1
            ids.update(int(found["id"]) for found in page.results if reference in references_of(found))
            start = paging.next_start(page)
        return self._verdict(record, sorted(ids))


def _honours(results: Sequence[Mapping[str, Any]], venue: str, earliest: str) -> bool:
    """Whether a page filtered by venue and creation date shows the server applied both."""
    for found in results:
        if field_text(found.get("venueId")) != field_text(venue):
            return False
        created = found.get("createdDate")
        if isinstance(created, str) and created < earliest:
            return False
    return True


class Matcher:
    """Finds the CRM records a row with no CRM id already has (``match_on``).

    :param client: the open async client.
    :param fields: the payload fields that must all be equal.
    :param per_page: the list's page size to ask for.
    """

    def __init__(self, client: AsyncOpportunityClient, fields: Sequence[str], *, per_page: int = 100) -> None:
        self.client = client
        self.fields = tuple(fields)
        self.per_page = per_page
        self._venues: dict[str, dict[tuple[str | None, ...], list[int]]] = {}
        self._by_reference: dict[str, list[int]] = {}
        #: Record id -> the key of the row that adopted it in this run.
        self.claimed: dict[int, str] = {}
        self.pages_read = 0

    async def candidates(self, payload: Mapping[str, Any], reference: str | None) -> list[int] | None:
        """The ids of the records the row matches, or ``None`` when it cannot be matched.

        A record that carries this row's reference is the row's own (and the only candidate); one
        that carries another sync reference belongs to another row and is not a candidate.

        :param payload: the row's payload (with ``venueId`` and the ``match_on`` fields).
        :param reference: the row's own reference, or ``None``.
        """
        venue = field_text(payload.get("venueId"))
        wanted = match_key(payload, self.fields)
        if venue is None or any(value in (None, "") for value in wanted):
            return None
        index = self._venues.get(venue)
        if index is None:
            index = await self._read_venue(venue)
            self._venues[venue] = index
        if reference is not None and reference in self._by_reference:
            return list(self._by_reference[reference])
        return list(index.get(wanted, ()))

    async def _read_venue(self, venue: str) -> dict[tuple[str | None, ...], list[int]]:
        index: dict[tuple[str | None, ...], list[int]] = {}
        paging = ListPaging(self.per_page)
        start: int | None = 0
        while start is not None:
            page = await self.client.list_opportunity_page([venue], None, start=start, per_page=self.per_page)
            self.pages_read += 1
            for record in page.results:
                if field_text(record.get("venueId")) != venue:
                    continue  # the server ignored venueIds
                own = [ref for ref in references_of(record) if ref.startswith(REFERENCE_PREFIX)]
                if own:
                    # Created or adopted by a sync: some row's own record, found by its reference.
                    for ref in own:
                        self._by_reference.setdefault(ref, []).append(int(record["id"]))
                    continue
                index.setdefault(match_key(record, self.fields), []).append(int(record["id"]))
            start = paging.next_start(page)
        log.info(
            "match_on: read %d record(s) of venue %s in %d page(s)",
            sum(map(len, index.values())),
            venue,
            paging.pages,
        )
        return index

    def claim(self, crm_id: int, key: str) -> str | None:
        """Mark a record adopted by ``key``; the key that adopted it before, if another did.

        :param crm_id: the record.
        :param key: the row adopting it.
        """
        earlier = self.claimed.setdefault(crm_id, key)
        return None if earlier == key else earlier
