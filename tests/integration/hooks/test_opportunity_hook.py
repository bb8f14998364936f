"""OpportunityHook against the mock CRM server over real loopback HTTP: signing, tokens, faults, errors."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from airflow_opportunity_provider import flow as flow_module
from airflow_opportunity_provider.errors import (
    OpportunityAuthenticationError,
    OpportunityConfigurationError,
    OpportunityConnectionError,
    OpportunityInvalidError,
    OpportunityNotFoundError,
    OpportunityOutcomeUnknownError,
    OpportunityRateLimitedError,
    OpportunityV2ValidationError,
    PayloadValidationError,
)
from airflow_opportunity_provider.hooks.opportunity import OpportunityHook
from airflow_opportunity_provider.mock_crm import FaultConfig, MockCrmServer
from airflow_opportunity_provider.mock_crm.testing import connection_json
from airflow_opportunity_provider.retries import Backoff

NEW_OPPORTUNITY = {
    "venueId": "107",
    "name": "Lead By API",
    "contactId": "918",
    "typeId": "18",
    "sourceId": "25",
    "stageId": "69",
    "industryId": "77",
    "stageReasonId": "127",
    "closedDate": "2017-05-05",
}
FAST = Backoff(initial=0.01, maximum=0.05)


@pytest.fixture
def hook(opportunity_conn: str) -> Iterator[OpportunityHook]:
    hook = OpportunityHook(backoff=FAST)
    yield hook
    hook.close()


def _heal_after(server: MockCrmServer, seconds: float) -> threading.Timer:
    """Turn every fault off after ``seconds``, so a call that is failing now succeeds later."""
    timer = threading.Timer(seconds, server.set_faults, args=(FaultConfig(),))
    timer.start()
    return timer


def test_create_then_update_is_signed_and_accepted(hook: OpportunityHook, mock_crm: MockCrmServer) -> None:
    created = hook.add_or_update_opportunity(NEW_OPPORTUNITY)
    updated = hook.add_or_update_opportunity({"id": created, "venueId": "107", "name": "Updated Name"})
    assert updated == created
    records = mock_crm.store.v1_records()
    assert len(records) == 1
    assert records[0]["name"] == "Updated Name"
    assert mock_crm.counters["v1_creates"] == 1
    assert mock_crm.counters["v1_updates"] == 1


def test_every_retry_is_signed_afresh(
    hook: OpportunityHook, mock_crm: MockCrmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    signatures: list[str] = []
    original = flow_module.sign_v1_request

    def recording(*args: Any, **kwargs: Any) -> dict[str, str]:
        headers = original(*args, **kwargs)
        signatures.append(headers["IVVY-Date"] + headers["X-Api-Authorization"])
        return headers

    monkeypatch.setattr(flow_module, "sign_v1_request", recording)
    mock_crm.set_faults(FaultConfig(errors={503: 1.0}, retry_after=1.0))
    timer = _heal_after(mock_crm, 1.5)
    try:
        hook.add_or_update_opportunity(NEW_OPPORTUNITY)
    finally:
        timer.cancel()
    assert len(signatures) >= 2
    assert len(set(signatures)) == len(signatures), "a retry reused an earlier date and signature"


def test_retry_after_is_honoured_for_429(hook: OpportunityHook, mock_crm: MockCrmServer) -> None:
    created = hook.add_or_update_opportunity(NEW_OPPORTUNITY)
    mock_crm.set_faults(FaultConfig(errors={429: 1.0}, retry_after=1.0))
    timer = _heal_after(mock_crm, 0.2)
    started = time.monotonic()
    try:
        assert hook.add_or_update_opportunity({"id": created, "venueId": 107, "name": "After 429"}) == created
    finally:
        timer.cancel()
    assert time.monotonic() - started >= 1.0
    assert mock_crm.counters["by_status"].get("429", 0) >= 1


def test_a_create_is_retried_on_429_and_503_which_the_server_refused_unprocessed(
    hook: OpportunityHook, mock_crm: MockCrmServer
) -> None:
    mock_crm.set_faults(FaultConfig(errors={429: 0.5, 503: 0.5}, retry_after=0.2))
    timer = _heal_after(mock_crm, 0.5)
    try:
        hook.add_or_update_opportunity(NEW_OPPORTUNITY)
    finally:
        timer.cancel()
    assert len(mock_crm.store.v1_records()) == 1


def test_idempotent_calls_survive_dropped_connections_and_5xx(
    hook: OpportunityHook, mock_crm: MockCrmServer
) -> None:
    created = hook.add_or_update_opportunity(NEW_OPPORTUNITY)
    mock_crm.set_faults(
        FaultConfig(drop_after_commit_rate=0.25, errors={500: 0.05, 502: 0.05, 504: 0.05}, seed=3)
    )
    for number in range(10):
        assert (
            hook.add_or_update_opportunity({"id": created, "venueId": 107, "name": f"n{number}"}) == created
        )
        record = hook.put_opportunity(7, "Post", {"StageName": "Qualified", "SalesRevenue": number})
        assert record["ID"] == 7
    counts = mock_crm.counters.snapshot()
    assert counts["dropped_after_commit"] >= 3
    assert len(mock_crm.store.v1_records()) == 1
    assert mock_crm.store.v1_records()[0]["name"] == "n9"


def test_create_dropped_after_commit_is_outcome_unknown_and_not_resent(
    hook: OpportunityHook, mock_crm: MockCrmServer
) -> None:
    mock_crm.set_faults(FaultConfig(drop_after_commit_rate=1.0))
    with pytest.raises(OpportunityOutcomeUnknownError) as caught:
        hook.add_or_update_opportunity(NEW_OPPORTUNITY)
    assert caught.value.payload == NEW_OPPORTUNITY
    assert len(mock_crm.store.v1_records()) == 1
    assert mock_crm.counters["by_endpoint"]["v1_opportunity"] == 1


@pytest.mark.parametrize("status", [500, 502, 504])
def test_create_answered_with_an_ambiguous_5xx_is_outcome_unknown(
    hook: OpportunityHook, mock_crm: MockCrmServer, status: int
) -> None:
    mock_crm.set_faults(FaultConfig(errors={status: 1.0}))
    with pytest.raises(OpportunityOutcomeUnknownError) as caught:
        hook.add_or_update_opportunity(NEW_OPPORTUNITY)
    assert caught.value.status_code == status
    assert mock_crm.counters["by_endpoint"]["v1_opportunity"] == 1


def test_create_with_a_read_timeout_is_outcome_unknown(
    mock_crm: MockCrmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_OPPORTUNITY_DEFAULT", connection_json(mock_crm, timeout=0.3))
    hook = OpportunityHook(backoff=FAST)
    sent: list[str] = []
    original = hook.session.request

    def counting(method: str, url: str, **kwargs: Any) -> Any:
        sent.append(url)
        return original(method, url, **kwargs)

    monkeypatch.setattr(hook.session, "request", counting)
    mock_crm.set_faults(FaultConfig(latency=1.0))
    with pytest.raises(OpportunityOutcomeUnknownError, match=r"no answer within 0\.3 s"):
        hook.add_or_update_opportunity(NEW_OPPORTUNITY)
    assert len(sent) == 1


def test_rate_limit_that_never_lifts_raises_rate_limited(
    mock_crm: MockCrmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_OPPORTUNITY_DEFAULT", connection_json(mock_crm, max_retries=2))
    hook = OpportunityHook(backoff=FAST)
    mock_crm.set_faults(FaultConfig(errors={429: 1.0}, retry_after=0.1))
    with pytest.raises(OpportunityRateLimitedError) as caught:
        hook.add_or_update_opportunity(NEW_OPPORTUNITY)
    assert caught.value.retry_after == pytest.approx(0.1)
    assert mock_crm.counters["by_endpoint"]["v1_opportunity"] == 3


def test_connection_refused_is_retried_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = '{"conn_type": "opportunity_crm", "host": "http://127.0.0.1", "port": 9, "login": "key-0001", "password": "secret-0001", "extra": {"max_retries": 1}}'
    monkeypatch.setenv("AIRFLOW_CONN_OPPORTUNITY_DEFAULT", conn)
    with pytest.raises(OpportunityConnectionError) as caught:
        OpportunityHook(backoff=FAST).add_or_update_opportunity(NEW_OPPORTUNITY)
    assert caught.value.sent is False


def test_v1_errors_from_the_server(hook: OpportunityHook, mock_crm: MockCrmServer) -> None:
    with pytest.raises(OpportunityNotFoundError) as caught:
        hook.add_or_update_opportunity({"id": 99999, "venueId": 107, "name": "Ghost"})
    assert caught.value.specific_code == 24222
    mock_crm.set_faults(FaultConfig(reject_names=frozenset({"Rejected Lead"})))
    with pytest.raises(OpportunityInvalidError) as invalid:
        hook.add_or_update_opportunity({**NEW_OPPORTUNITY, "name": "Rejected Lead"})
    assert invalid.value.specific_code == 24224


def test_invalid_payload_is_refused_before_sending(hook: OpportunityHook, mock_crm: MockCrmServer) -> None:
    with pytest.raises(PayloadValidationError, match="stageId"):
        hook.add_or_update_opportunity({"venueId": 107, "name": "x", "stageID": 1})
    with pytest.raises(PayloadValidationError, match="opportunityType"):
        hook.put_opportunity(1, "pre", {"StageName": "Qualified"})
    assert mock_crm.counters["total_requests"] == 0


def test_wrong_secret_is_an_authentication_error(
    mock_crm: MockCrmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = connection_json(mock_crm).replace(mock_crm.config.api_secret, "a-wrong-secret-0001")
    monkeypatch.setenv("AIRFLOW_CONN_OPPORTUNITY_DEFAULT", conn)
    with pytest.raises(OpportunityAuthenticationError) as caught:
        OpportunityHook(backoff=FAST).add_or_update_opportunity(NEW_OPPORTUNITY)
    assert caught.value.status_code == 401
    assert "a-wrong-secret-0001" not in str(caught.value)


def test_v2_put_sends_decimals_exactly_and_returns_the_record(
    hook: OpportunityHook, mock_crm: MockCrmServer
) -> None:
    record = hook.put_opportunity(
        "42",
        "Pre",
        {
            "OpportunityName": "Updated Product Launch",
            "CategoryName": "New Business",
            "StageName": "Qualified",
            "AcctPotential": Decimal("200000.10"),
            "SalesRevenue": Decimal("0.1000000000000000055511151231257827"),
            "PendingCloseDate": "2024-12-31",
        },
        language_id=1,
    )
    assert record["ID"] == 42
    assert record["Type"] == "Pre"
    stored = mock_crm.store.v2_record(42, "Pre")
    assert stored is not None
    assert stored["SalesRevenue"] == Decimal("0.1000000000000000055511151231257827")
    assert stored["AcctPotential"] == Decimal("200000.10")
    both = hook.get_opportunity(42)
    assert sorted(r["Type"] for r in both) == ["Post", "Pre"]


def test_v2_unknown_category_names_the_valid_choices(hook: OpportunityHook) -> None:
    with pytest.raises(OpportunityV2ValidationError) as caught:
        hook.put_opportunity(5, "Post", {"CategoryName": "Invalid Category"})
    assert "New Business" in caught.value.available_categories
    assert "'Existing Business'" in str(caught.value)
    assert "Qualified" in str(caught.value)


def test_v2_unknown_id_is_not_found(hook: OpportunityHook) -> None:
    with pytest.raises(OpportunityNotFoundError):
        hook.put_opportunity(100000, "Pre", {"StageName": "Qualified"})


def test_one_token_for_a_hundred_calls_then_a_new_one_after_expiry_or_401(
    hook: OpportunityHook, mock_crm: MockCrmServer
) -> None:
    for number in range(100):
        hook.put_opportunity(1 + number % 50, "Pre", {"SalesRevenue": number})
    assert mock_crm.counters["token_issued"] == 1
    assert hook.token_cache.fetch_count == 1

    mock_crm.expire_tokens_now()  # the server now answers 401 to the cached token
    hook.put_opportunity(1, "Pre", {"SalesRevenue": 1})
    assert mock_crm.counters["token_issued"] == 2
    assert mock_crm.counters["by_status"].get("401", 0) == 1


def test_token_is_refreshed_before_it_expires(
    mock_crm: MockCrmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_OPPORTUNITY_DEFAULT", connection_json(mock_crm))
    mock_crm.set_faults(FaultConfig(token_ttl=1.0))
    hook = OpportunityHook(backoff=FAST)
    hook.put_opportunity(1, "Pre", {"SalesRevenue": 1})
    hook.put_opportunity(1, "Pre", {"SalesRevenue": 2})
    assert mock_crm.counters["token_issued"] == 1
    time.sleep(0.6)  # past half of a 1 s token's life, where the cache counts it as expired
    hook.put_opportunity(1, "Pre", {"SalesRevenue": 3})
    assert mock_crm.counters["token_issued"] == 2
    assert mock_crm.counters["by_status"].get("401", 0) == 0


def test_static_token(mock_crm: MockCrmServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_OPPORTUNITY_DEFAULT", connection_json(mock_crm, static_token=True))
    hook = OpportunityHook(backoff=FAST)
    assert hook.put_opportunity(3, "Post", {"StageName": "Proposal"})["ID"] == 3
    assert mock_crm.counters["token_issued"] == 0


def test_wrong_client_secret_says_which_fields_to_check(
    mock_crm: MockCrmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = connection_json(mock_crm).replace(mock_crm.config.client_secret, "wrong-client-secret-01")
    monkeypatch.setenv("AIRFLOW_CONN_OPPORTUNITY_DEFAULT", conn)
    with pytest.raises(OpportunityAuthenticationError, match=r"extra\.v2_client_secret"):
        OpportunityHook(backoff=FAST).put_opportunity(3, "Post", {"StageName": "Proposal"})


def test_platform_without_credentials_names_the_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPPORTUNITY_DEFAULT",
        '{"conn_type": "opportunity_crm", "extra": {"v2_base_url": "http://127.0.0.1:9", "v2_token": "tok-0001"}}',
    )
    with pytest.raises(OpportunityConfigurationError, match="login \\(the v1 API key\\)"):
        OpportunityHook().add_or_update_opportunity(NEW_OPPORTUNITY)


def test_test_connection_changes_nothing(hook: OpportunityHook, mock_crm: MockCrmServer) -> None:
    ok, message = hook.test_connection()
    assert ok, message
    assert "v1 (iVvy)" in message
    assert "the signed test ping was accepted" in message
    assert "v2 (Nexus)" in message
    assert "was issued and accepted" in message
    counts = mock_crm.counters.snapshot()
    assert counts["v1_creates"] == counts["v1_updates"] == counts["v2_puts"] == 0
    assert mock_crm.store.v1_records() == []


def test_test_connection_reports_a_bad_secret(
    mock_crm: MockCrmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = connection_json(mock_crm).replace(mock_crm.config.api_secret, "a-wrong-secret-0001")
    monkeypatch.setenv("AIRFLOW_CONN_OPPORTUNITY_DEFAULT", conn)
    ok, message = OpportunityHook(backoff=FAST).test_connection()
    assert not ok
    assert "401" in message


def test_one_session_is_reused(hook: OpportunityHook) -> None:
    session = hook.session
    hook.add_or_update_opportunity(NEW_OPPORTUNITY)
    hook.put_opportunity(1, "Pre", {"StageName": "Qualified"})
    assert hook.session is session


def test_no_secret_reaches_logs_errors_or_repr(
    mock_crm: MockCrmServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_OPPORTUNITY_DEFAULT", connection_json(mock_crm))
    caplog.set_level(logging.DEBUG)
    hook = OpportunityHook(backoff=FAST)
    texts: list[str] = [repr(hook), repr(hook.settings)]
    signatures: list[str] = []
    original = flow_module.sign_v1_request

    def recording(*args: Any, **kwargs: Any) -> dict[str, str]:
        headers = original(*args, **kwargs)
        signatures.append(headers["X-Api-Authorization"].split(":", 1)[1])
        return headers

    monkeypatch.setattr(flow_module, "sign_v1_request", recording)
    # Succeeding calls, retried calls and failing calls on both platforms.
    created = hook.add_or_update_opportunity(NEW_OPPORTUNITY)
    hook.put_opportunity(1, "Pre", {"StageName": "Qualified"})
    mock_crm.set_faults(FaultConfig(errors={503: 0.5}, retry_after=0.05, seed=1))
    hook.add_or_update_opportunity({"id": created, "venueId": 107, "name": "Retried"})
    mock_crm.set_faults(FaultConfig(errors={500: 1.0}))
    for call in (
        lambda: hook.add_or_update_opportunity(NEW_OPPORTUNITY),
        lambda: hook.put_opportunity(1, "Pre", {"StageName": "Qualified"}),
    ):
        with pytest.raises(Exception) as caught:  # noqa: PT011 - every failure kind is checked below
            call()
        texts.append(str(caught.value))
        texts.append(repr(caught.value))
    mock_crm.expire_tokens_now()
    mock_crm.set_faults(FaultConfig())
    hook.put_opportunity(1, "Pre", {"StageName": "Proposal"})
    token = hook.token_cache.current()
    captured = capsys.readouterr()
    texts += [caplog.text, captured.out, captured.err, repr(hook.token_cache)]
    everything = "\n".join(texts)
    secrets = [mock_crm.config.api_secret, mock_crm.config.client_secret, token, *signatures]
    assert token
    assert signatures
    assert "retrying in" in everything  # the logs were really captured
    for secret in secrets:
        assert secret not in everything
