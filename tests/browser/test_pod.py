"""`python -m kubeshot_capture`, the capture pod's entrypoint, against a local upload receiver."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kubeshot.api import (
    CaptureOptions,
    CaptureOutcome,
    CaptureRequest,
    ScreenshotPolicySpec,
    UploadTarget,
)
from tests.browser.conftest import TestSite

TOKEN = "job-token-0123456789abcdef"


class Receiver:
    __test__ = False

    def __init__(self) -> None:
        self.uploads: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.send_response(403)
                    self.end_headers()
                    return
                receiver.uploads.append(
                    {"path": self.path, "body": body, "headers": dict(self.headers.items())}
                )
                answer = json.dumps({"url": f"http://gateway.test{self.path}"}).encode()
                self.send_response(201)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/internal/jobs/ns/job-1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def run_pod(tmp_path: Path, request: str) -> tuple[int, dict[str, Any]]:
    (tmp_path / "request.json").write_text(request)
    env = {
        **os.environ,
        "KUBESHOT_REQUEST": str(tmp_path / "request.json"),
        "KUBESHOT_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "kubeshot_capture"],
        env=env,
        capture_output=True,
        timeout=90,
        check=False,
    )
    message = (tmp_path / "termination-log").read_text()
    assert len(message.encode()) <= 4096
    return done.returncode, json.loads(message)


def request_for(url: str, policy: ScreenshotPolicySpec, upload_url: str, token: str = TOKEN) -> str:
    return CaptureRequest(
        options=CaptureOptions(url=url, format="jpeg"),
        policy=policy,
        upload=UploadTarget(url=upload_url, token=token),
    ).to_json()


def test_success_uploads_and_reports(
    tmp_path: Path, site: TestSite, local_policy: ScreenshotPolicySpec, receiver: Receiver
) -> None:
    code, summary = run_pod(tmp_path, request_for(site.url("/page"), local_policy, receiver.url))
    assert code == 0, summary
    [upload] = receiver.uploads
    result = summary["result"]
    assert result["sha256"] == hashlib.sha256(upload["body"]).hexdigest()
    assert upload["headers"]["X-Kubeshot-Sha256"] == result["sha256"]
    assert result["contentType"] == "image/jpeg" and result["bytes"] == len(upload["body"])
    assert result["url"] == "http://gateway.test/v1/internal/jobs/ns/job-1"
    # The whole report, read back with the model the operator reads it with.
    report = CaptureOutcome.model_validate(summary).report()
    assert report.format == "jpeg" and report.timings.total_ms > 0
    assert [p.name.value for p in report.timings.phases][:2] == ["setup", "navigate"]


def test_blocked_target_reports_the_reason(
    tmp_path: Path, site: TestSite, receiver: Receiver
) -> None:
    code, summary = run_pod(
        tmp_path, request_for(site.url("/page"), ScreenshotPolicySpec(), receiver.url)
    )
    assert code == 3
    assert summary["failure"]["reason"] == "BlockedByPolicy"
    assert receiver.uploads == []


def test_unreadable_request_is_invalid_spec(tmp_path: Path) -> None:
    code, summary = run_pod(tmp_path, '{"options": {"url": "file:///etc/passwd"}}')
    assert code == 2 and summary["failure"]["reason"] == "InvalidSpec"


def test_refused_upload_is_an_internal_failure(
    tmp_path: Path, site: TestSite, local_policy: ScreenshotPolicySpec, receiver: Receiver
) -> None:
    request = request_for(
        site.url("/page"), local_policy, receiver.url, token="wrong-token-0123456789"
    )
    code, summary = run_pod(tmp_path, request)
    assert code == 1 and summary["failure"]["reason"] == "Internal"
    assert "HTTP 403" in summary["failure"]["message"]


def test_a_refusal_does_not_tell_the_job_what_a_name_resolves_to(
    tmp_path: Path, site: TestSite, receiver: Receiver
) -> None:
    # `localhost` resolves to a loopback address: the CaptureJob's author (who reads its status
    # and its pod's log) learns that the target was refused, not where the name points.
    url = f"http://localhost:{site.port}/page"
    policy = ScreenshotPolicySpec.model_validate({"network": {"allowedPorts": [site.port]}})
    (tmp_path / "request.json").write_text(request_for(url, policy, receiver.url))
    env = {
        **os.environ,
        "KUBESHOT_REQUEST": str(tmp_path / "request.json"),
        "KUBESHOT_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "kubeshot_capture"], env=env, capture_output=True, timeout=90
    )
    failure = json.loads((tmp_path / "termination-log").read_text())["failure"]
    assert done.returncode == 3 and failure["reason"] == "BlockedByPolicy"
    assert "localhost" in failure["message"] and "[address]" in failure["message"]
    for text in (failure["message"], done.stderr.decode().splitlines()[-1]):
        assert "127.0.0.1" not in text and "::1" not in text
