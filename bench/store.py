"""Result store benchmark: what an artifact costs to store in S3 vs on the filesystem.

Puts N random artifacts (sha256-checked, as the gateway does) into the filesystem store and
into the S3 store against a local versitygw (testenv/s3, built by testenv/build.sh), then gets
them back; prints p50/p95 per artifact for each, and the S3 store's overhead at p50/p95. Then
the way a capture pod puts one into the bucket on Kubernetes: a POST of the form the operator
signed for its key (kubeshot_capture.pod.upload; the signing, the operator's, not timed).

Usage: python bench/store.py [--artifacts N] [--kib K]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kubeshot.api import CaptureReport, UploadTarget
from kubeshot.store import ResultStore
from kubeshot.store.files import FileStore
from kubeshot.store.s3 import S3Config, S3Store, UploadSigner
from kubeshot_capture.pod import upload

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo: tests.support

from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
KEY, SECRET = "bench-access-key-0123", "bench-secret-key-0123456789abcdef"


def percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=20)
    return cuts[9], cuts[18]  # p50, p95


async def measure(
    stores: dict[str, ResultStore], artifacts: list[tuple[str, bytes, str]]
) -> dict[tuple[str, str], list[float]]:
    """ms per put, then per get, of each artifact in each store (interleaved: same noise)."""
    took: dict[tuple[str, str], list[float]] = {}
    for store in stores.values():
        await store.open()
    try:
        for verb in ("put", "get"):
            for job_id, data, sha256 in artifacts:
                for name, store in stores.items():
                    start = time.perf_counter()
                    if verb == "put":
                        await store.put(job_id, data, sha256)
                    else:
                        assert await store.get(job_id, sha256) == data
                    took.setdefault((name, verb), []).append((time.perf_counter() - start) * 1000)
    finally:
        for store in stores.values():
            await store.close()
    return took


def pod_posts(config: S3Config, artifacts: list[tuple[str, bytes, str]]) -> list[float]:
    """ms per artifact of a capture pod's upload: the POST of its signed form to the bucket."""
    signer, took = UploadSigner(config), []
    for _, data, sha256 in artifacts:
        form = signer.presigned_upload(uuid.uuid4().hex, len(data), 600)  # a key of its own
        target = UploadTarget(url=form.url, fields=form.fields)
        report = CaptureReport(content_type="image/png", bytes=len(data), sha256=sha256)
        start = time.perf_counter()
        upload(target, data, report)
        took.append((time.perf_counter() - start) * 1000)
    return took


def main(count: int, kib: int) -> None:
    binary = subprocess.run(
        ["bash", str(ROOT / "testenv" / "build.sh"), "--print-s3"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    artifacts = []
    for _ in range(count):
        data = os.urandom(kib * 1024)
        artifacts.append((uuid.uuid4().hex, data, hashlib.sha256(data).hexdigest()))
    port = free_port()
    with tempfile.TemporaryDirectory() as work:
        for sub in ("data/bench", "meta", "files"):
            Path(work, sub).mkdir(parents=True)
        # The posix backend: the bucket "bench" is the directory data/bench.
        posix = ["posix", "--sidecar", f"{work}/meta", f"{work}/data"]
        server = subprocess.Popen(
            [binary, "--port", f"127.0.0.1:{port}", "--quiet", *posix],
            env={"ROOT_ACCESS_KEY_ID": KEY, "ROOT_SECRET_ACCESS_KEY": SECRET},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1)
            endpoint = f"http://127.0.0.1:{port}"
            config = S3Config("bench", "results", endpoint, "us-east-1", KEY, SECRET)
            stores: dict[str, ResultStore] = {
                "filesystem": FileStore(Path(work, "files"), 3600),
                "S3": S3Store(config, 3600),
            }
            took = asyncio.run(measure(stores, artifacts))
            posts = pod_posts(config, artifacts)
        finally:
            server.terminate()
            server.wait(10)
    print(f"{count} artifacts of {kib} KiB; ms per artifact (p50 / p95)")
    for verb in ("put", "get"):
        f50, f95 = percentiles(took["filesystem", verb])
        s50, s95 = percentiles(took["S3", verb])
        print(f"  {verb}: filesystem {f50:.2f} / {f95:.2f}   S3 {s50:.2f} / {s95:.2f}   "
              f"overhead {s50 - f50:+.2f} / {s95 - f95:+.2f}")  # fmt: skip
    f50, f95 = percentiles(took["filesystem", "put"])
    p50, p95 = percentiles(posts)
    print(f"  a capture pod's form POST to the bucket: {p50:.2f} / {p95:.2f}   "
          f"vs filesystem put {p50 - f50:+.2f} / {p95 - f95:+.2f}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=int, default=100)
    parser.add_argument("--kib", type=int, default=200)
    args = parser.parse_args()
    main(args.artifacts, args.kib)
