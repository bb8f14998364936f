"""v1 signing against the vendor's published test vectors, and the v2 token cache."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from airflow_opportunity_provider.auth import (
    TokenCache,
    content_md5,
    hmac_sha1_hex,
    sign_v1_request,
    v1_string_to_sign,
)

VECTOR_BODY = b'{"example":"body"}'


def test_vendor_md5_vector() -> None:
    assert len(VECTOR_BODY) == 18
    assert content_md5(VECTOR_BODY) == "a09f600c77a6dbd947db24c61e8935ca"


def test_vendor_string_to_sign_vector() -> None:
    to_sign = v1_string_to_sign(
        "POST",
        content_md5(VECTOR_BODY),
        "application/json",
        "",
        "/api/1.0/test?action=ping",
        {"IVVY-Date": "2012-04-03 22:23:24"},
    )
    assert to_sign == (
        "posta09f600c77a6dbd947db24c61e8935caapplication/json/api/1.0/test?action=ping1.0"
        "ivvydate=2012-04-03 22:23:24"
    )


def test_vendor_hmac_vector() -> None:
    assert hmac_sha1_hex("my secret key", "string to sign") == "a993876ea1218921a1c8551923473da7b310dfae"


def test_ivvy_headers_are_sorted_and_stripped_of_dashes_and_underscores() -> None:
    to_sign = v1_string_to_sign(
        "POST", "md5", "application/json", "", "/p", {"IVVY_Zeta": "z", "IVVY-Date": "d", "Other": "x"}
    )
    assert to_sign.endswith("1.0ivvydate=d&ivvyzeta=z")


def test_sign_v1_request_headers_and_fresh_date() -> None:
    moment = datetime(2012, 4, 3, 22, 23, 24, tzinfo=UTC)
    headers = sign_v1_request(
        "key-1234", "secret-abcdef", "/api/1.0/test?action=ping", VECTOR_BODY, now=moment
    )
    expected_signature = hmac_sha1_hex(
        "secret-abcdef",
        "posta09f600c77a6dbd947db24c61e8935caapplication/json/api/1.0/test?action=ping1.0"
        "ivvydate=2012-04-03 22:23:24",
    )
    assert headers == {
        "IVVY-Date": "2012-04-03 22:23:24",
        "Content-Type": "application/json",
        "Content-MD5": "a09f600c77a6dbd947db24c61e8935ca",
        "X-Api-Version": "1.0",
        "X-Api-Authorization": f"IWS key-1234:{expected_signature}",
    }
    later = sign_v1_request(
        "key-1234",
        "secret-abcdef",
        "/api/1.0/test?action=ping",
        VECTOR_BODY,
        now=moment.replace(second=25),
    )
    assert later["X-Api-Authorization"] != headers["X-Api-Authorization"]


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_cache_expires_before_expires_in() -> None:
    clock = _Clock()
    cache = TokenCache(clock=clock, margin=60)
    assert cache.current() is None
    cache.store({"access_token": "token-one-abcdef", "expires_in": 3600})
    assert cache.current() == "token-one-abcdef"
    clock.now += 3600 - 61
    assert cache.current() == "token-one-abcdef"
    clock.now += 2
    assert cache.current() is None
    assert cache.fetch_count == 1


def test_token_cache_short_lived_token_keeps_half_its_life() -> None:
    clock = _Clock()
    cache = TokenCache(clock=clock, margin=60)
    cache.store({"access_token": "short-lived-token", "expires_in": 4})
    clock.now += 1.9
    assert cache.current() == "short-lived-token"
    clock.now += 0.2
    assert cache.current() is None


def test_token_cache_invalidate_keeps_a_newer_token() -> None:
    cache = TokenCache()
    cache.store({"access_token": "old-token-abcdef", "expires_in": 3600})
    cache.store({"access_token": "new-token-abcdef", "expires_in": 3600})
    cache.invalidate("old-token-abcdef")
    assert cache.current() == "new-token-abcdef"
    cache.invalidate("new-token-abcdef")
    assert cache.current() is None


def test_static_token_is_never_dropped() -> None:
    cache = TokenCache("static-token-abcdef")
    cache.invalidate("static-token-abcdef")
    assert cache.current() == "static-token-abcdef"
    assert "static-token-abcdef" not in repr(cache)


def test_token_answer_without_access_token_is_an_error() -> None:
    with pytest.raises(ValueError, match="access_token"):
        TokenCache().store({"token_type": "Bearer"})
