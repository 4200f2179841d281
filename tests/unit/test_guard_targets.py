"""URL and host parsing as a browser reads them: odd address spellings, schemes, authorities."""

from __future__ import annotations

import pytest

from kubeshot_capture.guard import (
    InvalidTarget,
    normalise_host,
    parse_authority,
    parse_ipv4,
    parse_url,
)

IPV4_SPELLINGS = [
    ("127.0.0.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("0X7F000001", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("0177.0000.0000.0001", "127.0.0.1"),
    ("0x7f.0x0.0x0.0x1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("127.0.0.1.", "127.0.0.1"),
    ("0", "0.0.0.0"),
    ("0x", "0.0.0.0"),
    ("0.0", "0.0.0.0"),
    ("169.254.43518", "169.254.169.254"),
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
    ("2852039166", "169.254.169.254"),
    ("0251.0376.0251.0376", "169.254.169.254"),
    ("10.1", "10.0.0.1"),
    ("1.256", "1.0.1.0"),
    ("4294967295", "255.255.255.255"),
]


@pytest.mark.parametrize(("spelling", "address"), IPV4_SPELLINGS)
def test_ipv4_spellings_decode_like_a_browser(spelling: str, address: str) -> None:
    assert str(parse_ipv4(spelling)) == address
    assert normalise_host(spelling)[0] == address


@pytest.mark.parametrize(
    "spelling",
    [
        "1.2.3.4.5",
        "256.0.0.1",
        "1.2.3.256",
        "4294967296",
        "09.0.0.1",
        "foo.1",
        "a..1",
        "1.2.65536",
        "0xfffffffff",
    ],
)
def test_invalid_numeric_hosts_are_refused(spelling: str) -> None:
    with pytest.raises(InvalidTarget):
        normalise_host(spelling)


@pytest.mark.parametrize(
    "name", ["example.com", "1e1", "0x1g", "0x7f.example", "a.b-c.d", "localhost"]
)
def test_names_are_not_addresses(name: str) -> None:
    assert parse_ipv4(name) is None


HOSTS = [
    ("Example.COM", "example.com"),
    ("example.com.", "example.com"),
    ("LOCALHOST.", "localhost"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("\u24dbocalhost", "localhost"),
    ("\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11", "127.0.0.1"),
    ("127\u30020\u30020\u30021", "127.0.0.1"),
    ("%31%32%37.0.0.1", "127.0.0.1"),
    ("%6c%6f%63%61%6c%68%6f%73%74", "localhost"),
    ("[::1]", "::1"),
    ("[0:0:0:0:0:0:0:1]", "::1"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
    ("[::FFFF:7F00:1]", "::ffff:7f00:1"),
    ("[fd00:ec2::254]", "fd00:ec2::254"),
    ("under_score.example", "under_score.example"),
]


@pytest.mark.parametrize(("raw", "host"), HOSTS)
def test_hosts_normalise(raw: str, host: str) -> None:
    assert normalise_host(raw)[0] == host


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "a b",
        "exa mple.com",
        "host\x00.com",
        "[::1",
        "[::1%25eth0]",
        "[zz::1]",
        "a/b",
        "%ff.example",
        "*.example",
        "a" * 64 + ".com",
        "\\\\localhost",
    ],
)
def test_bad_hosts_are_refused(raw: str) -> None:
    with pytest.raises(InvalidTarget):
        normalise_host(raw)


URLS = [
    ("http://example.com/", "http", "example.com", 80),
    ("HTTPS://EXAMPLE.com", "https", "example.com", 443),
    ("http://127.1:8080/x", "http", "127.0.0.1", 8080),
    ("http://2130706433/", "http", "127.0.0.1", 80),
    ("http://[::1]:81/", "http", "::1", 81),
    ("http://[::ffff:169.254.169.254]/", "http", "::ffff:a9fe:a9fe", 80),
    ("http:\\\\127.0.0.1\\x", "http", "127.0.0.1", 80),
    ("http:/127.0.0.1/", "http", "127.0.0.1", 80),
    ("http:127.0.0.1/", "http", "127.0.0.1", 80),
    ("  http://127.0.0.1/ ", "http", "127.0.0.1", 80),
    ("ht\ttp://127.0.0.1/", "http", "127.0.0.1", 80),
    ("http://user:pass@127.0.0.1/", "http", "127.0.0.1", 80),
    ("http://evil.example@127.0.0.1/", "http", "127.0.0.1", 80),
    ("http://127.0.0.1#@evil.example/", "http", "127.0.0.1", 80),
    ("http://127.0.0.1?@evil.example/", "http", "127.0.0.1", 80),
    ("http://evil.example:80@127.0.0.1:81/", "http", "127.0.0.1", 81),
    ("http://example.com:/", "http", "example.com", 80),
    ("ws://example.com/socket", "ws", "example.com", 80),
    ("wss://example.com/socket", "wss", "example.com", 443),
]


@pytest.mark.parametrize(("url", "scheme", "host", "port"), URLS)
def test_urls_parse_like_a_browser(url: str, scheme: str, host: str, port: int) -> None:
    target = parse_url(url)
    assert (target.scheme, target.host, target.port) == (scheme, host, port)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "FILE:///etc/passwd",
        "file://localhost/etc/passwd",
        "view-source:http://127.0.0.1/",
        "chrome://settings",
        "about:blank",
        "data:text/html,x",
        "javascript:alert(1)",
        "ftp://127.0.0.1/",
        "gopher://127.0.0.1:25/",
        "blob:http://x/y",
        "filesystem:http://x/temporary/y",
        "dict://127.0.0.1:11211/",
        "ldap://127.0.0.1/",
        "jar:http://x!/",
        "//127.0.0.1/",
        "127.0.0.1",
        "http://",
        "http://127.0.0.1:0/",
        "http://127.0.0.1:65536/",
        "http://127.0.0.1:8o/",
    ],
)
def test_unusable_urls_raise(url: str) -> None:
    with pytest.raises(InvalidTarget):
        parse_url(url)


@pytest.mark.parametrize(
    ("authority", "host", "port"),
    [
        ("example.com:443", "example.com", 443),
        ("[::1]:8443", "::1", 8443),
        ("0x7f000001:443", "127.0.0.1", 443),
    ],
)
def test_authorities(authority: str, host: str, port: int) -> None:
    target = parse_authority(authority, "https")
    assert (target.host, target.port) == (host, port)
    assert parse_authority(target.authority, "https") == target


@pytest.mark.parametrize(
    "authority", ["", "user@example.com:443", "[::1:443", "a b:443", "x:99999"]
)
def test_bad_authorities(authority: str) -> None:
    with pytest.raises(InvalidTarget):
        parse_authority(authority, "https")
