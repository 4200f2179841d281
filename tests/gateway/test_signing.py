"""Signed URLs: every tampering, expiry and unknown key gets 403; rotation keeps old keys valid."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest
from aiohttp import ClientSession

from kubeshot.gateway.signing import UrlSigner, rfc3986
from tests.gateway.conftest import OLD_KEY_SECRET, SIGNING_SECRET, Gateway, Pages

SIGNER = UrlSigner.from_secret(SIGNING_SECRET)


def _url(gateway: Gateway, params: list[tuple[str, str]]) -> str:
    query = "&".join(f"{rfc3986(k)}={rfc3986(v)}" for k, v in params)
    return f"{gateway.url}/v1/screenshot?{query}"


def _signed(pages: Pages, **extra: str) -> list[tuple[str, str]]:
    params = [("url", pages.base + "/"), ("format", "png"), *extra.items()]
    return SIGNER.sign(params, 300)


async def test_signed_url_captures_without_a_token(
    gateway: Gateway, session: ClientSession, pages: Pages
):
    params = _signed(pages, **{"viewport.width": "640", "viewport.height": "480"})
    async with session.get(_url(gateway, params)) as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "image/png"
        assert r.headers["X-Kubeshot-Size"] == "640x480"
        assert (await r.read()).startswith(b"\x89PNG")


async def test_old_key_still_verifies_after_rotation(
    gateway: Gateway, session: ClientSession, pages: Pages
):
    old = UrlSigner.from_secret(OLD_KEY_SECRET)
    # Admission refuses jpeg under `strict`: a quick answer proving the signature was accepted.
    params = old.sign([("url", pages.base + "/"), ("format", "jpeg"), ("policy", "strict")], 60)
    async with session.get(_url(gateway, params)) as r:
        assert r.status == 403
        assert (await r.json())["error"]["code"] == "blocked_by_policy"


def _tamperings(pages: Pages) -> dict[str, list[tuple[str, str]]]:
    good = _signed(pages)
    sig = dict(good)["signature"]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    now = time.time()
    return {
        "parameter added": [*good, ("fullPage", "true")],
        "parameter removed": [p for p in good if p[0] != "format"],
        "parameter changed": [(k, "jpeg" if k == "format" else v) for k, v in good],
        "url changed": [(k, v + "x" if k == "url" else v) for k, v in good],
        "signature altered": [(k, flipped if k == "signature" else v) for k, v in good],
        "signature upper-cased": [(k, v.upper() if k == "signature" else v) for k, v in good],
        "signature missing": [p for p in good if p[0] != "signature"],
        "signature twice": [*good, ("signature", sig)],
        "expires changed": [(k, str(int(v) + 60) if k == "expires" else v) for k, v in good],
        "expires missing": [p for p in good if p[0] != "expires"],
        "key id missing": [p for p in good if p[0] != "keyId"],
        "wrong key id": [(k, "k1" if k == "keyId" else v) for k, v in good],
        "unknown key id": [(k, "k9" if k == "keyId" else v) for k, v in good],
        "expired": SIGNER.sign([("url", pages.base + "/")], 60, now=now - 3600),
        "expires too far ahead": UrlSigner(SIGNER.keys, max_ttl=10 * 365 * 86400).sign(
            [("url", pages.base + "/")], 365 * 86400
        ),
        "signed by another secret": UrlSigner.from_secret("k2:" + "z" * 32).sign(
            [("url", pages.base + "/")], 60
        ),
        "nothing": [("url", pages.base + "/")],
    }


@pytest.mark.parametrize(
    "case",
    [
        "parameter added",
        "parameter removed",
        "parameter changed",
        "url changed",
        "signature altered",
        "signature upper-cased",
        "signature missing",
        "signature twice",
        "expires changed",
        "expires missing",
        "key id missing",
        "wrong key id",
        "unknown key id",
        "expired",
        "expires too far ahead",
        "signed by another secret",
        "nothing",
    ],
)
async def test_every_tampering_is_403(
    gateway: Gateway, session: ClientSession, pages: Pages, case: str
):
    params = _tamperings(pages)[case]
    async with session.get(_url(gateway, params)) as r:
        assert r.status == 403, case
        body = await r.json()
        assert body["error"]["code"] == "forbidden"


async def test_the_canonical_form_ignores_encoding_and_order(
    gateway: Gateway, session: ClientSession, pages: Pages
):
    params = SIGNER.sign([("url", pages.base + "/"), ("format", "jpeg"), ("policy", "strict")], 60)
    # Same parameters, different order and a different (equivalent) percent-encoding.
    query = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in reversed(params))
    async with session.get(f"{gateway.url}/v1/screenshot?{query}") as r:
        assert r.status == 403
        assert (await r.json())["error"]["code"] == "blocked_by_policy"  # signature accepted


async def test_a_bearer_token_does_not_replace_a_signature(
    gateway: Gateway, session: ClientSession, pages: Pages
):
    async with session.get(_url(gateway, [("url", pages.base + "/")]), headers=gateway.auth()) as r:
        assert r.status == 403
