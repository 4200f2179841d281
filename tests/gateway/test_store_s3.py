"""The S3 result store against a real S3-compatible server (versitygw, `s3_server`): captures
stored in the bucket and downloaded through the gateway or a presigned GET, sha256 checked on
both sides, expiry by the sweeper, presigned uploads limited to one key and a size, and the
credentials kept out of logs and error bodies."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import ClientSession
from botocore.exceptions import ClientError

from kubeshot.api import CaptureError, CaptureReport, FailureReason, Format, UploadTarget
from kubeshot.gateway import Settings, keys
from kubeshot.gateway.store import result_store
from kubeshot.store.files import FileStore
from kubeshot.store.s3 import S3Store, StoreUnavailable, UploadSigner
from kubeshot_capture.pod import TOO_LARGE, multipart_form
from kubeshot_capture.pod import upload as pod_upload
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY, S3Server
from tests.gateway.conftest import Gateway, Pages, base_settings, start_gateway

PREFIX = "results"


def s3_settings(s3: S3Server, policy_file: Path, tokens_file: Path, **more: object) -> Settings:
    values: dict[str, object] = {
        "store": "s3",
        "s3_endpoint": s3.endpoint,
        "s3_bucket": s3.bucket,
        "s3_prefix": PREFIX,
        "s3_access_key_id_file": s3.access_key_file,
        "s3_secret_access_key_file": s3.secret_key_file,
        "workers": 1,
    }
    return base_settings(policy_file, tokens_file, **(values | more))


@pytest_asyncio.fixture(scope="module")
async def s3_gateway(
    chromium: str,
    s3_server: S3Server,
    policy_file: Path,
    tokens_file: Path,
    session: ClientSession,
) -> AsyncIterator[Gateway]:
    gw = await start_gateway(s3_settings(s3_server, policy_file, tokens_file))
    await gw.wait_ready(session)
    yield gw
    await gw.stop()


@pytest.fixture
def store(s3_gateway: Gateway) -> Iterator[S3Store]:
    """The gateway's S3 store; a test may replace its config, which is restored after."""
    found = s3_gateway.app[keys.STORE]
    assert isinstance(found, S3Store)
    config = found.config
    yield found
    found.config = config


def objects(s3: S3Server) -> set[str]:
    """The keys in the bucket, as the posix backend keeps them (files under the bucket)."""
    root = s3.data / s3.bucket
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


async def capture(gateway: Gateway, session: ClientSession, pages: Pages) -> dict[str, object]:
    body = {"url": pages.base + "/"}
    async with session.post(f"{gateway.url}/v1/captures", json=body, headers=gateway.auth()) as r:
        assert r.status == 202, await r.text()
        job_id = (await r.json())["id"]
    job = await gateway.finished(session, job_id)
    assert job["phase"] == "Succeeded", job
    return job


async def test_a_capture_is_stored_in_the_bucket_and_downloaded_both_ways(
    s3_gateway: Gateway, store: S3Store, s3_server: S3Server, session: ClientSession, pages: Pages
) -> None:
    job = await capture(s3_gateway, session, pages)
    result = job["result"]
    assert isinstance(result, dict)
    assert f"{PREFIX}/{job['id']}" in objects(s3_server)
    url = s3_gateway.url + result["url"]

    # Through the gateway (the default): the bytes of the report.
    async with session.get(url, headers=s3_gateway.auth()) as r:
        assert r.status == 200
        assert r.content_type == "image/png"
        data = await r.read()
    assert hashlib.sha256(data).hexdigest() == result["sha256"] == r.headers["X-Kubeshot-Sha256"]

    # Presigned: a redirect to the bucket, which the caller follows without its token.
    store.config = dataclasses.replace(store.config, presigned_downloads=True)
    async with session.get(url, headers=s3_gateway.auth(), allow_redirects=False) as r:
        assert r.status == 307
        assert r.headers["X-Kubeshot-Sha256"] == result["sha256"]
        location = r.headers["Location"]
    assert location.startswith(f"{s3_server.endpoint}/{s3_server.bucket}/{PREFIX}/{job['id']}?")
    assert S3_SECRET_KEY not in location
    async with session.get(location) as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "image/png"
        assert await r.read() == data
    # Only the owner is redirected.
    async with session.get(url, headers=s3_gateway.auth("nobody"), allow_redirects=False) as r:
        assert r.status == 401


