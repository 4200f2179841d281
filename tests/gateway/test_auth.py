"""Authentication: bearer tokens only, in the Authorization header, compared by hash."""

from __future__ import annotations

import pytest
from aiohttp import ClientSession

from tests.gateway.conftest import CI_TOKEN, TOKEN, Gateway

MISSING_JOB = "/v1/captures/" + "0" * 32


async def _error(response: object) -> dict[str, object]:
    body = await response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    return body["error"]  # type: ignore[no-any-return]


async def test_missing_token_is_401_with_challenge(gateway: Gateway, session: ClientSession):
    async with session.post(f"{gateway.url}/v1/screenshot", json={"url": "http://x.test/"}) as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"].startswith('Bearer realm="kubeshot"')
        assert (await _error(r))["code"] == "unauthorized"


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        f"Basic {TOKEN}",
        f"Token {TOKEN}",
        f"Bearer {TOKEN} extra",
        f"{TOKEN}",
        "Bearer " + "a" * 600,
    ],
)
async def test_malformed_authorization_is_401(
    gateway: Gateway, session: ClientSession, header: str
):
    async with session.get(gateway.url + MISSING_JOB, headers={"Authorization": header}) as r:
        assert r.status == 401
        assert "WWW-Authenticate" in r.headers
        await _error(r)


@pytest.mark.parametrize(
    "token", [TOKEN + "x", TOKEN[:-1], TOKEN.upper(), "x" * len(TOKEN), CI_TOKEN[::-1]]
)
async def test_wrong_token_is_401(gateway: Gateway, session: ClientSession, token: str):
    async with session.get(gateway.url + MISSING_JOB, headers=gateway.auth(token)) as r:
        assert r.status == 401
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        (f"?token={TOKEN}", {}),
        (f"?access_token={TOKEN}", {}),
        (f"?api_key={TOKEN}", {}),
        ("", {"X-Api-Key": TOKEN}),
        ("", {"X-Auth-Token": TOKEN}),
        ("", {"Cookie": f"token={TOKEN}"}),
    ],
)
async def test_token_in_the_wrong_place_is_refused(
    gateway: Gateway, session: ClientSession, query: str, headers: dict[str, str]
):
    async with session.get(gateway.url + MISSING_JOB + query, headers=headers) as r:
        assert r.status == 401
        error = await _error(r)
        assert TOKEN not in str(error)


@pytest.mark.parametrize("token", [TOKEN, CI_TOKEN])
async def test_valid_tokens_pass(gateway: Gateway, session: ClientSession, token: str):
    # AUTH_TOKEN and a tokens-file token: authenticated, then 404 for a job that does not exist.
    async with session.get(gateway.url + MISSING_JOB, headers=gateway.auth(token)) as r:
        assert r.status == 404
        assert (await _error(r))["code"] == "not_found"


async def test_public_endpoints_need_no_token(gateway: Gateway, session: ClientSession):
    for path in ("/healthz", "/readyz", "/v1/openapi.json"):
        async with session.get(gateway.url + path) as r:
            assert r.status == 200, path


async def test_unknown_routes_do_not_reveal_themselves_without_a_token(
    gateway: Gateway, session: ClientSession
):
    async with session.get(f"{gateway.url}/v1/admin") as r:
        assert r.status == 401
    async with session.get(f"{gateway.url}/v1/admin", headers=gateway.auth()) as r:
        assert r.status == 404
        assert (await _error(r))["code"] == "not_found"
