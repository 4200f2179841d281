"""Asynchronous captures and the result store: 202, status, download, owner-only, sha256, TTL."""

from __future__ import annotations

import hashlib
import time

from aiohttp import ClientSession

from kubeshot.gateway import keys
from tests.gateway.conftest import CI_TOKEN, Gateway, Pages


async def test_async_capture_round_trip(gateway: Gateway, session: ClientSession, pages: Pages):
    async with session.post(
        f"{gateway.url}/v1/captures", json={"url": pages.base + "/"}, headers=gateway.auth()
    ) as r:
        assert r.status == 202
        accepted = await r.json()
        assert r.headers["Location"] == f"/v1/captures/{accepted['id']}"
    assert accepted["phase"] in {"Queued", "Running"}
    assert accepted["policy"] == "default"
    job = await gateway.finished(session, accepted["id"])
    assert job["phase"] == "Succeeded", job
    result = job["result"]
    assert result["contentType"] == "image/png"
    assert result["url"] == f"/v1/captures/{job['id']}/artifact"
    async with session.get(gateway.url + result["url"], headers=gateway.auth()) as r:
        assert r.status == 200
        data = await r.read()
    assert hashlib.sha256(data).hexdigest() == result["sha256"] == r.headers["X-Kubeshot-Sha256"]
    assert len(data) == result["bytes"]
    # Written atomically: no temporary files left in the store.
    store = gateway.app[keys.STORE]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".tmp-")]

    # Only the owner sees the job.
    for path in (f"/v1/captures/{job['id']}", result["url"]):
        async with session.get(gateway.url + path, headers=gateway.auth(CI_TOKEN)) as r:
            assert r.status == 404

    # A stored artifact that no longer matches its sha256 is never served.
    artifact = store.root / f"{job['id']}.bin"
    original = artifact.read_bytes()
    artifact.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    async with session.get(gateway.url + result["url"], headers=gateway.auth()) as r:
        assert r.status == 500
        assert (await r.read()) != original
    artifact.write_bytes(original)

    # Expired by TTL: job and artifact are gone.
    await gateway.app[keys.JOBS].expire(now=time.time() + gateway.settings.result_ttl_seconds + 1)
    assert not artifact.exists()
    async with session.get(f"{gateway.url}/v1/captures/{job['id']}", headers=gateway.auth()) as r:
        assert r.status == 404


async def test_failed_async_capture_reports_its_reason(gateway: Gateway, session: ClientSession):
    async with session.post(
        f"{gateway.url}/v1/captures?policy=strict",
        json={"url": "http://10.255.255.1/", "viewport": {"width": 800, "height": 600}},
        headers=gateway.auth(),
    ) as r:
        assert r.status == 202, await r.text()
        job_id = (await r.json())["id"]
    job = await gateway.finished(session, job_id)
    assert job["phase"] == "Failed"
    assert job["failure"]["reason"] == "BlockedByPolicy"
    async with session.get(
        f"{gateway.url}/v1/captures/{job_id}/artifact", headers=gateway.auth()
    ) as r:
        assert r.status == 409
        assert (await r.json())["error"]["details"]["reason"] == "BlockedByPolicy"


async def test_async_captures_are_admitted_up_front(gateway: Gateway, session: ClientSession):
    async with session.post(
        f"{gateway.url}/v1/captures?policy=strict",
        json={"url": "http://127.0.0.1:9/", "format": "jpeg"},
        headers=gateway.auth(),
    ) as r:
        assert r.status == 403
    async with session.post(
        f"{gateway.url}/v1/captures", json={"url": "ftp://x/"}, headers=gateway.auth()
    ) as r:
        assert r.status == 400
