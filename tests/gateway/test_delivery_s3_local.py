"""`delivery.s3` on the local backend: refused with a 400, never accepted and ignored (its
credentials are read from a Secret, which only the kubernetes backend's operator can do)."""

from __future__ import annotations

import pytest
from aiohttp import ClientSession

from tests.gateway.conftest import Gateway

pytestmark = pytest.mark.gateway


async def test_the_local_backend_refuses_delivery_to_a_bucket(
    gateway: Gateway, session: ClientSession
) -> None:
    s3 = {"bucket": "their-shots", "credentialsSecretRef": {"name": "bucket-keys"}}
    body = {"html": "<p>hi</p>", "delivery": {"s3": s3}}
    async with session.post(f"{gateway.url}/v1/captures", json=body, headers=gateway.auth()) as r:
        assert r.status == 400, await r.text()
        error = (await r.json())["error"]
    assert error["code"] == "invalid_request"
    assert error["message"] == (
        "delivery.s3 needs the kubernetes backend: its credentials are read from a Secret"
    )
    # An invalid bucket is the model's refusal, as for any field.
    body["delivery"] = {"s3": {**s3, "bucket": "Not_A_Bucket"}}
    async with session.post(f"{gateway.url}/v1/captures", json=body, headers=gateway.auth()) as r:
        assert r.status == 400
        assert "bucket" in await r.text()
