"""What a sync does with one source row: one pure function of the row, what the state holds for its
key, and the run's policy. No I/O; the engine only carries the decision out.

The rules, in precedence order (the first that applies decides):

1. **An unresolved create stays unresolved.** When the state holds ``unknown`` or ``in_flight``
   for the key, an earlier create may or may not be stored. Nothing about the row — a key,
   mapping or schema problem, a duplicate, a change — turns it into something that is sent or
   into another outcome the next run would resend; the state is not written and the row counts
   as ``unknown``. Only ``on_unknown="resend"`` creates it again, and only from a usable row seen
   for the first time in the run. A later row of a key already seen in this run (whose first
   row's create may still be in flight) is still reported as ``duplicate_key``, to the rejects
   table only, so that every row read is counted once and no duplicate goes unreported.
2. **A row whose key cannot name it** (NULL, a value with no canonical text) is ``rejected``
   with code ``key``; only the rejects table hears of it, since there is no key to store.
3. **A later row of a key already seen in this run** is ``rejected`` with ``duplicate_key``; the
   state keeps what the first row of the key did (sending both could create the record twice).
4. **A row whose mapping failed** is ``rejected`` with ``mapping``; the state records the
   rejection and keeps the CRM id it holds, so the row's next change is an update of that record.
5. **A row loaded before with the same payload** (``created`` or ``updated``) is ``unchanged``:
   nothing is sent (nor checked: it passed when it was sent). The same payload is known from
   the row's fingerprint when it is the one stored (the row need not even be mapped:
   :func:`fingerprint_matches`), else from the payload's hash; in the second case a row with
   a fingerprint has it stored, so that its next run is settled by the fingerprint.
6. **A payload to send that breaks the schema** is ``rejected`` with ``schema``, the stored CRM
   id kept as in rule 4.
7. **v1**: a row whose key has a CRM id is sent as an update of that id (create-once); one
   without is created, and the engine commits the create's in-flight mark before it is sent.
   A payload that carries its own ``id`` is an update of that id. With a reference (the
   default), every v1 payload carries the sync's ``externalUrls`` entry for its key, next to the
   mapping's own entries; more than the platform keeps is ``rejected`` with ``external_urls``.
8. **v2**: the row is sent as a put of the ``Id`` its payload carries.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from airflow_opportunity_provider.errors import PayloadValidationError
from airflow_opportunity_provider.references import with_reference
from airflow_opportunity_provider.schemas import (
    CheckedPutRequest,
    CheckedV1Payload,
    check_add_or_update_payload,
    check_put_request,
)
from airflow_opportunity_provider.transfers.outcomes import LOADED, UNRESOLVED, Outcome
from airflow_opportunity_provider.transfers.state import StateRecord

Target = Literal["v1", "v2"]

KEY_PROBLEM = "key"
MAPPING_PROBLEM = "mapping"
SCHEMA_PROBLEM = "schema"
DUPLICATE_KEY = "duplicate_key"
OUTCOME_UNKNOWN = "outcome_unknown"
EXTERNAL_URLS_PROBLEM = "external_urls"
AMBIGUOUS_MATCH = "ambiguous_match"

UNKNOWN_MESSAGE = (
    "an earlier create of this row may or may not be stored; it is not sent again until it is "
    "resolved (opportunity-sync resolve, or on_unknown='resend' to create it again)"
)
DUPLICATE_MESSAGE = "the key appears more than once in the query result; only its first row is loaded"


class Action(enum.Enum):
    """What the engine sends for a row."""

    NOTHING = "nothing"
    #: A v1 create: its in-flight mark is committed before it is sent.
    CREATE = "create"
    #: A v1 update of a stored (or given) id, or a v2 put.
    UPDATE = "update"


class Write(enum.Enum):
    """What the engine writes for a row that is not sent."""

    NOTHING = "nothing"
    #: A row in the rejects table only: the state is left as it is.
    REJECT_ONLY = "reject_only"
    #: The outcome in the state (the CRM id kept) and a row in the rejects table.
    STATE_AND_REJECT = "state_and_reject"
    #: The row's fingerprint in the state, its outcome, CRM id and hash kept (rule 5).
    FINGERPRINT = "fingerprint"


class Row(Protocol):
    """One source row as the planner sees it (a ``source.SourceRow``).

    ``key`` is ``""`` when the key itself is unusable; ``payload`` is ``None`` when mapping
    failed; ``problem`` is ``(code, reason)`` when the source could not make a payload or a key;
    ``duplicate`` says an earlier row of this run had the same key; ``fingerprint`` is the
    fingerprint of its source values, or ``None``.
    """

    @property
    def key(self) -> str: ...

    @property
    def payload(self) -> Mapping[str, Any] | None: ...

    @property
    def payload_hash(self) -> str | None: ...

    @property
    def problem(self) -> tuple[str, str] | None: ...

    @property
    def duplicate(self) -> bool: ...

    @property
    def fingerprint(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Policy:
    """The run's choices that bear on a row.

    :param target: ``"v1"`` (add-or-update) or ``"v2"`` (put).
    :param on_unknown: ``"skip"`` or ``"resend"`` a row whose create is unresolved.
    :param reference: the ``externalUrls`` entry of a row's key (v1), or ``None`` to send none.
    """

    target: Target
    on_unknown: Literal["skip", "resend"] = "skip"
    reference: Callable[[str], Mapping[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The fate of one row.

    :param action: what to send.
    :param outcome: the outcome to count now; ``None`` when the answer will decide it.
    :param write: what to write when nothing is sent.
    :param code: the reason code of a row that is not loaded.
    :param message: its reason.
    :param request: the checked request to send.
    :param id_from_state: the update's id is the one the state holds for the key (not the payload's).
    """

    action: Action
    outcome: Outcome | None = None
    write: Write = Write.NOTHING
    code: str | None = None
    message: str | None = None
    request: CheckedV1Payload | CheckedPutRequest | None = None
    id_from_state: bool = False

    @property
    def creates(self) -> bool:
        """Whether sending it creates a record (not safe to send twice)."""
        return self.action is Action.CREATE