async def test_an_artifact_that_does_not_match_its_sha256_is_refused_and_never_served(
    s3_gateway: Gateway, store: S3Store, s3_server: S3Server, session: ClientSession, pages: Pages
) -> None:
    data, job_id = b"\x89PNG\r\n\x1a\nnot really", uuid.uuid4().hex
    with pytest.raises(CaptureError, match="does not match the sha256"):
        await store.put(job_id, data, hashlib.sha256(b"other").hexdigest())
    assert f"{PREFIX}/{job_id}" not in objects(s3_server)
    # The server checks it too (x-amz-checksum-sha256): a body changed on the way is refused.
    with pytest.raises(ClientError, match="BadDigest"):
        await store.client.put_object(
            Bucket=s3_server.bucket,
            Key=store.key(job_id),
            Body=data + b"!",
            ChecksumSHA256="47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",  # sha256 of b""
        )
    assert f"{PREFIX}/{job_id}" not in objects(s3_server)

    # An object changed in the bucket after the put is never served.
    job = await capture(s3_gateway, session, pages)
    result = job["result"]
    assert isinstance(result, dict)
    key = store.key(str(job["id"]))
    await store.client.put_object(Bucket=s3_server.bucket, Key=key, Body=b"tampered")
    async with session.get(s3_gateway.url + result["url"], headers=s3_gateway.auth()) as r:
        assert r.status == 500
        assert b"tampered" not in await r.read()


async def test_the_sweeper_deletes_expired_artifacts_under_its_prefix_only(
    s3_gateway: Gateway, store: S3Store, s3_server: S3Server, session: ClientSession, pages: Pages
) -> None:
    job = await capture(s3_gateway, session, pages)
    result = job["result"]
    assert isinstance(result, dict)
    strangers = {"elsewhere/" + uuid.uuid4().hex, f"{PREFIX}/notes.txt"}
    for key in strangers:
        await store.client.put_object(Bucket=s3_server.bucket, Key=key, Body=b"not ours")
    assert await store.expire() == 0  # nothing is older than the TTL yet
    removed = await store.expire(now=time.time() + store.ttl_seconds + 1)
    assert removed >= 1
    left = objects(s3_server)
    assert strangers <= left
    assert not [k for k in left if k.startswith(f"{PREFIX}/") and k not in strangers]
    for presigned in (False, True):  # the gateway's 404 either way, not the bucket's
        store.config = dataclasses.replace(store.config, presigned_downloads=presigned)
        async with session.get(s3_gateway.url + result["url"], headers=s3_gateway.auth()) as r:
            assert r.status == 404
            assert (await r.json())["error"]["message"] == "the artifact has expired"


async def test_a_presigned_upload_takes_one_key_and_a_bounded_size(
    store: S3Store, s3_server: S3Server, session: ClientSession
) -> None:
    job_id, other = uuid.uuid4().hex, uuid.uuid4().hex
    upload = UploadSigner(store.config).presigned_upload(job_id, max_bytes=1000, expires_in=60)
    assert S3_SECRET_KEY not in str(upload)

    async def post(key: str, data: bytes) -> tuple[int, str]:
        body, content_type = multipart_form({**upload.fields, "key": key}, data)
        headers = {"Content-Type": content_type}
        async with session.post(upload.url, data=body, headers=headers) as r:
            return r.status, await r.text()

    status, text = await post(store.key(job_id), b"x" * 1001)
    assert (status, "EntityTooLarge") == (400, text.partition("<Code>")[2][:14]), text
    status, text = await post(store.key(other), b"x" * 10)
    assert status == 403, text
    assert f"{PREFIX}/{job_id}" not in objects(s3_server)
    assert f"{PREFIX}/{other}" not in objects(s3_server)

    data = b"y" * 1000
    status, text = await post(store.key(job_id), data)
    assert status in {200, 201, 204}, text
    assert await store.get(job_id, hashlib.sha256(data).hexdigest()) == data


