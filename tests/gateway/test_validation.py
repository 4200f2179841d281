"""Validation (400 naming the field, 413, 415) and admission against the policy (403)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import ClientSession

from tests.gateway.conftest import CI_TOKEN, LIMITED_TOKEN, Gateway, Pages


async def _post(
    gateway: Gateway,
    session: ClientSession,
    body: Any,
    token: str | None = None,
    query: str = "",
) -> tuple[int, dict[str, Any]]:
    headers = gateway.auth(token) if token else gateway.auth()
    async with session.post(f"{gateway.url}/v1/screenshot{query}", json=body, headers=headers) as r:
        return r.status, await r.json()


URL = "http://127.0.0.1:9/"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": URL, "viewport": {"width": 0, "height": 100}}, "viewport.width"),
        ({"url": URL, "viewport": {"width": 100, "height": 99999}}, "viewport.height"),
        ({"url": "file:///etc/passwd"}, "url"),
        ({"url": "javascript:alert(1)"}, "url"),
        ({"url": "chrome://settings"}, "url"),
        ({"url": "http://user:pw@example.com/"}, "url"),
        ({"url": "http://" + "a" * 2100 + ".com/"}, "url"),
        ({"url": "http://exa mple.com/"}, "url"),
        ({"url": "http://a..example/"}, "url"),
        ({"url": "http://-bad-.example/"}, "url"),
        ({"url": URL, "quality": 101, "format": "jpeg"}, "quality"),
        ({"url": URL, "format": "gif"}, "format"),
        ({"url": URL, "delayMs": -1}, "delayMs"),
        ({"url": URL, "deviceScaleFactor": 10}, "deviceScaleFactor"),
        ({"url": URL, "customCSS": "x" * (64 * 1024 + 1)}, "customCSS"),
        ({"url": URL, "customJavaScript": "x" * (64 * 1024 + 1)}, "customJavaScript"),
        ({"url": URL, "headers": {f"X-H{i}": "v" for i in range(33)}}, "headers"),
        ({"url": URL, "headers": {"Host": "evil"}}, "headers"),
        ({"url": URL, "headers": {"X-A": "a\r\nb"}}, "headers"),
        ({"url": URL, "cookies": [{"name": f"c{i}", "value": "v"} for i in range(51)]}, "cookies"),
        ({"url": URL, "timezone": "Mars/Olympus"}, "timezone"),
        ({"url": URL, "locale": "not a locale"}, "locale"),
        ({"url": URL, "locale": "de-DE\n"}, "locale"),
        ({"url": URL, "headers": {"X-A\n": "v"}}, "headers"),
        ({"url": URL, "fullPage": "yes please"}, "fullPage"),
        ({"url": URL, "unknownOption": True}, "unknownOption"),
        ({"url": URL, "timeoutSeconds": 0}, "timeoutSeconds"),
    ],
)
async def test_invalid_field_is_400_naming_it(
    gateway: Gateway, session: ClientSession, body: dict[str, Any], field: str
):
    status, answer = await _post(gateway, session, body)
    assert status == 400, answer
    error = answer["error"]
    assert error["code"] == "invalid_request"
    assert any(d["field"].startswith(field) for d in error["details"]), error
    assert field in error["message"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"url": URL, "html": "<p>x</p>"},
        {"url": URL, "quality": 50},
        {"url": URL, "format": "pdf", "fullPage": True},
        [1, 2, 3],
        "just a string",
        0,
    ],
)
async def test_inconsistent_or_non_object_bodies_are_400(
    gateway: Gateway, session: ClientSession, body: Any
):
    status, answer = await _post(gateway, session, body)
    assert status == 400
    assert answer["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("path", ["/v1/screenshot", "/v1/captures"])
async def test_a_query_parameter_a_post_does_not_know_is_400_not_ignored(
    gateway: Gateway, session: ClientSession, path: str
):
    # Options travel in the body; `?format=pdf` beside a png body was silently ignored.
    url = f"{gateway.url}{path}?policy=default&format=pdf&fullPage=true"
    async with session.post(url, json={"html": "<p>x</p>"}, headers=gateway.auth()) as r:
        assert r.status == 400
        answer = await r.json()
    assert answer["error"]["code"] == "invalid_request"
    assert "unknown query parameter 'format'" in answer["error"]["message"]
    assert [d["field"] for d in answer["error"]["details"]] == ["format", "fullPage"]


async def test_body_that_is_not_json(gateway: Gateway, session: ClientSession):
    headers = {**gateway.auth(), "Content-Type": "application/json"}
    async with session.post(f"{gateway.url}/v1/screenshot", data=b"{nope", headers=headers) as r:
        assert r.status == 400
    deep = b"[" * 100000 + b"]" * 100000
    async with session.post(f"{gateway.url}/v1/screenshot", data=deep, headers=headers) as r:
        assert r.status == 400


async def test_wrong_content_type_is_415(gateway: Gateway, session: ClientSession):
    headers = {**gateway.auth(), "Content-Type": "text/plain"}
    async with session.post(f"{gateway.url}/v1/screenshot", data=b"{}", headers=headers) as r:
        assert r.status == 415


async def test_oversize_body_is_413(gateway: Gateway, session: ClientSession):
    big = {"html": "x" * (gateway.settings.max_body_bytes + 10)}
    status, answer = await _post(gateway, session, big)
    assert status == 413
    assert answer["error"]["code"] == "payload_too_large"


async def test_oversize_body_without_content_length_is_413(
    gateway: Gateway, session: ClientSession
):
    async def chunks():  # chunked transfer: no Content-Length to check up front
        for _ in range(40):
            yield b" " * 65536
        yield b"{}"

    headers = {**gateway.auth(), "Content-Type": "application/json"}
    async with session.post(f"{gateway.url}/v1/screenshot", data=chunks(), headers=headers) as r:
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "payload_too_large"


async def test_signed_query_parameters_are_validated_too(
    gateway: Gateway, session: ClientSession, pages: Pages
):
    from kubeshot.gateway.signing import UrlSigner, rfc3986
    from tests.gateway.conftest import SIGNING_SECRET

    signer = UrlSigner.from_secret(SIGNING_SECRET)
    for params, field in [
        ([("url", pages.base), ("viewport.width", "huge")], "viewport.width"),
        ([("url", pages.base), ("nonsense", "1")], "nonsense"),
        ([("url", pages.base), ("viewport.depth", "1")], "viewport.depth"),
        ([("url", pages.base), ("headers", "{not json")], "headers"),
        ([("url", pages.base), ("url", pages.base)], "url"),
    ]:
        query = "&".join(f"{rfc3986(k)}={rfc3986(v)}" for k, v in signer.sign(params, 60))
        async with session.get(f"{gateway.url}/v1/screenshot?{query}") as r:
            assert r.status == 400, field
            assert field in (await r.json())["error"]["message"]


# --- admission ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "policy", "words"),
    [
        ({"url": URL, "format": "jpeg"}, "strict", "format jpeg"),
        ({"url": URL, "viewport": {"width": 1024, "height": 600}}, "strict", "viewport width"),
        ({"url": URL, "timeoutSeconds": 30}, "strict", "timeoutSeconds"),
        ({"url": "http://www.blocked.example/"}, "strict", "blocked"),
        ({"url": URL, "customJavaScript": "1"}, "default", "customJavaScript"),
    ],
)
async def test_policy_violation_is_403_before_any_browser_work(
    gateway: Gateway, session: ClientSession, body: dict[str, Any], policy: str, words: str
):
    status, answer = await _post(gateway, session, body, CI_TOKEN, f"?policy={policy}")
    assert status == 403, answer
    assert answer["error"]["code"] == "blocked_by_policy"
    assert words in answer["error"]["message"]


async def test_a_token_may_use_only_its_policies(gateway: Gateway, session: ClientSession):
    status, answer = await _post(gateway, session, {"url": URL}, LIMITED_TOKEN, "?policy=default")
    assert status == 403
    assert answer["error"]["code"] == "blocked_by_policy"
    # Without ?policy the `default` policy applies, which `limited` may not use either.
    status, answer = await _post(gateway, session, {"url": URL}, LIMITED_TOKEN)
    assert status == 403


async def test_unknown_policy_is_403(gateway: Gateway, session: ClientSession):
    status, answer = await _post(gateway, session, {"url": URL}, None, "?policy=nope")
    assert status == 403
    assert answer["error"]["details"] == {"reason": "PolicyNotFound"}
    status, answer = await _post(gateway, session, {"url": URL}, None, "?policy=Bad_Name!")
    assert status == 400
