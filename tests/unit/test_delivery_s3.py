"""`delivery.s3`, the pure parts: the model a CaptureJob and an HTTP request share (bucket, prefix,
endpoint), and the operator's decision to sign a form for the caller's bucket (the opted-in
Secret, the policy's verdict on the endpoint, the one key, the bound)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from pydantic import ValidationError

from kubeshot.api import (
    CaptureError,
    CaptureJobSpec,
    CaptureOptions,
    FailureReason,
    ScreenshotPolicySpec,
    UploadTarget,
)
from kubeshot.api.delivery import S3_CREDENTIALS_LABEL, CaptureRequestBody, S3Delivery
from kubeshot.operator import JobRef
from kubeshot.operator.credentials import delivered_object, delivery_form

JOB = JobRef(name="shot", namespace="team-a", uid="0123abcd-0000-4000-8000-00000000beef")
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
REF = {"name": "bucket-keys"}


def delivery(**fields: Any) -> S3Delivery:
    return S3Delivery.model_validate(
        {"bucket": "their-shots", "credentialsSecretRef": REF, **fields}
    )


def secret(labelled: bool = True, **data: str) -> dict[str, Any]:
    values = data or {"accessKeyId": "AKIDEXAMPLE", "secretAccessKey": SECRET_KEY}
    labels = {S3_CREDENTIALS_LABEL: "true"} if labelled else {"app": "x"}
    return {
        "metadata": {"name": "bucket-keys", "labels": labels},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }


def test_one_model_for_a_capture_job_and_an_http_request() -> None:
    spec = CaptureJobSpec.model_validate(
        {
            "policyRef": "default",
            "url": "https://example.com/",
            "delivery": {"s3": {"bucket": "their-shots", "credentialsSecretRef": REF}},
        }
    )
    assert spec.delivery is not None and spec.delivery.s3 == delivery()
    body = CaptureRequestBody.model_validate(
        {"url": "https://example.com/", "delivery": {"s3": spec.delivery.s3.to_wire()}}
    )
    assert body.delivery is not None and body.delivery.s3 == delivery()
    assert delivery().to_wire() == {
        "bucket": "their-shots",
        "region": "us-east-1",
        "prefix": "",
        "credentialsSecretRef": {
            "name": "bucket-keys",
            "accessKeyIdKey": "accessKeyId",
            "secretAccessKeyKey": "secretAccessKey",
        },
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"bucket": "Their_Shots"},
        {"bucket": "ab"},
        {"bucket": "-shots"},
        {"prefix": "../etc"},
        {"prefix": "a/../b"},
        {"prefix": "a/./b"},
        {"prefix": ".."},
        {"prefix": "/absolute"},
        {"prefix": "a//b"},
        {"prefix": "trailing/"},
        {"prefix": "spa ce"},
        {"prefix": "back\\slash"},
        {"endpoint": "ftp://s3.example.com"},
        {"endpoint": "https://s3.example.com/other-bucket"},
        {"endpoint": "https://user:pass@s3.example.com"},
        {"endpoint": "https://s3.example.com/?x=1"},
        {"region": "EU WEST"},
        {"credentialsSecretRef": {"name": "Not_A_Name"}},
    ],
)
def test_what_could_leave_the_bucket_or_the_key_is_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        delivery(**fields)


def test_the_job_has_one_key_under_its_prefix() -> None:
    png = CaptureOptions(url="https://example.com/")
    pdf = CaptureOptions(url="https://example.com/", format="pdf")
    job_id = "0123abcd00004000800000000000beef"
    assert delivered_object(JOB, delivery(), png).key == f"{job_id}.png"
    nested = delivery(prefix="shots/2026-11_30")
    assert delivered_object(JOB, nested, pdf).key == f"shots/2026-11_30/{job_id}.pdf"
    assert delivered_object(JOB, nested, pdf).bucket == "their-shots"


def form(delivery: S3Delivery, secret: dict[str, Any] | None, **policy: Any) -> UploadTarget:
    spec = ScreenshotPolicySpec.model_validate(policy)
    return delivery_form(delivery, secret, spec, "shots/x.png", 2048, 600)


def _document(target: UploadTarget) -> dict[str, Any]:
    assert target.fields is not None and target.token is None
    return dict(json.loads(base64.b64decode(target.fields["policy"])))


def test_only_an_opted_in_secret_with_both_keys_is_used() -> None:
    target = form(delivery(), secret())
    assert target.url == "https://their-shots.s3.amazonaws.com/"
    assert target.fields is not None and target.fields["key"] == "shots/x.png"
    assert target.fields["x-amz-credential"].startswith("AKIDEXAMPLE/")
    for refused in (None, secret(labelled=False), secret(accessKeyId="AKIDEXAMPLE")):
        with pytest.raises(CaptureError) as caught:
            form(delivery(), refused)
        assert caught.value.reason is FailureReason.INVALID_SPEC
        assert "'bucket-keys'" in caught.value.message
        assert S3_CREDENTIALS_LABEL in caught.value.message
        assert SECRET_KEY not in caught.value.message and "AKIDEXAMPLE" not in caught.value.message
    # Values the Secret's writer made undecodable: refused alike, not an Internal crash.
    for junk in ("not base64!", base64.b64encode(b"\xff\xfe").decode()):
        garbled = secret()
        garbled["data"]["secretAccessKey"] = junk
        with pytest.raises(CaptureError) as caught:
            form(delivery(), garbled)
        assert caught.value.reason is FailureReason.INVALID_SPEC
    # Other keys of the Secret, when the ref names them.
    renamed = delivery(
        credentialsSecretRef={**REF, "accessKeyIdKey": "id", "secretAccessKeyKey": "key"}
    )
    target = form(renamed, secret(id="AKID2", key="s2"))
    assert target.fields is not None and target.fields["x-amz-credential"].startswith("AKID2/")


@pytest.mark.parametrize(
    ("endpoint", "network"),
    [
        ("http://169.254.169.254", {}),
        ("https://10.0.0.5:443", {}),
        ("http://127.0.0.1:9000", {"allowedPorts": [9000]}),
        ("https://[::1]", {}),
        ("https://s3.example.com:8443", {}),  # a port the policy does not open
        (None, {"allowedDomains": ["example.com"]}),  # AWS S3 itself, not an allowed domain
    ],
)
def test_the_policy_judges_the_buckets_url_as_a_webhook_url(
    endpoint: str | None, network: dict[str, Any]
) -> None:
    with pytest.raises(CaptureError) as caught:
        form(delivery(endpoint=endpoint), secret(), network=network)
    assert caught.value.reason is FailureReason.INVALID_SPEC
    assert caught.value.message.startswith(
        "delivery.s3: the bucket's URL is refused by the ScreenshotPolicy: "
    )


def test_a_policy_with_an_upstream_proxy_refuses_it_before_the_capture() -> None:
    # Its NetworkPolicy opens the proxy alone: the pod could never reach the bucket.
    with pytest.raises(CaptureError) as caught:
        form(delivery(), secret(), network={"proxy": {"server": "http://proxy.corp:3128"}})
    assert caught.value.reason is FailureReason.INVALID_SPEC
    assert "upstream proxy" in caught.value.message


def test_an_endpoint_the_policy_opens_is_signed_for_one_key_and_a_bounded_size() -> None:
    network = {"allowedCIDRs": ["127.0.0.1/32"], "allowedPorts": [9000]}
    target = form(delivery(endpoint="http://127.0.0.1:9000/"), secret(), network=network)
    assert target.url == "http://127.0.0.1:9000/their-shots"
    document = _document(target)
    assert {"key": "shots/x.png"} in document["conditions"]
    assert ["content-length-range", 1, 2048] in document["conditions"]
    assert SECRET_KEY not in json.dumps(target.to_wire())
    public = form(delivery(endpoint="https://s3.example.com"), secret())
    assert public.url == "https://s3.example.com/their-shots"
