"""examples/ applied with kubectl, the README's curl, and the async API, through the chart."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need
from tests.e2e.conftest import (
    NAMESPACE,
    PNG_SIGNATURE,
    POLL,
    WAIT,
    Gateway,
    Kubectl,
    Pages,
    png_size,
)
from tests.support import wait_for

MAGIC = {"png": PNG_SIGNATURE, "pdf": b"%PDF-", "jpeg": b"\xff\xd8\xff", "webp": b"RIFF"}


def test_examples_succeed_and_their_artifacts_match_their_sha256(
    examples: list[dict[str, Any]], gateway: Gateway
) -> None:
    for job in examples:
        name, status = job["metadata"]["name"], job["status"]
        assert status["phase"] == "Succeeded", f"{name}: {status.get('failure')}"
        data = gateway.artifact(job)
        assert hashlib.sha256(data).hexdigest() == status["result"]["sha256"], name
        assert len(data) == status["result"]["bytes"], name
        assert data.startswith(MAGIC[job["spec"]["format"]]), (name, data[:16])
        if job["spec"]["format"] == "png":
            assert png_size(data) == (status["result"]["width"], status["result"]["height"])


def table(text: str) -> list[dict[str, str]]:
    """kubectl's table output as rows of {column: cell}, by the header's column positions (a cell
    may be empty)."""
    header, *lines = text.splitlines()
    names = header.split()
    starts = [header.index(f" {name}") + 1 if i else 0 for i, name in enumerate(names)]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return [
        {n: line[a:b].strip() for n, (a, b) in zip(names, bounds, strict=True)} for line in lines
    ]


def test_kubectl_get_cjob_shows_phase_url_format_and_size(
    examples: list[dict[str, Any]], kubectl: Kubectl
) -> None:
    output = kubectl("get", "cjob", "-n", NAMESPACE).stdout
    assert output.split()[:6] == ["NAME", "PHASE", "URL", "FORMAT", "SIZE", "AGE"], output
    rows = {row["NAME"]: row for row in table(output)}
    for job in examples:
        row = rows[job["metadata"]["name"]]
        assert row["PHASE"] == "Succeeded", row
        assert row["URL"] in {job["spec"].get("url", ""), "<none>"}, row
        assert row["FORMAT"] == job["spec"]["format"], row
        assert row["SIZE"] == str(job["status"]["result"]["bytes"]), row


def readme_curl(gateway: Gateway, body: str, output: Path) -> subprocess.CompletedProcess[str]:
    """README.md's curl, against the gateway Service with the token of the chart's Secret."""
    return subprocess.run(
        ["curl", "-sS", "-X", "POST", f"{gateway.url}/v1/screenshot",
         "-H", f"Authorization: Bearer {gateway.token}", "-H", "Content-Type: application/json",
         "-d", body, "-o", str(output), "--cacert", str(gateway.ca), "-w", "%{http_code}"],
        capture_output=True, text=True, timeout=200,
    )  # fmt: skip


@pytest.fixture(scope="session")
def readme_png(
    examples: list[dict[str, Any]],
    gateway: Gateway,
    pages: Pages,
    tmp_path_factory: pytest.TempPathFactory,
) -> bytes:
    need(shutil.which("curl"), "curl is not installed")
    output = tmp_path_factory.mktemp("readme") / "page.png"
    body = f'{{"url": "{pages.url}", "format": "png", "fullPage": true}}'
    done = readme_curl(gateway, body, output)
    assert done.stdout == "200", (done.stdout, done.stderr, output.read_bytes()[:300])
    return output.read_bytes()


def test_the_readme_curl_returns_a_png(readme_png: bytes, gateway: Gateway, pages: Pages) -> None:
    width, height = png_size(readme_png)
    assert width == 1280 and height >= 1, (width, height)  # the default viewport width
    # Without the token: 401, and no capture.
    anonymous = {"url": pages.url, "format": "png"}
    status, headers, _ = gateway.request("POST", "/v1/screenshot", anonymous, token=False)
    assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer")


def test_the_async_api_returns_the_same_capture(
    readme_png: bytes, gateway: Gateway, pages: Pages
) -> None:
    status, headers, body = gateway.request(
        "POST", "/v1/captures", {"url": pages.url, "format": "png", "fullPage": True}
    )
    assert status == 202, body
    job_id = json.loads(body)["id"]
    assert headers["Location"] == f"/v1/captures/{job_id}"

    def done() -> dict[str, Any] | None:
        code, _, answer = gateway.request("GET", f"/v1/captures/{job_id}")
        assert code == 200, answer
        view: dict[str, Any] = json.loads(answer)
        return view if view["phase"] in {"Succeeded", "Failed"} else None

    view = wait_for(done, WAIT, f"capture {job_id}", POLL)
    assert view["phase"] == "Succeeded", view
    code, _, artifact = gateway.request("GET", view["result"]["url"])
    assert code == 200
    assert hashlib.sha256(artifact).hexdigest() == view["result"]["sha256"]
    assert png_size(artifact) == png_size(readme_png)
    assert artifact == readme_png, "the same page and options gave another PNG"
