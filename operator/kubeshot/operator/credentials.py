"""A CaptureJob's request Secret, and the proxy credentials Secret its policy may name.

The request Secret holds the job's capture request and its upload token. Later attempts reuse it
only while the job owns it (its controller ownerReference) and the job's status names its token
(by hash; only the operator writes the status), so that the token and the proxy credentials stay
the job's own. A Secret of that name the job does not own fails the job and is left alone.
"""

from __future__ import annotations

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
)
from kubeshot.kube import Conflict, KubeClient, NotFound, NotOwned, controller_uid, resource_path
from kubeshot.operator import building
from kubeshot.operator.settings import OperatorSettings

Manifest = dict[str, Any]


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
        raw = base64.b64decode((secret.get("data") or {}).get(building.REQUEST_KEY, ""))
        token = (json.loads(raw).get("upload") or {}).get("token", "")
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
) -> str:
    """The job's request Secret; returns the job's upload token (`token` when it is made now).

    `kept_sha256`: the hash of the token of the job's first attempt, as its status says. A
    Secret the job owns but cannot vouch for (left by a start interrupted before its status was
    written) is replaced; one it does not own fails the job (CaptureError).
    """
    path = resource_path("v1", "secrets", job.namespace)
    name = building.secret_name(job)
    if kept_sha256 is not None:
        with contextlib.suppress(NotFound):
            existing = await client.get(f"{path}/{name}")
            kept = vouched_token(existing, job, kept_sha256)
            if kept:
                return kept
            await delete_owned(client, f"{path}/{name}", existing)
    request = building.build_request(
        options,
        policy,
        upload_url=settings.upload_url_for(job.namespace, job.name),
        upload_token=token,
        proxy=await proxy_credentials(client, job.namespace, policy),
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
    labels = (secret.get("metadata") or {}).get("labels") or {}
    if labels.get(PROXY_CREDENTIALS_LABEL) != "true":
        raise refused
    data = secret.get("data") or {}

    def value(key: str) -> str | None:
        return base64.b64decode(data[key]).decode() if key in data else None

    return ProxyCredentials.model_validate(
        {
            "server": proxy.server,
            "username": value(ref.username_key),
            "password": value(ref.password_key),
        }
    )
