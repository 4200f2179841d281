"""Token files, settings from the environment, query parsing (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from kubeshot.api import Format
from kubeshot.gateway.auth import (
    Authenticator,
    hash_token,
    parse_authorization,
    parse_tokens_file,
)
from kubeshot.gateway.errors import ApiError
from kubeshot.gateway.settings import Settings
from kubeshot.gateway.validation import options_from_query

TOKENS = f"""
tokens:
  - name: ci
    sha256: {hash_token("tok-ci-0123456789")}
    policies: [default, intranet]
    rateLimit: 10 per second
  - name: ops
    sha256: {hash_token("tok-ops-0123456789").upper()}
"""


def test_tokens_file_parses_and_authenticates_by_hash():
    entries = parse_tokens_file(TOKENS)
    assert [e.name for e in entries] == ["ci", "ops"]
    assert entries[1].policies == ["*"]
    auth = Authenticator(entries)
    ci = auth.authenticate("tok-ci-0123456789")
    assert ci is not None and ci.name == "ci" and ci.rate_limit == "10 per second"
    assert ci.may_use("intranet") and not ci.may_use("other")
    ops = auth.authenticate("tok-ops-0123456789")
    assert ops is not None and ops.may_use("anything")
    assert auth.authenticate("tok-ci-012345678") is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("tokens: []", "at least 1"),
        ("tokens:\n  - name: a\n    sha256: nothex", "sha256"),
        (
            f"tokens:\n  - name: a\n    sha256: {'a' * 64}\n  - name: a\n    sha256: {'b' * 64}",
            "unique",
        ),
        (f"tokens:\n  - name: a\n    sha256: {'a' * 64}\n    rateLimit: often", "often"),
        (f"tokens:\n  - name: a\n    sha256: {'a' * 64}\n    extra: 1", "extra"),
        ("tokens: [", "YAML"),
    ],
)
def test_invalid_tokens_files_are_refused(text: str, words: str):
    with pytest.raises(ValueError, match=words):
        parse_tokens_file(text)


@pytest.mark.parametrize(
    ("header", "token"), [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("BEARER x.y-z", "x.y-z")]
)
def test_authorization_header_parsing(header: str, token: str):
    assert parse_authorization(header) == token


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Bearer a b", "abc", ""])
def test_malformed_authorization_headers(header: str):
    with pytest.raises(ValueError, match=r"Bearer|malformed"):
        parse_authorization(header)


def test_settings_use_the_seed_names(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AUTH_TOKEN", "t" * 20)
    monkeypatch.setenv("HTTPS_ONLY", "false")
    monkeypatch.setenv("RATE_LIMIT_ENABLED", "false")
    monkeypatch.setenv("RATE_LIMIT_CAPTURE", "10 per minute")
    monkeypatch.setenv("IGNORE_HTTPS_ERRORS", "true")
    monkeypatch.setenv("PROXY_SERVER", "http://proxy.corp:3128")
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1")
    settings = Settings()
    assert settings.auth_token is not None and settings.auth_token.get_secret_value() == "t" * 20
    assert not settings.https_only and not settings.rate_limit_enabled
    assert settings.rate_limit_capture == "10 per minute"
    assert settings.ignore_https_errors
    assert settings.trusted_proxies == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.1/32"),
    ]
    assert "t" * 20 not in repr(settings)


def test_secure_defaults():
    settings = Settings()
    assert settings.https_only and settings.rate_limit_enabled and not settings.no_auth
    assert settings.rate_limit_capture == "5 per second"
    assert settings.host == ["127.0.0.1"] and settings.plain_http_allowed
    assert not Settings(host=["0.0.0.0"]).plain_http_allowed
    assert not Settings(tls_cert="c.pem", tls_key="k.pem").plain_http_allowed


@pytest.mark.parametrize("name", ["RATE_LIMIT_CAPTURE", "RATE_LIMIT_SIGNED"])
def test_bad_rate_limit_syntax_is_refused(monkeypatch: pytest.MonkeyPatch, name: str):
    monkeypatch.setenv(name, "as fast as you like")
    with pytest.raises(ValueError, match="rate"):
        Settings()


def test_query_parameters_become_capture_options():
    options = options_from_query(
        [
            ("url", "http://a.test/"),
            ("format", "jpeg"),
            ("quality", "80"),
            ("fullPage", "true"),
            ("viewport.width", "800"),
            ("viewport.height", "600"),
            ("headers", '{"X-A": "1"}'),
            ("expires", "1"),
            ("keyId", "k"),
            ("signature", "s"),
            ("policy", "p"),
        ]
    )
    assert options.format is Format.JPEG and options.quality == 80 and options.full_page
    assert (options.viewport.width, options.viewport.height) == (800, 600)
    assert options.headers == {"X-A": "1"}


@pytest.mark.parametrize(
    "params",
    [
        [("url", "http://a.test/"), ("url", "http://b.test/")],
        [("url", "http://a.test/"), ("viewport.width.x", "1")],
        [("url", "http://a.test/"), ("format.x", "1")],
        [("url", "http://a.test/"), ("cookies", "[")],
    ],
)
def test_bad_query_parameters_are_400(params: list[tuple[str, str]]):
    with pytest.raises(ApiError) as caught:
        options_from_query(params)
    assert caught.value.status == 400


def test_engine_messages_lose_internal_addresses_but_keep_the_callers():
    from kubeshot.gateway.errors import redact_addresses

    text = "refused db.corp (10.0.0.5:5432), [fd00::1]:443, ::1 and 203.0.113.9 at 12:30 v1.2"
    assert redact_addresses(text, "http://203.0.113.9/") == (
        "refused db.corp ([address]:5432), [address]:443, [address] and 203.0.113.9 at 12:30 v1.2"
    )
