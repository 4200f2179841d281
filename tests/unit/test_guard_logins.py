"""The capture logins that tie a proxy request to its session: parsing, lookup, the challenge."""

from __future__ import annotations

import base64

import pytest

from kubeshot.api import NetworkRules
from kubeshot_capture.guard import EgressGuard, Logins, ProxyLogin, parse_basic
from kubeshot_capture.guard.proxy import AUTH_CHALLENGE


def basic(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return b"Basic " + base64.b64encode(raw)


@pytest.fixture
def login() -> ProxyLogin:
    return ProxyLogin.generate()


@pytest.fixture
def logins(login: ProxyLogin) -> Logins[str]:
    registry: Logins[str] = Logins()
    registry.add(login, "session A")
    registry.add(ProxyLogin.generate(), "session B")
    return registry


def test_generated_logins_are_random_and_the_password_stays_out_of_repr() -> None:
    generated = [ProxyLogin.generate() for _ in range(50)]
    assert len({g.username for g in generated}) == 50
    assert len({g.password for g in generated}) == 50
    assert all(len(g.password) >= 40 for g in generated)  # 32 random bytes, base64
    assert all(":" not in g.username for g in generated)
    assert generated[0].password not in repr(generated[0])


def test_the_header_round_trips(login: ProxyLogin) -> None:
    assert parse_basic([login.header()]) == (login.username, login.password.encode())
    assert parse_basic([b"bAsIc " + login.header().split(b" ")[1]]) is not None
    assert parse_basic([basic("user:pass:with:colons")]) == ("user", b"pass:with:colons")
    assert parse_basic([basic("user:")]) == ("user", b"")


@pytest.mark.parametrize(
    "values",
    [
        [],
        [b""],
        [b"Basic"],
        [b"Bearer " + base64.b64encode(b"u:p")],
        [b"Digest username=u"],
        [b"Basic " + base64.b64encode(b"no-colon")],
        [b"Basic not*base64!"],
        [b"Basic " + base64.b64encode(b"u:p")[:-1]],
        [basic(b"\xff\xfe:p")],
        [basic("u:p"), basic("u:p")],
    ],
)
def test_malformed_or_ambiguous_headers_carry_no_login(values: list[bytes]) -> None:
    assert parse_basic(values) is None


def test_lookup_finds_the_session_of_the_login(logins: Logins[str], login: ProxyLogin) -> None:
    assert logins.lookup([login.header()]) == "session A"
    assert len(logins) == 2


def test_a_wrong_password_finds_nothing(logins: Logins[str], login: ProxyLogin) -> None:
    for password in (login.password[:-1], login.password + "x", "", login.password.upper()):
        assert logins.lookup([basic(f"{login.username}:{password}")]) is None


def test_an_unknown_user_finds_nothing(logins: Logins[str], login: ProxyLogin) -> None:
    assert logins.lookup([basic(f"capture-0123456789abcdef:{login.password}")]) is None
    assert logins.lookup([basic(f"{login.username.upper()}:{login.password}")]) is None


def test_another_sessions_password_finds_nothing(logins: Logins[str], login: ProxyLogin) -> None:
    other = ProxyLogin.generate()
    logins.add(other, "session C")
    assert logins.lookup([basic(f"{login.username}:{other.password}")]) is None
    assert logins.lookup([basic(f"{other.username}:{login.password}")]) is None


def test_a_missing_header_finds_nothing(logins: Logins[str]) -> None:
    assert logins.lookup([]) is None


def test_a_removed_login_finds_nothing(logins: Logins[str], login: ProxyLogin) -> None:
    logins.remove(login, "session A")
    assert logins.lookup([login.header()]) is None
    assert logins.sessions() == ["session B"]


def test_removing_is_only_for_the_owner(logins: Logins[str], login: ProxyLogin) -> None:
    logins.remove(login, "someone else")
    assert logins.lookup([login.header()]) == "session A"


def test_a_login_serves_one_session(logins: Logins[str], login: ProxyLogin) -> None:
    with pytest.raises(RuntimeError, match="already in use"):
        logins.add(login, "session C")
    assert logins.lookup([login.header()]) == "session A"


def test_the_challenge_is_a_407_with_basic_realm_and_closes() -> None:
    head, _, body = AUTH_CHALLENGE.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 407 Proxy Authentication Required"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["proxy-authenticate"] == 'Basic realm="kubeshot"'
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)


def test_the_guard_forgets_a_sessions_login_when_it_closes() -> None:
    guard = EgressGuard()
    rules = NetworkRules()
    first = guard.session(rules, max_download_bytes=1)
    second = guard.session(rules, max_download_bytes=1)
    assert first.login != second.login
    assert guard.sessions == [first, second]
    first.close()
    assert guard.sessions == [second]
    reopened = guard.session(rules, max_download_bytes=1, login=ProxyLogin.generate())
    assert guard.sessions == [second, reopened]
    with pytest.raises(RuntimeError, match="already in use"):
        guard.session(rules, max_download_bytes=1, login=second.login)


def test_a_context_proxy_carries_the_login() -> None:
    guard = EgressGuard()
    guard._port = 8123  # as if started; no socket in a unit test
    login = ProxyLogin.generate()
    proxy = guard.context_proxy(login)
    assert proxy == {
        "server": "http://127.0.0.1:8123",
        "bypass": "<-loopback>",
        "username": login.username,
        "password": login.password,
    }
    assert "username" not in guard.browser_proxy