async def test_a_capture_pod_posts_its_artifact_with_the_signed_form(
    store: S3Store, s3_server: S3Server
) -> None:
    """The capture pod's own upload (kubeshot_capture.pod.upload), against the real server."""
    job_id = uuid.uuid4().hex
    post = UploadSigner(store.config).presigned_upload(job_id, max_bytes=2000, expires_in=60)
    target = UploadTarget(url=post.url, fields=post.fields)

    def report(data: bytes) -> CaptureReport:
        return CaptureReport(
            format=Format.PNG, content_type="image/png", bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )  # fmt: skip

    too_large = b"z" * 2001
    with pytest.raises(CaptureError) as refused:
        await asyncio.to_thread(pod_upload, target, too_large, report(too_large))
    assert (refused.value.reason, refused.value.message) == (FailureReason.INTERNAL, TOO_LARGE)
    forged = target.model_copy(update={"fields": {**post.fields, "key": f"{PREFIX}/other"}})
    with pytest.raises(CaptureError) as refused:
        await asyncio.to_thread(pod_upload, forged, b"z", report(b"z"))
    assert refused.value.message.startswith("upload refused: HTTP 403"), refused.value.message
    assert post.fields["x-amz-signature"] not in refused.value.message
    assert f"{PREFIX}/{job_id}" not in objects(s3_server)

    data = b"z" * 2000
    assert await asyncio.to_thread(pod_upload, target, data, report(data)) is None
    assert await store.get(job_id, hashlib.sha256(data).hexdigest()) == data


async def test_credentials_stay_out_of_logs_and_error_bodies(
    s3_gateway: Gateway,
    store: S3Store,
    s3_server: S3Server,
    session: ClientSession,
    pages: Pages,
    policy_file: Path,
    tokens_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # botocore logs its signed requests at DEBUG
    job = await capture(s3_gateway, session, pages)
    result = job["result"]
    assert isinstance(result, dict)
    url = s3_gateway.url + result["url"]
    async with session.get(url, headers=s3_gateway.auth()) as r:
        assert r.status == 200

    # The bucket refuses (here: gone): the caller learns nothing of it.
    store.config = dataclasses.replace(store.config, bucket="no-such-bucket")
    async with session.get(url, headers=s3_gateway.auth()) as r:
        assert r.status == 500
        body = await r.text()
    assert body.count("the result store is unavailable") == 1
    with pytest.raises(StoreUnavailable):
        await store.get(str(job["id"]), str(result["sha256"]))
    assert "no-such-bucket" not in body and S3_ACCESS_KEY not in body

    # Wrong credentials: the store does not open, and says why without them.
    (tmp_path / "secret").write_text("a-wrong-secret-0123456789")
    wrong = result_store(
        s3_settings(
            s3_server, policy_file, tokens_file, s3_secret_access_key_file=tmp_path / "secret"
        )
    )
    with pytest.raises(RuntimeError, match="is not usable") as refused:
        await wrong.open()
    assert "a-wrong-secret" not in str(refused.value)
    assert isinstance(wrong, S3Store)
    await wrong.close()

    logged = caplog.text
    assert "Authorization" in logged  # botocore's request logs were on
    for secret in (S3_ACCESS_KEY, S3_SECRET_KEY, "a-wrong-secret-0123456789"):
        assert secret not in logged


async def test_settings_choose_the_store() -> None:
    assert isinstance(result_store(Settings(auth_token="t" * 32)), FileStore)
    with pytest.raises(ValueError, match="needs KUBESHOT_S3_BUCKET"):
        Settings(auth_token="t" * 32, store="s3")
    with pytest.raises(ValueError, match="needs KUBESHOT_STORE=s3"):
        Settings(auth_token="t" * 32, store_download="presigned")
    s3 = result_store(Settings(store="s3", s3_bucket="b", store_download="presigned"))
    assert isinstance(s3, S3Store) and s3.config.presigned_downloads


async def test_a_store_whose_server_is_unreachable_does_not_open() -> None:
    unreachable = result_store(
        Settings(store="s3", s3_bucket="b", s3_endpoint="http://127.0.0.1:9")
    )
    with pytest.raises(RuntimeError, match="not open"):
        await unreachable.get(uuid.uuid4().hex, "0" * 64)
    with pytest.raises(RuntimeError, match="bucket 'b' is not usable"):
        await unreachable.open()