_UNCHANGED = Decision(Action.NOTHING, Outcome.UNCHANGED)
_UNCHANGED_NEW_FINGERPRINT = Decision(Action.NOTHING, Outcome.UNCHANGED, Write.FINGERPRINT)
_STAYS_UNKNOWN = Decision(Action.NOTHING, Outcome.UNKNOWN, Write.NOTHING, OUTCOME_UNKNOWN, UNKNOWN_MESSAGE)
_DUPLICATE = Decision(Action.NOTHING, Outcome.REJECTED, Write.REJECT_ONLY, DUPLICATE_KEY, DUPLICATE_MESSAGE)


def _rejected(code: str, message: str, write: Write) -> Decision:
    return Decision(Action.NOTHING, Outcome.REJECTED, write, code, message)


def plan(row: Row, stored: StateRecord | None, policy: Policy) -> Decision:
    """Decide one row's fate by the module's rules, in their order.

    :param row: the row.
    :param stored: what the state holds for its key, or ``None``.
    :param policy: the run's choices.
    """
    # 1. An unresolved create stays unresolved, whatever the row brings.
    if stored is not None and stored.outcome in UNRESOLVED:
        if row.duplicate:
            return _DUPLICATE
        if policy.on_unknown == "resend" and row.problem is None:
            decision = _request(row, None, policy)
            if decision.action is Action.CREATE:
                return decision
        return _STAYS_UNKNOWN
    # 2. No usable key: nothing can be stored.
    if row.problem is not None and row.problem[0] == KEY_PROBLEM:
        return _rejected(KEY_PROBLEM, row.problem[1], Write.REJECT_ONLY)
    # 3. A key seen before in this run.
    if row.duplicate:
        return _DUPLICATE
    # 4. No payload: the mapping failed.
    if row.problem is not None:
        return _rejected(row.problem[0], row.problem[1], Write.STATE_AND_REJECT)
    # 5. Loaded before, with this very payload: known by the fingerprint, or by the hash.
    if fingerprint_matches(row, stored):
        return _UNCHANGED
    if stored is not None and stored.outcome in LOADED and stored.payload_hash == row.payload_hash:
        return _UNCHANGED if row.fingerprint is None else _UNCHANGED_NEW_FINGERPRINT
    # 6 (the schema), 7 and 8.
    return _request(row, stored, policy)


