"""Signed-URL canonicalisation and verification (pure)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeshot.gateway.signing import (
    DEFAULT_KEY_ID,
    SignatureError,
    UrlSigner,
    canonical_query,
    parse_keys,
    string_to_sign,
)

SECRET = "k2:" + "a" * 32 + ",k1:" + "b" * 32
NOW = 1_800_000_000.0


def test_canonical_query_sorts_encodes_and_drops_the_signature():
    params = [
        ("url", "https://ex.com/a b?c=d&e"),
        ("format", "png"),
        ("signature", "x"),
        ("b", "é~-._"),
    ]
    assert canonical_query(params) == (
        "b=%C3%A9~-._&format=png&url=https%3A%2F%2Fex.com%2Fa%20b%3Fc%3Dd%26e"
    )


def test_string_to_sign_binds_method_and_path():
    assert string_to_sign([("a", "1")]) == b"GET\n/v1/screenshot\na=1"


def test_signature_is_hmac_sha256_of_the_string_to_sign():
    signer = UrlSigner.from_secret(SECRET)
    signed = signer.sign([("url", "http://x.test/")], 60, now=NOW)
    params = dict(signed)
    assert params["keyId"] == "k2"
    assert params["expires"] == str(int(NOW) + 60)
    expected = hmac.new(b"a" * 32, string_to_sign(signed), hashlib.sha256).hexdigest()
    assert params["signature"] == expected
    signer.verify(signed, now=NOW)


def test_keys_parse_with_and_without_ids():
    assert parse_keys("c" * 20) == {DEFAULT_KEY_ID: b"c" * 20}
    assert list(parse_keys(SECRET)) == ["k2", "k1"]
    with pytest.raises(ValueError, match="shorter"):
        parse_keys("k1:short")
    with pytest.raises(ValueError, match="twice"):
        parse_keys("k1:" + "a" * 20 + ",k1:" + "b" * 20)


def test_verify_refuses_expired_and_too_distant_urls():
    signer = UrlSigner.from_secret(SECRET, max_ttl=100)
    signed = signer.sign([("url", "http://x.test/")], 50, now=NOW)
    with pytest.raises(SignatureError, match="expired"):
        signer.verify(signed, now=NOW + 51)
    with pytest.raises(SignatureError, match="more than"):
        UrlSigner(signer.keys, max_ttl=10).verify(signed, now=NOW)
    with pytest.raises(ValueError, match="expires-in"):
        signer.sign([("url", "http://x.test/")], 101, now=NOW)


def test_a_signer_without_keys_refuses_everything():
    with pytest.raises(SignatureError, match="not enabled"):
        UrlSigner.from_secret(None).verify([("signature", "0" * 64)])


def test_reserved_parameters_cannot_be_signed_over():
    with pytest.raises(ValueError, match="may not contain"):
        UrlSigner.from_secret(SECRET).sign([("expires", "1")], 60)


@given(
    st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=16)), max_size=6),
    st.integers(min_value=0, max_value=5),
    st.text(min_size=1, max_size=8),
)
def test_any_change_to_a_signed_query_breaks_it(
    params: list[tuple[str, str]], index: int, extra: str
):
    params = [(k, v) for k, v in params if k not in {"expires", "keyId", "signature"}]
    signer = UrlSigner.from_secret(SECRET)
    signed = signer.sign(params, 60, now=NOW)
    signer.verify(signed, now=NOW)
    with pytest.raises(SignatureError):
        signer.verify([*signed, ("x" + extra, extra)], now=NOW)
    if params:
        i = index % len(params)
        changed = list(signed)
        changed[i] = (changed[i][0], changed[i][1] + "x")
        with pytest.raises(SignatureError):
            signer.verify(changed, now=NOW)
        removed = signed[:i] + signed[i + 1 :]
        if sorted(removed) != sorted(signed):
            with pytest.raises(SignatureError):
                signer.verify(removed, now=NOW)
