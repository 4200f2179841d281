"""Two gateway replicas of the kubernetes backend and the operator on the S3 store and Redis
(issue 17): a job one replica accepted, the other shows and serves; the callers' limits count
once across both; a replica killed mid-job loses nothing.

The real control plane, `kubeshot operator`, two `kubeshot serve --backend kubernetes` processes
sharing a real Redis (Debian's redis-server) and a real S3-compatible server (versitygw), and the
fake kubelet running the real capture pod, which uploads straight to the bucket.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.operator.conftest import Cluster, FakeKubelet, Operator, stop_gateway
from tests.cluster.operator.test_gateway_kubernetes import (
    BOB,
    POLICY,
    Gateway,
    gateway_jobs,
    pod_of,
    start_gateway,
)
from tests.cluster.operator.test_operator_s3 import in_bucket, wait_succeeded
from tests.cluster.operator.test_operator_s3 import s3_operator as s3_operator
from tests.cluster.operator.test_operator_s3 import store_env as store_env
from tests.conftest import S3Server
from tests.gateway.conftest import run_redis

READ_LIMIT = 12
"""Reads (GET /v1/captures/{id}) a caller may make per minute, across both replicas."""


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[str]:
    work = tmp_path / "redis"
    work.mkdir()
    with run_redis(work) as url:
        yield url


@pytest.fixture
def replicas(
    control_plane: Any,
    namespace: str,
    kubeshot_crds: list[str],
    store_env: dict[str, str],
    redis: str,
    tmp_path: Path,
) -> Iterator[list[Gateway]]:
    env = {
        **store_env,
        "KUBESHOT_REDIS_URL": redis,
        "RATE_LIMIT_ENABLED": "true",
        "RATE_LIMIT_READ": f"{READ_LIMIT} per minute",
    }
    group: list[Gateway] = []
    try:
        for name in ("a", "b"):
            group.append(start_gateway(control_plane, namespace, tmp_path / name, env))
        yield group
    finally:
        for replica in group:
            if replica.proc.poll() is None:
                stop_gateway(replica.proc, replica.log_path)


def test_two_replicas_share_jobs_bucket_and_limits_and_a_killed_one_loses_nothing(
    s3_operator: Operator,
    replicas: list[Gateway],
    cluster: Cluster,
    kubelet: FakeKubelet,
    s3_server: S3Server,
    store_env: dict[str, str],
) -> None:
    a, b = replicas
    # A caller's reads, alternately through each replica: the limit counts once across both.
    answers = Counter(
        replica.call("GET", f"/v1/captures/{uuid.uuid4().hex}", token=BOB).status
        for _ in range(READ_LIMIT * 3 // 2)
        for replica in (a, b)
    )
    assert answers == {404: READ_LIMIT, 429: READ_LIMIT * 2}, answers

    cluster.create_policy(**POLICY)
    accepted = a.call("POST", "/v1/captures", {"html": "<h1>two replicas</h1>"})
    assert accepted.status == 202, accepted.body
    job_id = accepted.json()["id"]
    [job] = gateway_jobs(cluster, 1)
    seen = b.call("GET", f"/v1/captures/{job_id}")
    assert seen.status == 200 and seen.json()["phase"] in {"Pending", "Queued", "Running"}

    a.proc.kill()  # the replica that accepted the job, gone while it runs
    a.proc.wait()
    done = kubelet.run(pod_of(cluster, job["metadata"]["name"]))
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    state = wait_succeeded(b, job_id)
    stored = in_bucket(s3_server, f"{store_env['KUBESHOT_S3_PREFIX']}/{job_id}")
    assert stored is not None and stored.startswith(b"\x89PNG")
    artifact = b.call("GET", state["result"]["url"])
    assert (artifact.status, artifact.body) == (200, stored)
    assert "/v1/internal/uploads" not in a.log() + b.log()  # no replica relayed the bytes
