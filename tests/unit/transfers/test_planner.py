"""The planner, table-driven: every combination of row problem, stored outcome, changed or
unchanged payload, target and ``on_unknown`` gets the fate the module's rules give it."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from airflow_opportunity_provider.schemas import CheckedPutRequest, CheckedV1Payload
from airflow_opportunity_provider.transfers.keys import key_digest
from airflow_opportunity_provider.transfers.outcomes import Outcome
from airflow_opportunity_provider.transfers.planner import (
    DUPLICATE_KEY,
    KEY_PROBLEM,
    MAPPING_PROBLEM,
    OUTCOME_UNKNOWN,
    SCHEMA_PROBLEM,
    Action,
    Policy,
    Write,
    fingerprint_matches,
    plan,
    plan_settled,
)
from airflow_opportunity_provider.transfers.source import SourceRow, payload_hash
from airflow_opportunity_provider.transfers.state import StateRecord

V1_PAYLOAD = {"venueId": 107, "name": "Lead", "contactId": 918, "typeId": 18, "sourceId": 25, "stageId": 69}
V2_PAYLOAD = {"Id": 42, "opportunityType": "Pre", "StageName": "Qualified"}
PAYLOADS = {"v1": V1_PAYLOAD, "v2": V2_PAYLOAD}

# Row problems: none, an unusable key, a mapping that raised, a payload the schema refuses, a duplicate.
PROBLEMS = ("none", "key", "mapping", "schema", "duplicate")
STORED = (None, "created", "updated", "rejected", "failed", "unknown", "in_flight")
TARGETS = ("v1", "v2")
ON_UNKNOWN = ("skip", "resend")
CHANGED = (False, True)


def _row(problem: str, target: str) -> SourceRow:
    payload: dict[str, Any] = dict(PAYLOADS[target])
    if problem == "key":
        return SourceRow("", None, None, (KEY_PROBLEM, "row 3 of the query: key column 'ref' is NULL"))
    digest = key_digest("REF-1")
    if problem == "mapping":
        return SourceRow("REF-1", None, None, (MAPPING_PROBLEM, "mapping failed: KeyError"), digest=digest)
    if problem == "schema":
        payload["venueId" if target == "v1" else "Id"] = "not a number"
    row = SourceRow("REF-1", payload, payload_hash(payload), digest=digest)
    row.duplicate = problem == "duplicate"
    return row


def _stored(outcome: str | None, row: SourceRow, changed: bool, target: str) -> StateRecord | None:
    if outcome is None:
        return None
    crm_id = {"v1": "755", "v2": "42/Pre"}[target] if outcome in ("created", "updated", "rejected") else None
    digest = "stored-hash-of-another-payload" if changed else row.payload_hash
    return StateRecord("REF-1", key_digest("REF-1"), crm_id, digest, Outcome(outcome), "earlier-run")


COMBINATIONS = list(itertools.product(PROBLEMS, STORED, CHANGED, TARGETS, ON_UNKNOWN))


def _expected(
    problem: str, stored: str | None, changed: bool, target: str, on_unknown: str
) -> tuple[Any, ...]:
    """``(action, counted outcome, write, code)`` by the rules, in their order."""
    if stored in ("unknown", "in_flight"):
        if problem == "duplicate":
            # Reported, to the rejects table only: the state keeps the unresolved create.
            return Action.NOTHING, Outcome.REJECTED, Write.REJECT_ONLY, DUPLICATE_KEY
        if on_unknown == "resend" and problem == "none" and target == "v1":
            return Action.CREATE, None, Write.NOTHING, None
        return Action.NOTHING, Outcome.UNKNOWN, Write.NOTHING, OUTCOME_UNKNOWN
    if problem == "key":
        return Action.NOTHING, Outcome.REJECTED, Write.REJECT_ONLY, KEY_PROBLEM
    if problem == "duplicate":
        return Action.NOTHING, Outcome.REJECTED, Write.REJECT_ONLY, DUPLICATE_KEY
    if problem == "mapping":
        return Action.NOTHING, Outcome.REJECTED, Write.STATE_AND_REJECT, MAPPING_PROBLEM
    if stored in ("created", "updated") and not changed:
        # Only a payload to send is checked against the schema: this one was loaded before.
        return Action.NOTHING, Outcome.UNCHANGED, Write.NOTHING, None
    if problem == "schema":
        return Action.NOTHING, Outcome.REJECTED, Write.STATE_AND_REJECT, SCHEMA_PROBLEM
    if target == "v2":
        return Action.UPDATE, None, Write.NOTHING, None
    if stored in ("created", "updated", "rejected"):  # a stored CRM id: create-once
        return Action.UPDATE, None, Write.NOTHING, None
    return Action.CREATE, None, Write.NOTHING, None


@pytest.mark.parametrize(
    ("problem", "stored", "changed", "target", "on_unknown"),
    COMBINATIONS,
    ids=[f"{p}-{s}-{'changed' if c else 'same'}-{t}-{u}" for p, s, c, t, u in COMBINATIONS],
)
def test_every_combination(
    problem: str, stored: str | None, changed: bool, target: str, on_unknown: str
) -> None:
    row = _row(problem, target)
    record = _stored(stored, row, changed, target)
    decision = plan(row, record, Policy(target, on_unknown))  # type: ignore[arg-type]
    action, outcome, write, code = _expected(problem, stored, changed, target, on_unknown)
    assert (decision.action, decision.outcome, decision.write, decision.code) == (
        action,
        outcome,
        write,
        code,
    )
    if action is Action.NOTHING:
        assert decision.request is None
        # Every row that is not loaded says why.
        assert bool(decision.message) is (outcome is not Outcome.UNCHANGED)
        return
    if target == "v2":
        assert isinstance(decision.request, CheckedPutRequest)
        assert decision.request.opportunity_id == 42
        return
    assert isinstance(decision.request, CheckedV1Payload)
    if action is Action.UPDATE:
        assert decision.request.fields["id"] == "755"
    else:
        assert "id" not in decision.request.fields
        assert decision.creates


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_invariants(combination: tuple[Any, ...]) -> None:
    problem, stored, changed, target, on_unknown = combination
    row = _row(problem, target)
    record = _stored(stored, row, changed, target)
    decision = plan(row, record, Policy(target, on_unknown))
    unresolved = stored in ("unknown", "in_flight")
    # An unresolved create keeps its state: never written, never updated, re-created only on request.
    if unresolved:
        assert decision.write in (Write.NOTHING, Write.REJECT_ONLY)
        assert decision.action is not Action.UPDATE
        if decision.action is Action.CREATE:
            assert on_unknown == "resend"
            assert problem == "none"
    # Create-once: a key with a stored CRM id is never created again.
    if record is not None and record.crm_id:
        assert decision.action is not Action.CREATE
    # v2 only ever updates; a row with any problem is never sent.
    if target == "v2":
        assert decision.action is not Action.CREATE
    if problem != "none":
        assert decision.action is Action.NOTHING
    # A row counted as unchanged was loaded with this very payload.
    if decision.outcome is Outcome.UNCHANGED:
        assert record is not None
        assert record.outcome in (Outcome.CREATED, Outcome.UPDATED)
        assert not changed


def test_a_payload_with_its_own_id_is_an_update_of_that_id() -> None:
    payload = {**V1_PAYLOAD, "id": 999}
    row = SourceRow("REF-1", payload, payload_hash(payload), digest=key_digest("REF-1"))
    decision = plan(row, None, Policy("v1"))
    assert decision.action is Action.UPDATE
    assert isinstance(decision.request, CheckedV1Payload)
    assert decision.request.fields["id"] == 999


def test_the_schema_problem_names_the_field() -> None:
    decision = plan(_row("schema", "v1"), None, Policy("v1"))
    assert decision.code == SCHEMA_PROBLEM
    assert "$.venueId" in (decision.message or "")


# Fingerprints: the row's (None or "F"), the stored one (None, "F" or "G"), the stored outcome,
# whether the payload changed, and whether the row is a later one of its key.
FINGERPRINTS = list(itertools.product((None, "F"), (None, "F", "G"), STORED[1:], CHANGED, (False, True)))


@pytest.mark.parametrize(
    ("mine", "theirs", "stored", "changed", "duplicate"),
    FINGERPRINTS,
    ids=[
        f"{m}-{t}-{s}-{'changed' if c else 'same'}-{'dup' if d else 'first'}"
        for m, t, s, c, d in FINGERPRINTS
    ],
)
def test_a_fingerprint_settles_a_row_only_when_it_is_the_one_stored_with_a_loaded_outcome(
    mine: str | None, theirs: str | None, stored: str, changed: bool, duplicate: bool
) -> None:
    row = _row("duplicate" if duplicate else "none", "v1")
    row.fingerprint = mine
    record = _stored(stored, row, changed, "v1")
    assert record is not None
    record = record._replace(source_hash=theirs)
    loaded = stored in ("created", "updated")
    settled = mine is not None and mine == theirs and loaded
    assert fingerprint_matches(row, record) is settled
    if settled:
        # The row need not even be mapped: plan decides without its payload, as plan_settled does.
        unmapped = SourceRow("REF-1", None, None, digest=row.digest, fingerprint=mine, duplicate=duplicate)
        expected = plan_settled(unmapped)
        assert plan(unmapped, record, Policy("v1")) == expected == plan(row, record, Policy("v1"))
        assert (expected.action, expected.outcome) == (
            Action.NOTHING,
            Outcome.REJECTED if duplicate else Outcome.UNCHANGED,
        )
        assert expected.write is (Write.REJECT_ONLY if duplicate else Write.NOTHING)
        return
    decision = plan(row, record, Policy("v1"))
    if loaded and not changed and not duplicate:
        # The same payload from values fingerprinted otherwise: unchanged, and the new
        # fingerprint stored so that the next run settles the row without mapping it.
        assert (decision.action, decision.outcome) == (Action.NOTHING, Outcome.UNCHANGED)
        assert decision.write is (Write.NOTHING if mine is None else Write.FINGERPRINT)
    else:
        # Whatever the fingerprints, the rules without them decide.
        plain = plan(row, record._replace(source_hash=None), Policy("v1"))
        assert decision == plain
        assert decision.write is not Write.FINGERPRINT