def fingerprint_matches(row: Row, stored: StateRecord | None) -> bool:
    """Whether rule 5 holds for a row by its fingerprint alone, so that it need not be mapped.

    Rules 1 to 4 need no payload either: a row for which this is true is planned without one.

    :param row: the row, mapped or not.
    :param stored: what the state holds for its key, or ``None``.
    """
    return (
        row.fingerprint is not None
        and stored is not None
        and stored.source_hash == row.fingerprint
        and stored.outcome in LOADED
    )


def plan_settled(row: Row) -> Decision:
    """What :func:`plan` decides for a row whose key the state holds loaded from these very values
    (:func:`fingerprint_matches` is true), without the record or the payload.

    Rules 1, 2 and 4 cannot apply (the stored outcome is a loaded one, the row has a key, and
    the mapping made a payload of the same values before), so rule 3 or rule 5 decides.

    :param row: the row (mapped or not).
    """
    return _DUPLICATE if row.duplicate else _UNCHANGED


def _request(row: Row, stored: StateRecord | None, policy: Policy) -> Decision:
    """The request for a usable row: an update of the stored id, or a create (v1); a put (v2)."""
    payload = row.payload
    assert payload is not None
    try:
        if policy.target == "v2":
            return Decision(Action.UPDATE, request=check_put_request(payload))
        from_state = bool(stored is not None and stored.crm_id and payload.get("id") in (None, ""))
        if from_state:
            # Create-once: a row created before is from now on an update of that record.
            assert stored is not None
            payload = {**payload, "id": stored.crm_id}
        if policy.reference is not None:
            try:
                payload = with_reference(payload, policy.reference(row.key))
            except ValueError as error:
                return _rejected(EXTERNAL_URLS_PROBLEM, str(error), Write.STATE_AND_REJECT)
        checked = check_add_or_update_payload(payload)
    except PayloadValidationError as error:
        return _rejected(SCHEMA_PROBLEM, error.summary, Write.STATE_AND_REJECT)
    action = Action.CREATE if checked.creates else Action.UPDATE
    return Decision(action, request=checked, id_from_state=from_state)


def adopt(decision: Decision, crm_id: int) -> Decision:
    """A create turned into an update of a record the CRM already holds (``match_on``).

    :param decision: a create decision.
    :param crm_id: the id of the one record that matched.
    """
    request = decision.request
    assert isinstance(request, CheckedV1Payload)
    assert decision.creates
    try:
        checked = check_add_or_update_payload({**request.fields, "id": crm_id})
    except PayloadValidationError as error:  # pragma: no cover - a create's fields also make an update
        return _rejected(SCHEMA_PROBLEM, error.summary, Write.STATE_AND_REJECT)
    return Decision(Action.UPDATE, request=checked)


def recreate(request: CheckedV1Payload) -> CheckedV1Payload:
    """The create of a row whose stored record the CRM no longer holds (``on_missing_record="recreate"``).

    :param request: the update that was answered "does not exist".
    :raises PayloadValidationError: the row's fields are not enough to create a record.
    """
    fields = {name: value for name, value in request.fields.items() if name != "id"}
    return check_add_or_update_payload(fields)


def ambiguous(ids: list[int], why: str) -> Decision:
    """The rejection of a row that ``match_on`` matches with more than one record.

    :param ids: the candidates' ids.
    :param why: what matched.
    """
    listed = ", ".join(map(str, ids))
    return _rejected(
        AMBIGUOUS_MATCH,
        f"{why} ({listed}); nothing was sent. Resolve it to one of them (opportunity-sync resolve) "
        "or make the records tell apart, then run again.",
        Write.STATE_AND_REJECT,
    )
