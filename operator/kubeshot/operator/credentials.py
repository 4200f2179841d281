"""A CaptureJob's request Secret, and the proxy credentials Secret its policy may name.

The request Secret holds the job's capture request and its upload token. Later attempts reuse it
only while the job owns it (its controller ownerReference) and the job's status names its token
(by hash; only the operator writes the status), so that the token and the proxy credentials stay
the job's own. A Secret of that name the job does not own fails the job and is left alone.
With KUBESHOT_STORE=s3 the Secret holds no token but a POST policy signed for one attempt: it
names no token, so every attempt replaces it with one signed anew.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kubeshot.api import (
    PROXY_CREDENTIALS_LABEL,
    CaptureError,
    CaptureOptions,
    Failure,
    FailureReason,
    ProxyCredentials,
    ScreenshotPolicySpec,
    UploadTarget,
)
from kubeshot.api.delivery import S3_CREDENTIALS_LABEL, S3Delivery, S3DeliveryStatus
from kubeshot.kube import Conflict, KubeClient, NotFound, NotOwned, controller_uid, resource_path
from kubeshot.kube.names import opted_in, secret_text, store_id
from kubeshot.operator import building
from kubeshot.operator.settings import OperatorSettings
from kubeshot.store.s3 import S3Config, UploadSigner
from kubeshot.webhooks import refusal

Manifest = dict[str, Any]
UPLOAD_START_SECONDS = 600
"""How long a pod may take to start (scheduling, image pull) before its deadline counts: the
presigned upload's validity beyond the pod's deadline."""


def not_ours(kind: str, name: str) -> Failure:
    """A job whose Secret or Pod name is taken by an object the job does not own."""
    message = (
        f"a {kind} named {name} exists already and does not belong to this CaptureJob"
        " (its ownerReference is not this job): delete it, or create the CaptureJob under"
        " another name"
    )
    return Failure(reason=FailureReason.INVALID_SPEC, message=message)


def upload_token(secret: Mapping[str, Any]) -> str:
    """The upload token in a request Secret; empty when it holds none."""
    try:
        raw = json.loads(base64.b64decode((secret.get("data") or {}).get(building.REQUEST_KEY, "")))
        token = raw.get("reportToken") or (raw.get("upload") or {}).get("token", "")
    except (ValueError, AttributeError):
        return ""
    return token if isinstance(token, str) else ""


def vouched_token(secret: Manifest, job: building.JobRef, sha256: str | None) -> str:
    """The Secret's upload token if the job owns the Secret and its status names the token;
    CaptureError when the job does not own it; empty when it cannot vouch for the token."""
    if controller_uid(secret) != job.uid:
        failure = not_ours("Secret", building.secret_name(job))
        raise CaptureError(failure.reason, failure.message)
    token = upload_token(secret)
    if token and sha256 is not None and hashlib.sha256(token.encode()).hexdigest() == sha256:
        return token
    return ""


async def owned_text(
    client: KubeClient, namespace: str, name: str, owner_uid: str, key: str
) -> str | None:
    """The text under `key` of the Secret `name` when the object `owner_uid` is its controller
    (the request Secret of a job, the key of a warm pod); None when it is missing, another's,
    or not base64 of text (a Secret under that name is anyone's to plant)."""
    try:
        secret = await client.get(resource_path("v1", "secrets", namespace, name))
    except NotFound:
        return None
    if controller_uid(secret) != owner_uid:
        return None
    try:
        return secret_text(secret, key)
    except ValueError:
        return None


async def delete_owned(client: KubeClient, path: str, existing: Manifest) -> None:
    """Delete that very object (its uid), not one made under its name meanwhile."""
    uid = (existing.get("metadata") or {}).get("uid")
    with contextlib.suppress(Conflict):
        await client.delete(path, uid=str(uid) if uid else None)


async def delete_secret(client: KubeClient, job: building.JobRef) -> None:
    """Delete the job's request Secret if the job owns it; a stranger's is left alone."""
    path = resource_path("v1", "secrets", job.namespace, building.secret_name(job))
    try:
        secret = await client.get(path)
    except NotFound:
        return
    if controller_uid(secret) == job.uid:
        await delete_owned(client, path, secret)


async def ensure_secret(
    client: KubeClient,
    settings: OperatorSettings,
    job: building.JobRef,
    policy_name: str,
    options: CaptureOptions,
    policy: ScreenshotPolicySpec,
    token: str,
    kept_sha256: str | None,
    delivery: S3Delivery | None = None,
) -> str:
    """The job's request Secret; returns the job's upload token (`token` when it is made now).

    `kept_sha256`: the hash of the token of the job's first attempt, as its status says. A
    Secret the job owns but cannot vouch for (left by a start interrupted before its status was
    written) is replaced; one it does not own fails the job (CaptureError). With `delivery`
    (`delivery.s3`) it is made anew, with the kept token, so that its form is signed anew.
    """
    path = resource_path("v1", "secrets", job.namespace)
    name = building.secret_name(job)
    if kept_sha256 is not None:
        with contextlib.suppress(NotFound):
            existing = await client.get(f"{path}/{name}")
            kept = vouched_token(existing, job, kept_sha256)
            # A signed form (the S3 store's, delivery.s3's) is signed anew for every attempt.
            if kept and delivery is None and settings.store.store != "s3":
                return kept
            token = kept or token
            await delete_owned(client, f"{path}/{name}", existing)
    request = building.build_request(
        options,
        policy,
        upload=await upload_target(settings, job, options, policy, token),
        proxy=await proxy_credentials(client, job.namespace, policy),
        deliver=await delivery_target(client, settings, job, delivery, options, policy),
        report_token=token,
    )
    manifest = building.build_secret(job, policy_name, request)
    for _ in range(2):
        try:
            existing, fresh = await client.create_or_adopt(path, manifest)
        except NotOwned:
            failure = not_ours("Secret", name)
            raise CaptureError(failure.reason, failure.message) from None
        if fresh:
            return token
        kept = vouched_token(existing, job, kept_sha256)
        if kept:
            return kept
        await delete_owned(client, f"{path}/{name}", existing)
    raise Conflict(409, "Conflict", f"the request Secret {name} was made again meanwhile")


async def upload_target(
    settings: OperatorSettings,
    job: building.JobRef,
    options: CaptureOptions,
    policy: ScreenshotPolicySpec,
    token: str,
) -> UploadTarget:
    """Where this attempt's pod uploads: the gateway's endpoint with the job's token; or, with
    KUBESHOT_STORE=s3, the bucket, by a POST policy signed for the job's object alone (the key
    the gateway reads), of at most KUBESHOT_MAX_UPLOAD_BYTES and the policy's maxResultBytes,
    valid while the pod may run and start (UPLOAD_START_SECONDS)."""
    store = settings.store
    if store.store != "s3":
        return UploadTarget(url=settings.upload_url_for(job.namespace, job.name), token=token)
    key = store_id({"metadata": {"uid": job.uid}})
    max_bytes, expires = upload_bounds(settings, options, policy)
    # In a thread: the first call makes the signer (botocore loads its S3 model, a second).
    post = await asyncio.to_thread(
        lambda: store.upload_signer.presigned_upload(key, max_bytes, expires)
    )
    return UploadTarget(url=post.url, fields=post.fields)


def upload_bounds(
    settings: OperatorSettings, options: CaptureOptions, policy: ScreenshotPolicySpec
) -> tuple[int, int]:
    """A signed form's largest body (KUBESHOT_MAX_UPLOAD_BYTES and the policy's maxResultBytes)
    and its validity in seconds (while the pod may start and run)."""
    max_bytes = min(settings.store.max_upload_bytes, policy.limits.max_result_bytes)
    return max_bytes, building.pod_deadline(options, policy, settings) + UPLOAD_START_SECONDS


async def delivery_target(
    client: KubeClient,
    settings: OperatorSettings,
    job: building.JobRef,
    delivery: S3Delivery | None,
    options: CaptureOptions,
    policy: ScreenshotPolicySpec,
) -> UploadTarget | None:
    """The form for the caller's bucket (`delivery.s3`): signed with the keys of the job's opted
    in Secret, for the job's key alone, bounded as the result store's upload is."""
    if delivery is None:
        return None
    ref = delivery.credentials_secret_ref
    try:
        secret = await client.get(resource_path("v1", "secrets", job.namespace, ref.name))
    except NotFound:
        secret = None
    key = delivered_object(job, delivery, options).key
    max_bytes, expires = upload_bounds(settings, options, policy)
    # In a thread: making a signer loads botocore's S3 model (a second).
    return await asyncio.to_thread(delivery_form, delivery, secret, policy, key, max_bytes, expires)


def delivered_object(
    job: building.JobRef, delivery: S3Delivery, options: CaptureOptions
) -> S3DeliveryStatus:
    """The job's object in the caller's bucket: `<prefix>/<job id>.<format>`."""
    key = delivery.key(store_id({"metadata": {"uid": job.uid}}), options.format.value)
    return S3DeliveryStatus(bucket=delivery.bucket, key=key)


def delivery_form(
    delivery: S3Delivery,
    secret: Mapping[str, Any] | None,
    policy: ScreenshotPolicySpec,
    key: str,
    max_bytes: int,
    expires: int,
) -> UploadTarget:
    """The POST form for `key` of the caller's bucket, signed with the Secret's keys (signing
    is computation: no connection). CaptureError (InvalidSpec) when the Secret is missing, has
    not opted in (label `kubeshot.dev/s3-credentials: "true"`) or lacks a key (alike, never
    naming a value), when the policy refuses the URL the pod would POST to, judged as a
    webhook URL is (scheme, port, domains, literal address), or has an upstream proxy."""
    if policy.network.proxy is not None:  # refused before a capture runs for nothing
        raise CaptureError(
            FailureReason.INVALID_SPEC,
            "delivery.s3 is not supported under a ScreenshotPolicy with an upstream proxy: its"
            " capture pods reach the proxy alone",
        )
    ref = delivery.credentials_secret_ref
    keys = (ref.access_key_id_key, ref.secret_access_key_key)
    refused = CaptureError(
        FailureReason.INVALID_SPEC,
        f"delivery.s3 credentials Secret {ref.name!r} not found, not labelled"
        f' {S3_CREDENTIALS_LABEL}: "true", or without the keys {keys[0]!r} and {keys[1]!r}'
        " as base64 of text",
    )
    if secret is None or not opted_in(secret, S3_CREDENTIALS_LABEL):
        raise refused
    try:
        access_key_id, secret_access_key = (secret_text(secret, k) for k in keys)
    except ValueError:
        raise refused from None
    if access_key_id is None or secret_access_key is None:
        raise refused
    config = S3Config(
        bucket=delivery.bucket,
        endpoint=delivery.endpoint.rstrip("/") if delivery.endpoint else None,
        region=delivery.region,
        access_key_id=access_key_id.strip(),
        secret_access_key=secret_access_key.strip(),
    )
    post = UploadSigner(config).presigned_post(key, max_bytes, expires)
    why = refusal(post.url, policy.network)
    if why is not None:
        message = f"delivery.s3: the bucket's URL is refused by the ScreenshotPolicy: {why}"
        raise CaptureError(FailureReason.INVALID_SPEC, message[:1024])
    return UploadTarget(url=post.url, fields=post.fields)


async def proxy_credentials(
    client: KubeClient, namespace: str, policy: ScreenshotPolicySpec
) -> ProxyCredentials | None:
    """The policy's upstream proxy with the credentials of its Secret.

    Only a Secret that opts in (label `kubeshot.dev/proxy-credentials: "true"`) is read:
    a policy's author must not be able to send any other Secret of the namespace (a service
    account token, a registry password) to a proxy of their choosing. A missing Secret and
    one that has not opted in are refused alike, so that the answer tells nothing about the
    namespace's other Secrets.
    """
    proxy = policy.network.proxy
    if proxy is None:
        return None
    if proxy.credentials_secret_ref is None:
        return ProxyCredentials(server=proxy.server)
    ref = proxy.credentials_secret_ref
    refused = CaptureError(
        FailureReason.INVALID_SPEC,
        f"proxy credentials Secret {ref.name!r} not found, or not labelled"
        f' {PROXY_CREDENTIALS_LABEL}: "true"',
    )
    try:
        secret = await client.get(resource_path("v1", "secrets", namespace, ref.name))
    except NotFound:
        raise refused from None
    if not opted_in(secret, PROXY_CREDENTIALS_LABEL):
        raise refused
    try:
        username, password = (secret_text(secret, k) for k in (ref.username_key, ref.password_key))
    except ValueError:
        raise CaptureError(
            FailureReason.INVALID_SPEC,
            f"proxy credentials Secret {ref.name!r}: a value is not base64 of text",
        ) from None
    return ProxyCredentials.model_validate(
        {"server": proxy.server, "username": username, "password": password}
    )
