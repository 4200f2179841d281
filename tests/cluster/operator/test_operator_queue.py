"""The CaptureJob status is the queue (issue 19): seen from a watch, every job says Queued or
Running at once, no more jobs than the limit run, and first come first served holds across an
operator failover."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from tests.cluster.operator.conftest import Cluster, JobWatch, Operator
from tests.support import wait_for

SHA = "0" * 64
RESULT = json.dumps({"result": {"contentType": "image/png", "bytes": 10, "sha256": SHA}})
# creationTimestamp has whole seconds: a job made at 12:00:00.9 says 12:00:00. Seen within one
# second of its creation, it is seen less than two seconds after its creationTimestamp.
RESOLUTION = 1.0


def finish_pods(cluster: Cluster, stop: threading.Event) -> None:
    """A kubelet whose captures all succeed at once: every capture pod ends as soon as seen."""
    ended: set[str] = set()
    while not stop.wait(0.05):
        for pod in cluster.capture_pods():
            name = pod["metadata"]["name"]
            if name not in ended and not pod["metadata"].get("deletionTimestamp"):
                ended.add(name)
                cluster.terminate(name, 0, "Completed", RESULT)


def created_at(job: dict[str, object]) -> float:
    text = str(job["metadata"]["creationTimestamp"])  # type: ignore[index]
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def test_fifty_jobs_under_a_limit_of_two_say_queued_or_running_within_a_second(
    operator: Operator, cluster: Cluster, job_watch: JobWatch
) -> None:
    cluster.create_policy(limits={"maxConcurrentJobs": 2})
    wait_for(  # the operator watches: its NetworkPolicy is applied
        lambda: (cluster.policy() or {}).get("status", {}).get("networkPolicyName"),
        what="the policy's NetworkPolicy",
    )
    names = [f"job-{i:02d}" for i in range(50)]
    stop = threading.Event()
    kubelet = threading.Thread(target=finish_pods, args=(cluster, stop), daemon=True)
    kubelet.start()
    try:
        with ThreadPoolExecutor(8) as pool:  # a burst: admissions overlap
            created = dict(zip(names, pool.map(cluster.create_job, names), strict=True))
        for name in names:
            job = cluster.wait_phase(name, "Succeeded", "Failed", timeout=120)
            assert job["status"]["phase"] == "Succeeded", job["status"]
    finally:
        stop.set()
        kubelet.join(10)
    assert job_watch.error is None, job_watch.error
    said: dict[str, float] = {}
    running: set[str] = set()
    most = 0
    for at, name, phase in job_watch.phases():
        if phase in {"Queued", "Running", "Succeeded", "Failed"}:
            said.setdefault(name, at)
        running = running | {name} if phase == "Running" else running - {name}
        most = max(most, len(running))
    delays = {n: said.get(n, float("inf")) - created_at(created[n]) for n in names}
    late = {name: round(delay, 2) for name, delay in delays.items() if delay >= 1 + RESOLUTION}
    assert late == {}, f"jobs that said neither Queued nor Running within 1 s: {late}"
    assert most <= 2, f"{most} jobs Running at once under maxConcurrentJobs 2"


def test_fifo_holds_across_an_operator_failover(
    start_operator: Callable[..., Operator], cluster: Cluster
) -> None:
    first = start_operator()
    cluster.create_policy(limits={"maxConcurrentJobs": 1})
    names = [f"job-{i}" for i in range(1, 7)]  # created in this order (and named in it)
    for name in names:
        cluster.create_job(name, html=f"<p>{name}</p>")
    for name in names[1:]:
        cluster.wait_phase(name, "Queued")
    first.stop(signal.SIGKILL)
    cluster.terminate("job-1-1", 0, "Completed", RESULT)  # ends while no operator runs
    start_operator()  # the Lease of the killed one expires first
    started = ["job-1"]
    cluster.wait_phase("job-1", "Succeeded")
    for _ in names[1:]:
        pods = wait_for(
            lambda: (
                [
                    p["metadata"]["name"]
                    for p in cluster.capture_pods()
                    if not p["metadata"].get("deletionTimestamp")
                    and p["metadata"]["name"] != "job-1-1"
                    and p["metadata"]["name"].rsplit("-", 1)[0] not in started
                ]
                or None
            ),
            what="the next job's pod",
        )
        assert len(pods) == 1, pods
        started.append(pods[0].rsplit("-", 1)[0])
        cluster.terminate(pods[0], 0, "Completed", RESULT)
        cluster.wait_phase(started[-1], "Succeeded")
    assert started == names
