"""The fate of one row in a sync, as the state stores it and the summary counts it.

The values are the text stored in the state tables since the first release, so rows written by
an older release keep their meaning.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """One row's last outcome.

    ``failed`` is a transient loss after every retry (the row is sent again); ``unknown`` is a
    create that may or may not be stored; ``in_flight`` is only ever stored: the intent
    committed before a create is sent, which a run that stops mid-request leaves behind.
    """

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    REJECTED = "rejected"
    UNKNOWN = "unknown"
    FAILED = "failed"
    IN_FLIGHT = "in_flight"


#: Outcomes of a row whose record is in the CRM with the stored payload.
LOADED: frozenset[Outcome] = frozenset({Outcome.CREATED, Outcome.UPDATED})
#: Outcomes of a create whose result nobody knows: it must never be sent again on a guess.
UNRESOLVED: frozenset[Outcome] = frozenset({Outcome.UNKNOWN, Outcome.IN_FLIGHT})
#: The unresolved outcomes as an SQL list of literals: the partial index of the unresolved rows
#: and the query that reads them spell it alike, or SQLite cannot tell that the index applies.
UNRESOLVED_SQL = "('unknown', 'in_flight')"
#: The loaded outcomes as an SQL list of literals.
LOADED_SQL = "('created', 'updated')"
