"""Token files, settings from the environment, query parsing, log redaction, fair shares and
the pixel budget (pure)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from pathlib import Path
from typing import Any

import pytest

from kubeshot.api import CaptureOptions, Format, ScreenshotPolicySpec
from kubeshot.api.admission import pixel_budget_fields, violations
from kubeshot.api.capture import MAX_CAPTURE_PIXELS
from kubeshot.gateway.app import _secrets, build_authenticator, token_entries
from kubeshot.gateway.auth import (
    Authenticator,
    Identity,
    hash_token,
    parse_authorization,
    parse_tokens_file,
)
from kubeshot.gateway.errors import ApiError
from kubeshot.gateway.fairness import FairShare
from kubeshot.gateway.redaction import install, redact
from kubeshot.gateway.security import client_key
from kubeshot.gateway.settings import Settings, default_workers
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
        (f"tokens:\n  - name: default\n    sha256: {'a' * 64}", "'default' is reserved"),
        (f"tokens:\n  - name: Signed\n    sha256: {'a' * 64}", "'Signed' is reserved"),
        (f"tokens:\n  - name: anonymous\n    sha256: {'a' * 64}", "'anonymous' is reserved"),
        (
            f"tokens:\n  - name: ci\n    sha256: {'a' * 64}\n  - name: CI\n    sha256: {'b' * 64}",
            "'ci' .* and 'CI' .* name the same identity",
        ),
        (
            f"tokens:\n  - name: a\n    sha256: {'a' * 64}\n  - name: b\n    sha256: {'A' * 64}",
            "listed twice",
        ),
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


def test_abuse_limits_have_sane_defaults():
    settings = Settings()
    assert settings.header_timeout == 15 and settings.body_timeout == 30
    assert settings.max_connections_per_address == 32
    assert settings.rate_limit_signed_global == "10 per second"
    assert settings.max_captures_per_identity == 4 and settings.fair_share
    assert settings.queue_size == 16 and settings.workers == default_workers()
    assert settings.capture_capacity == settings.workers + settings.queue_size
    assert settings.max_pixels == MAX_CAPTURE_PIXELS
    with pytest.raises(ValueError, match=r"max_pixels|KUBESHOT_MAX_PIXELS"):
        Settings(max_pixels=MAX_CAPTURE_PIXELS + 1)  # the engine would refuse it anyway


@pytest.mark.parametrize(
    "name", ["RATE_LIMIT_CAPTURE", "RATE_LIMIT_SIGNED", "RATE_LIMIT_SIGNED_GLOBAL"]
)
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
    from kubeshot.api.reasons import redact_addresses

    text = "refused db.corp (10.0.0.5:5432), [fd00::1]:443, ::1 and 203.0.113.9 at 12:30 v1.2"
    assert redact_addresses(text, "http://203.0.113.9/") == (
        "refused db.corp ([address]:5432), [address]:443, [address] and 203.0.113.9 at 12:30 v1.2"
    )
    # Only the address the caller's URL names is theirs; one that merely stands inside it is not.
    assert redact_addresses("10.0.0.1 refused", "http://110.0.0.12/") == "[address] refused"
    assert redact_addresses("::1 refused", "http://[::1]:8080/") == "::1 refused"
    assert redact_addresses("10.0.0.1 refused", "(html input)") == "[address] refused"


def _settings_with_tokens(tmp_path: Path, text: str, **values: Any) -> Settings:
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    return Settings(tokens_file=path, **values)


def test_identities_are_distinct_across_token_sources(tmp_path: Path):
    token = "shared-token-0123456789abcdef"
    text = f"tokens:\n  - name: ci\n    sha256: {hash_token(token)}\n"
    with pytest.raises(ValueError, match=r"listed twice: as 'default' \(AUTH_TOKEN\) and as 'ci'"):
        token_entries(_settings_with_tokens(tmp_path, text, auth_token=token))
    entries = token_entries(_settings_with_tokens(tmp_path, text, auth_token="another-" + token))
    assert [e.name for e in entries] == ["default", "ci"]
    with pytest.raises(ValueError, match="'default' is reserved for the AUTH_TOKEN identity"):
        build_authenticator(
            _settings_with_tokens(tmp_path, f"tokens:\n  - name: default\n    sha256: {'c' * 64}")
        )
    with pytest.raises(ValueError, match=r"tokens file .*missing\.yaml"):
        token_entries(Settings(tokens_file=tmp_path / "missing.yaml"))


@pytest.mark.parametrize(
    ("client", "key"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::9", "2001:db8:1:2::/64"),
        ("unknown", "unknown"),
    ],
)
def test_clients_are_counted_by_address_and_ipv6_by_64(client: str, key: str):
    assert client_key(client) == key


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ('GET /v1/screenshot?url=x&expires=1&keyId=k2&signature=5c1f9e HTTP/1.1" 200', "5c1f9e"),
        ("GET /v1/captures?token=abc123def&x=1", "abc123def"),
        ("GET /?a=1&api_key=zz9zz&b=2", "zz9zz"),
        ("Authorization: Bearer tok.en-123", "tok.en-123"),
        ("headers={'authorization': 'Basic dXNlcjpwYXNz'}", "dXNlcjpwYXNz"),
        ('{"password": "hunter2hunter2", "user": "u"}', "hunter2hunter2"),
        ("proxy http://user:s3cr3tpass@proxy.corp:3128 refused", "s3cr3tpass"),
        ("PROXY_PASSWORD=p4ssw0rd-long", "p4ssw0rd-long"),
        ("Cookie: session=abcdef0123", "abcdef0123"),
    ],
)
def test_credentials_are_masked_in_log_text(line: str, secret: str):
    masked = redact(line)
    assert secret not in masked and "***" in masked


def test_log_text_without_credentials_is_left_alone():
    for line in (
        '127.0.0.1 "GET /v1/screenshot?url=https%3A%2F%2Fa.test%2F&keyId=k2&expires=9 HTTP/1.1"',
        "the token is not valid",
        "capture worker 4242 ready",
    ):
        assert redact(line) == line


def test_every_log_record_is_redacted_with_the_gateways_own_secrets(
    caplog: pytest.LogCaptureFixture,
):
    install(["literal-secret-0123456789"])
    caplog.set_level(logging.INFO)
    log = logging.getLogger("kubeshot.unit")
    log.info("configured with %s and ?signature=%s", "literal-secret-0123456789", "abcdef")
    try:
        raise RuntimeError("failed with Authorization: Bearer xyz-secret-token")
    except RuntimeError:
        log.exception("boom")
    assert "literal-secret-0123456789" not in caplog.text
    assert "abcdef" not in caplog.text and "xyz-secret-token" not in caplog.text
    assert "signature=***" in caplog.text


def test_the_redis_url_is_a_secret_of_the_gateway() -> None:
    url = "redis://:pa55-word-0123456789@redis.example:6379/0"
    settings = Settings(redis_url=url, no_auth=True)
    assert url not in repr(settings) and "pa55-word-0123456789" not in repr(settings)
    assert {url, "pa55-word-0123456789"} <= set(_secrets(settings))
    with pytest.raises(ValueError, match="redis:// or rediss://"):
        Settings(redis_url="http://redis.example:6379")


def _identity(name: str) -> Identity:
    return Identity(name=name, kind="token", rate_key=f"token:{name}")


async def test_fair_share_caps_each_identity_and_leaves_room_for_newcomers():
    fair = FairShare(capacity=8, per_identity=3)
    a, b, c = _identity("a"), _identity("b"), _identity("c")
    async with contextlib.AsyncExitStack() as held:
        for _ in range(3):
            await held.enter_async_context(fair.slot(a))  # alone: min(3, 8 // 2)
        with pytest.raises(ApiError) as refused:
            await held.enter_async_context(fair.slot(a))
        assert refused.value.status == 429 and refused.value.code == "concurrency_limited"
        assert refused.value.details == {"inFlight": 3, "limit": 3}
        assert fair.limit("token:b") == 2  # 8 // (a, b + 1)
        await held.enter_async_context(fair.slot(b))
        await held.enter_async_context(fair.slot(b))
        with pytest.raises(ApiError):
            await held.enter_async_context(fair.slot(b))
        assert fair.limit("token:c") == 2  # 8 // (a, b, c + 1)
        await held.enter_async_context(fair.slot(c))
        assert fair.limit("token:a") == 2  # a holds more than its share now: no new place
        with pytest.raises(ApiError):
            await held.enter_async_context(fair.slot(a))
    assert fair.held("token:a") == fair.held("token:b") == 0
    assert fair.limit("token:a") == 3


def test_fair_share_never_goes_below_one_and_can_be_switched_off():
    fair = FairShare(capacity=2, per_identity=4)
    assert fair.limit("token:a") == 1
    assert FairShare(capacity=2, per_identity=4, fair_share=False).limit("token:a") == 4


async def test_an_async_job_keeps_its_place_until_it_has_finished():
    fair = FairShare(capacity=8, per_identity=1, keep_jobs=True)
    a = _identity("a")
    async with fair.slot(a) as slot:
        slot.keep("j1")
    assert fair.held("token:a") == 1
    with pytest.raises(ApiError):
        await fair.slot(a).__aenter__()
    await fair.job_finished("j2")  # another job: no place of a's
    assert fair.held("token:a") == 1
    await fair.job_finished("j1")
    assert fair.held("token:a") == 0
    async with fair.slot(a):
        assert fair.held("token:a") == 1
    # Without a registry that reports finished jobs, a kept place is given back at once.
    unkept = FairShare(capacity=8, per_identity=1)
    async with unkept.slot(a) as slot:
        slot.keep("j1")
    assert unkept.held("token:a") == 0


@pytest.mark.parametrize(
    ("options", "fields"),
    [
        ({"viewport": {"width": 3840, "height": 2160}, "deviceScaleFactor": 4}, None),
        ({"viewport": {"width": 3840, "height": 2160}, "deviceScaleFactor": 2.1}, None),
        ({"viewport": {"width": 3840, "height": 2160}, "deviceScaleFactor": 2}, []),
        ({"viewport": {"width": 1920}, "fullPage": True}, []),
        ({"viewport": {"width": 2560}, "fullPage": True}, ["viewport", "fullPage"]),
        ({"fullPage": True, "deviceScaleFactor": 2}, ["viewport", "deviceScaleFactor", "fullPage"]),
        ({"format": "pdf", "viewport": {"width": 16384, "height": 16384}}, []),
    ],
)
def test_the_pixel_budget(options: dict[str, Any], fields: list[str] | None):
    capture = CaptureOptions.model_validate({"url": "https://a.test/", **options})
    policy = ScreenshotPolicySpec.model_validate(
        {"limits": {"maxViewport": {"width": 16384, "height": 16384}}}
    )
    found = pixel_budget_fields(capture, policy)
    if fields == []:
        assert found is None
        assert not any("device pixels" in v for v in violations(capture, policy))
        return
    assert found is not None
    assert found[0] == (fields or ["viewport", "deviceScaleFactor"])
    assert f"over the limit of {MAX_CAPTURE_PIXELS}" in found[1]
    # The operator and the engine refuse it too (PolicyViolation), by the same rule.
    assert found[1] in violations(capture, policy)


@pytest.mark.parametrize(
    ("cpus", "memory", "expected"),
    [
        (2, 24 * 2**30, 2),  # one per CPU
        (8, 3 * 2**30, 3),  # as many as fit at 1 GiB each
        (4, 2**29, 1),  # at least one
        (64, 2**50, 16),  # bounded
    ],
)
def test_default_workers_are_what_the_machine_can_carry(cpus: int, memory: int, expected: int):
    assert default_workers(cpus, memory) == expected
