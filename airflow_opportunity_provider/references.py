"""A v1 record's reference back to the row that made it, and the reading of the v1 opportunity list.

Every create of a bulk load carries one ``externalUrls`` entry whose ``ref`` names the sync and
the row's key (:func:`reference_for`). The CRM keeps it on the record, so a create whose answer
was lost can later be found by that ref, and a row is never created twice on a guess.

The reference is ``"airflow-sync:"`` followed by the first 40 hex digits of the SHA-256 of
``"<length of the sync name>:<sync name>:<key text>"`` in UTF-8 (the length keeps a name and a
key from running into each other: ``("a:b", "c")`` and ``("a", "b:c")`` differ). It is 53 characters long whatever the key
(the mock CRM takes 255; the vendor gives no limit), the same for every retry, every run and
every release, and distinct for distinct syncs or keys (160 bits: a collision is not a practical
concern). It is not secret: it is a digest of names the CRM's users can see anyway.

The list call's filters are not documented as honoured, so nothing here trusts them: every
candidate is checked by the client (:func:`holds_reference`, :func:`matches_fields`), and the
pages read are bounded by the first page's ``totalResults`` (:class:`ListPaging`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from airflow_opportunity_provider.errors import OpportunityAmbiguousMatchError, OpportunityApiError
from airflow_opportunity_provider.protocol import OpportunityPage

REFERENCE_PREFIX = "airflow-sync:"
#: The platform keeps at most this many external URLs on a record.
MAX_EXTERNAL_URLS = 3
DEFAULT_REFERENCE_LABEL = "Warehouse sync"
#: How far before a create's in-flight mark a lookup still searches by creation date: the
#: CRM's clock and this machine's may differ, and a record created a little "before" it must
#: still be found. A day is generous on purpose: a wider window costs a page or two at most.
CREATED_AFTER_SLACK_SECONDS = 86_400.0
#: Pages read beyond what the first page's ``totalResults`` promises (records created meanwhile).
_EXTRA_PAGES = 2
EXTERNAL_URLS = "externalUrls"


def reference_for(sync_name: str, key: str) -> str:
    """The ``ref`` of the external URL a sync puts on the record of one row.

    :param sync_name: the sync's name in its state.
    :param key: the row's key text (``keys.encode_key``).
    """
    digest = hashlib.sha256(f"{len(sync_name)}:{sync_name}:{key}".encode()).hexdigest()
    return REFERENCE_PREFIX + digest[:40]


def reference_entry(
    reference: str,
    *,
    label: str | None = DEFAULT_REFERENCE_LABEL,
    url_template: str | None = None,
    sync_name: str = "",
    key: str = "",
) -> dict[str, Any]:
    """The ``externalUrls`` entry that carries ``reference``.

    :param reference: the ref (:func:`reference_for`).
    :param label: the entry's label; ``None`` for none.
    :param url_template: an https URL with ``{key}`` and ``{sync_name}`` placeholders, or ``None``.
    :param sync_name: the sync's name, for the template.
    :param key: the row's key, for the template.
    """
    entry: dict[str, Any] = {"ref": reference}
    if url_template:
        entry["url"] = url_template.format(key=quote(key, safe=""), sync_name=quote(sync_name, safe=""))
    if label:
        entry["label"] = label
    return entry


def check_url_template(template: Any) -> str | None:
    """A ``reference_url`` parameter as the operator takes it, or a ``ValueError`` saying what to change.

    :param template: ``None``, or an https URL with only ``{key}`` and ``{sync_name}`` placeholders.
    """
    if template is None:
        return None
    if not isinstance(template, str) or not template.startswith("https://"):
        raise ValueError(f"reference_url must be an https:// URL template or None; got {template!r}.")
    try:
        template.format(key="k", sync_name="s")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"reference_url may only use the placeholders {{key}} and {{sync_name}}; {template!r} "
            f"does not format ({type(error).__name__}: {error})."
        ) from None
    return template


def with_reference(payload: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """The payload with the sync's reference entry among its ``externalUrls``.

    The mapping's own entries are kept (an entry of the same ``ref`` is replaced by the sync's).
    The platform merges entries by ``ref``, so sending this entry on an update adds or refreshes
    it and never removes the user's.

    :param payload: the row's payload.
    :param entry: the sync's entry (:func:`reference_entry`).
    :raises ValueError: more than :data:`MAX_EXTERNAL_URLS` entries in all, or an ``externalUrls``
        that is not a list.
    """
    own = payload.get(EXTERNAL_URLS)
    if own is None:
        return {**payload, EXTERNAL_URLS: [dict(entry)]}
    if not isinstance(own, list | tuple):
        raise ValueError(
            f"{EXTERNAL_URLS} must be a list of {{ref, url, label}} objects; got {type(own).__name__}."
        )
    kept = [item for item in own if not (isinstance(item, Mapping) and item.get("ref") == entry["ref"])]
    merged = [*kept, dict(entry)]
    if len(merged) > MAX_EXTERNAL_URLS:
        raise ValueError(
            f"{EXTERNAL_URLS}: the mapping sends {len(kept)} entries and the sync adds its reference, "
            f"{len(merged)} in all; the platform keeps at most {MAX_EXTERNAL_URLS}. Send at most "
            f"{MAX_EXTERNAL_URLS - 1}, or set reference=False (then a lost create is left to a person)."
        )
    return {**payload, EXTERNAL_URLS: merged}


def platform_time(epoch: float) -> str:
    """A moment as the v1 list writes ``createdDate`` (``"2019-04-12 09:00:35 UTC"``).

    :param epoch: seconds since the epoch.
    """
    return datetime.fromtimestamp(max(0.0, epoch), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def lookup_filter(name: str | None = None, created_after: float | None = None) -> dict[str, Any]:
    """The list filter that narrows a reference lookup (the server may ignore it).

    :param name: the record's name, or ``None``.
    :param created_after: epoch seconds; the window starts
        :data:`CREATED_AFTER_SLACK_SECONDS` earlier.
    """
    found: dict[str, Any] = {}
    if name:
        found["name"] = name
    if created_after is not None:
        found["createdDate__GREATERTHAN"] = platform_time(created_after - CREATED_AFTER_SLACK_SECONDS)
    return found


def holds_reference(record: Mapping[str, Any], reference: str) -> bool:
    """Whether a listed record carries the external URL ``reference``.

    :param record: one result of the v1 list.
    :param reference: the ref looked for.
    """
    entries = record.get(EXTERNAL_URLS)
    if not isinstance(entries, list):
        return False
    return any(isinstance(entry, Mapping) and entry.get("ref") == reference for entry in entries)


def references_of(record: Mapping[str, Any]) -> list[str]:
    """Every external URL ref of a listed record.

    :param record: one result of the v1 list.
    """
    entries = record.get(EXTERNAL_URLS)
    if not isinstance(entries, list):
        return []
    return [str(entry["ref"]) for entry in entries if isinstance(entry, Mapping) and entry.get("ref")]


def field_text(value: Any) -> str | None:
    """A field's value as matching compares it: ``107`` and ``"107"`` are the same value.

    :param value: a payload's or a record's field.
    """
    if value is None or isinstance(value, bool | dict | list):
        return None if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return str(int(text)) if text.isdigit() else text


def match_key(values: Mapping[str, Any], fields: Sequence[str]) -> tuple[str | None, ...]:
    """The values of ``fields`` as :func:`field_text` reads them, to index records by.

    :param values: a payload or a listed record.
    :param fields: the ``match_on`` fields.
    """
    return tuple(field_text(values.get(name)) for name in fields)


def the_one(reference: str, records: Iterable[Mapping[str, Any]]) -> int | None:
    """The id of the one record that holds ``reference``, ``None`` when none does.

    :param reference: the ref looked for.
    :param records: candidates (every page of a lookup).
    :raises OpportunityAmbiguousMatchError: more than one record holds it.
    """
    ids = sorted({int(record["id"]) for record in records if holds_reference(record, reference)})
    if len(ids) > 1:
        raise OpportunityAmbiguousMatchError(
            f"{len(ids)} CRM records carry the reference {reference!r} (ids {', '.join(map(str, ids))}); "
            "a record should carry it once. Keep one, remove the reference from the others "
            "(externalUrls), then run again.",
            ids=ids,
        )
    return ids[0] if ids else None


class ListPaging:
    """Which page of the v1 list to read next, and when to stop.

    Pages follow ``start`` by the number of records each page held (the server may cap
    ``perPage`` below what was asked). Reading stops at an empty page or once ``totalResults``
    records were read; a server that keeps answering beyond the first page's ``totalResults``
    (plus :data:`_EXTRA_PAGES`) is an error rather than an endless read.

    :param per_page: the page size to ask for.
    """

    def __init__(self, per_page: int = 100) -> None:
        if isinstance(per_page, bool) or not isinstance(per_page, int) or per_page < 1:
            raise ValueError(f"per_page must be a whole number of at least 1; got {per_page!r}.")
        self.per_page = per_page
        self.start = 0
        self.pages = 0
        self._most_pages: int | None = None

    def next_start(self, page: OpportunityPage) -> int | None:
        """The ``start`` of the page after ``page``, or ``None`` when the list is read.

        :param page: the page just read.
        :raises OpportunityApiError: the list kept going past its promised length.
        """
        self.pages += 1
        if self._most_pages is None:
            size = max(1, len(page.results) or page.per_page or self.per_page)
            self._most_pages = math.ceil(max(page.total, 0) / size) + _EXTRA_PAGES
        if not page.results:
            return None
        self.start += len(page.results)
        if self.start >= page.total:
            return None
        if self.pages >= self._most_pages:
            raise OpportunityApiError(
                f"The v1 opportunity list kept answering after {self.pages} pages although its first "
                f"page said {page.total} records; it is not read further.",
                platform="v1",
            )
        return self.start
