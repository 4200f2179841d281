"""Capture pods' uploads straight to the S3 store, the pure parts: the store's one configuration
(the gateway's and the operator's), the POST policy the operator signs per attempt, the capture
pod's form, the NetworkPolicy's way to the bucket, and the gateway's check of what pods put there
(CheckedStore, over a FileStore: the check is the same whatever holds the bytes)."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import io
import json
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from kubeshot.api import (
    CaptureError,
    CaptureOptions,
    CaptureReport,
    ScreenshotPolicySpec,
    UploadTarget,
)
from kubeshot.gateway import Settings
from kubeshot.gateway.cluster import CheckedStore
from kubeshot.operator import JobRef, OperatorSettings, PolicyRef, build_network_policy
from kubeshot.operator.credentials import UPLOAD_START_SECONDS, upload_target
from kubeshot.store.files import FileStore
from kubeshot.store.settings import StoreSettings
from kubeshot_capture.pod import multipart_form, upload
from tests.support import Handler, serving

ENDPOINT_PEERS = [
    {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "storage"}},
        "podSelector": {"matchLabels": {"app": "minio"}},
    }
]
S3_ENV = {
    "KUBESHOT_STORE": "s3",
    "KUBESHOT_S3_ENDPOINT": "http://minio.storage.svc:9000",
    "KUBESHOT_S3_BUCKET": "shots",
    "KUBESHOT_S3_PREFIX": "results",
    "KUBESHOT_S3_REGION": "eu-west-1",
    "KUBESHOT_MAX_UPLOAD_BYTES": "2048",
    "KUBESHOT_S3_NETWORK_PEERS": json.dumps(ENDPOINT_PEERS),
}
JOB = JobRef(name="shot", namespace="team-a", uid="0123abcd-0000-4000-8000-00000000beef")


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "id").write_text("AKIDEXAMPLE\n")
    (tmp_path / "secret").write_text("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY\n")
    env = {
        **S3_ENV,
        "KUBESHOT_S3_ACCESS_KEY_ID_FILE": str(tmp_path / "id"),
        "KUBESHOT_S3_SECRET_ACCESS_KEY_FILE": str(tmp_path / "secret"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_the_gateway_and_the_operator_read_one_store_configuration(
    s3_env: dict[str, str],
) -> None:
    gateway, operator = Settings(no_auth=True), OperatorSettings()
    assert isinstance(gateway, StoreSettings)
    fields = set(StoreSettings.model_fields)
    assert gateway.model_dump(include=fields) == operator.store.model_dump(include=fields)
    assert operator.store.s3_bucket == "shots"
    assert operator.store.max_upload_bytes == gateway.max_upload_bytes == 2048
    assert operator.store.s3_network_peers == ENDPOINT_PEERS
    assert operator.store.s3_port == 9000


def test_the_store_configuration_is_refused_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBESHOT_STORE", "s3")
    with pytest.raises(ValidationError, match="KUBESHOT_STORE=s3 needs KUBESHOT_S3_BUCKET"):
        Settings(no_auth=True)
    with pytest.raises(ValidationError, match="KUBESHOT_STORE=s3 needs KUBESHOT_S3_BUCKET"):
        OperatorSettings()
    monkeypatch.setenv("KUBESHOT_S3_BUCKET", "shots")
    monkeypatch.setenv("KUBESHOT_S3_ACCESS_KEY_ID_FILE", "/x")
    with pytest.raises(ValidationError, match="set both KUBESHOT_S3_ACCESS_KEY_ID_FILE"):
        StoreSettings()


def test_the_operator_needs_the_pods_way_to_the_bucket() -> None:
    by_name = {"store": "s3", "s3_bucket": "b", "s3_endpoint": "http://minio.storage:9000"}
    with pytest.raises(ValidationError, match="needs KUBESHOT_S3_NETWORK_PEERS"):
        OperatorSettings(store=StoreSettings(**by_name))  # type: ignore[arg-type]
    Settings(no_auth=True, **by_name)  # the gateway does not: its pods upload nowhere
    by_address = StoreSettings(store="s3", s3_bucket="b", s3_endpoint="https://[fd00::5]")
    assert by_address.upload_peers() == [{"ipBlock": {"cidr": "fd00::5/128"}}]
    assert by_address.s3_port == 443
    with pytest.raises(ValidationError, match="ipBlock, namespaceSelector"):
        StoreSettings(s3_network_peers=[{"ports": [{"port": 1}]}])
    # As JSON text from a keyword too (how the chart's tests pass the rendered environment).
    as_text = StoreSettings(s3_network_peers=json.dumps(ENDPOINT_PEERS))  # type: ignore[arg-type]
    assert as_text.s3_network_peers == ENDPOINT_PEERS


def s3_settings(**store: Any) -> OperatorSettings:
    values: dict[str, Any] = {
        "store": "s3",
        "s3_endpoint": "http://10.0.0.7:9000",
        "s3_bucket": "shots",
        "s3_prefix": "results/",
        "max_upload_bytes": 4096,
    }
    return OperatorSettings(store=StoreSettings(**(values | store)))


def test_with_s3_capture_pods_reach_the_bucket_alone_not_the_gateway() -> None:
    policy = PolicyRef(name="default", namespace="team-a", uid="3333")
    spec = ScreenshotPolicySpec()
    filesystem = build_network_policy(policy, spec, OperatorSettings())["spec"]["egress"]
    s3 = build_network_policy(policy, spec, s3_settings(s3_network_peers=ENDPOINT_PEERS))
    egress = s3["spec"]["egress"]
    assert egress[1] == {"to": ENDPOINT_PEERS, "ports": [{"protocol": "TCP", "port": 9000}]}
    assert filesystem[1]["ports"] == [{"protocol": "TCP", "port": 8081}]
    # Everything else is the same rule for rule: only the upload's way changed.
    assert [r for i, r in enumerate(egress) if i != 1] == [
        r for i, r in enumerate(filesystem) if i != 1
    ]
    by_address = build_network_policy(policy, spec, s3_settings())["spec"]["egress"][1]
    assert by_address["to"] == [{"ipBlock": {"cidr": "10.0.0.7/32"}}]


def _policy_document(fields: dict[str, str]) -> dict[str, Any]:
    return dict(json.loads(base64.b64decode(fields["policy"])))


async def test_the_operator_signs_one_object_a_bounded_size_for_one_attempt(
    tmp_path: Path,
) -> None:
    (tmp_path / "id").write_text("AKIDEXAMPLE")
    (tmp_path / "secret").write_text("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    settings = s3_settings(
        s3_access_key_id_file=tmp_path / "id", s3_secret_access_key_file=tmp_path / "secret"
    )
    options = CaptureOptions(html="<p>x</p>", timeout_seconds=20)
    small = ScreenshotPolicySpec.model_validate({"limits": {"maxResultBytes": 3000}})
    before = time.time()
    target = await upload_target(settings, JOB, options, ScreenshotPolicySpec(), "t" * 43)
    assert target.token is None and target.fields is not None
    assert target.url == "http://10.0.0.7:9000/shots"
    # The job's store id, as the gateway reads it (kubeshot.kube.names.store_id).
    assert target.fields["key"] == "results/0123abcd00004000800000000000beef"
    document = _policy_document(target.fields)
    assert ["content-length-range", 1, 4096] in document["conditions"]
    assert {"key": target.fields["key"]} in document["conditions"]
    expires = datetime.fromisoformat(document["expiration"]).timestamp()
    deadline = 20 + settings.pod_deadline_grace_seconds + UPLOAD_START_SECONDS
    assert before + deadline - 5 <= expires <= time.time() + deadline + 5
    assert "wJalrXUtnFEMI" not in json.dumps(target.to_wire())
    # The policy's own limit, when smaller, bounds the body too.
    target = await upload_target(settings, JOB, options, small, "t" * 43)
    assert target.fields is not None
    assert ["content-length-range", 1, 3000] in _policy_document(target.fields)["conditions"]
    # The filesystem store: the gateway's endpoint and the job's token, as before.
    plain = await upload_target(OperatorSettings(), JOB, options, small, "t" * 43)
    assert plain == UploadTarget(
        url="http://kubeshot-gateway.kubeshot.svc:8081/v1/internal/uploads/team-a/shot",
        token="t" * 43,
    )


def test_an_upload_target_is_a_token_or_a_form() -> None:
    for neither_or_both in ({}, {"token": "t" * 16, "fields": {"key": "k"}}):
        with pytest.raises(ValidationError, match="a token or form fields"):
            UploadTarget(url="http://x", **neither_or_both)  # type: ignore[arg-type]


def test_the_pods_form_holds_the_fields_first_and_the_file_last() -> None:
    fields = {"key": "results/abc", "policy": "eyJ4Ijo=", "x-amz-signature": "00ff"}
    data = b"\x89PNG\r\n--not-a-boundary\r\n" + bytes(range(256))
    body, content_type = multipart_form(fields, data)
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    parts = list(message.iter_parts())
    names = [p.get_param("name", header="content-disposition") for p in parts]
    assert names == [*fields, "file"]
    assert [p.get_payload(decode=True).decode() for p in parts[:-1]] == list(fields.values())
    assert parts[-1].get_payload(decode=True) == data


def test_a_pods_upload_never_follows_a_redirect() -> None:
    """A bucket endpoint (delivery.s3: the caller's choice) that answers 302 elsewhere gets a
    refusal with its status; the address it names is never asked."""
    asked: list[str] = []

    class Elsewhere(Handler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.reply(200, b"metadata")

    with serving(Elsewhere) as elsewhere:

        class Bucket(Handler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.reply(302, headers={"Location": elsewhere.url("/latest/meta-data/")})

        with serving(Bucket) as bucket:
            target = UploadTarget(url=bucket.url("/b"), fields={"key": "k"})
            report = CaptureReport(content_type="image/png", bytes=3, sha256="0" * 64)
            with pytest.raises(CaptureError) as caught:
                upload(target, b"png", report)
    assert caught.value.message == "upload refused: HTTP 302"
    assert asked == []


def png() -> bytes:
    image = io.BytesIO()
    Image.new("RGB", (4, 4), "blue").save(image, format="PNG")
    return image.getvalue()


async def test_what_pods_put_in_the_store_is_served_only_once_checked(tmp_path: Path) -> None:
    inner = FileStore(tmp_path, ttl_seconds=60)
    await inner.open()
    jobs = {
        job_id: {"metadata": {"uid": job_id}, "spec": {"format": "png"}}
        for job_id in (uuid.uuid4().hex, uuid.uuid4().hex)
    }
    good, bad = jobs
    store = CheckedStore(inner, jobs.get)
    artifact, text = png(), b"<html>not a png</html>"
    await inner.put(good, artifact, hashlib.sha256(artifact).hexdigest())
    await inner.put(bad, text, hashlib.sha256(text).hexdigest())

    assert await store.get(good, hashlib.sha256(artifact).hexdigest()) == artifact
    with pytest.raises(CaptureError, match="refused and deleted: it is not a png file"):
        await store.get(bad, hashlib.sha256(text).hexdigest())
    assert await inner.get(bad, hashlib.sha256(text).hexdigest()) is None  # deleted

    # Checked once; a later change of the bytes fails the sha256 of every read, and goes.
    (tmp_path / f"{good}.bin").write_bytes(png()[:-1] + b"!")
    with pytest.raises(CaptureError, match="does not match the sha256"):
        await store.get(good, hashlib.sha256(artifact).hexdigest())
    assert not (tmp_path / f"{good}.bin").exists()

    unknown = uuid.uuid4().hex
    await inner.put(unknown, artifact, hashlib.sha256(artifact).hexdigest())
    with pytest.raises(CaptureError, match="job is unknown"):
        await store.get(unknown, hashlib.sha256(artifact).hexdigest())
    await inner.close()
