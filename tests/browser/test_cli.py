"""`kubeshot capture` as users run it: a subprocess, exit codes, one-line reasons, files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.browser.conftest import TestSite
from tests.support import wait_for

KUBESHOT = [sys.executable, "-m", "kubeshot.cli"]


def capture(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KUBESHOT, "capture", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def written(out: Path, policy: Path) -> list[str]:
    """The arguments that write `out` under `policy`."""
    return ["-o", str(out), "--policy", str(policy)]


def site_policy(tmp_path: Path, site: TestSite, more: str) -> Path:
    """A ScreenshotPolicy file opening the test site, with `more` of its spec."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "apiVersion: kubeshot.dev/v1alpha1\nkind: ScreenshotPolicy\nmetadata: {name: p}\n"
        f"spec:\n  network: {{allowedCIDRs: ['127.0.0.2/32'], allowedPorts: [{site.port}]}}\n"
        f"  {more}\n"
    )
    return policy


def chromium_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "chromium"], capture_output=True, text=True, check=False)
    return {int(p) for p in out.stdout.split()}


def test_capture_writes_a_verified_file_and_json(
    tmp_path: Path, site: TestSite, policy_file: Path
) -> None:
    out = tmp_path / "page.webp"
    done = capture(
        site.url("/page"), *written(out, policy_file), "--width", "800", "--height", "600", "--json"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["format"] == "webp" and report["contentType"] == "image/webp"
    assert (report["width"], report["height"]) == (800, 600)
    assert report["bytes"] == out.stat().st_size
    assert {"blockedRequests", "bytesTransferred", "timings", "sha256"} <= report.keys()
    with Image.open(out) as img:
        assert img.format == "WEBP" and img.size == (800, 600)
    assert [p.name for p in tmp_path.iterdir()] == ["page.webp"]  # no temporary left behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["file:///etc/passwd"], "scheme must be http or https"),
        (["FILE:///etc/passwd"], "scheme must be http or https"),
        (["javascript:alert(1)"], "scheme must be http or https"),
        (["view-source:http://example.com/"], "scheme must be http or https"),
        (["https://example.invalid/", "--format", "png", "--quality", "50"], "quality applies to"),
        (["https://example.invalid/", "--width", "0"], "viewport.width"),
        (["https://example.invalid/", "--header", "no-colon"], "--header expects"),
        (["https://example.invalid/", "--timezone", "Nowhere/Land"], "unknown IANA time zone"),
        (["https://example.invalid/", "--policy", "/nonexistent.yaml"], "No such file"),
        ([], "exactly one of URL and --html"),
    ],
)
def test_invalid_input_exits_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out.png"
    done = capture(*args, "-o", str(out), timeout=30)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_private_target_exits_3_and_reaches_nothing(tmp_path: Path, site: TestSite) -> None:
    site.requests.clear()
    out = tmp_path / "out.png"
    done = capture(site.url("/page"), "-o", str(out))
    assert done.returncode == 3, done.stderr
    assert "BlockedByPolicy" in done.stderr and "127.0.0.2" in done.stderr
    assert site.requests == [] and not out.exists()


def test_allow_cidr_opens_exactly_that_range(tmp_path: Path, site: TestSite) -> None:
    out = tmp_path / "out.png"
    wrong = capture(site.url("/page"), "-o", str(out), "--allow-cidr", "127.0.0.3/32")
    assert wrong.returncode == 3
    right = capture(site.url("/page"), "-o", str(out), "--allow-cidr", "127.0.0.0/8")
    assert right.returncode == 0, right.stderr
    assert out.exists()


def test_timeout_exits_4_and_leaves_no_file(
    tmp_path: Path, site: TestSite, policy_file: Path
) -> None:
    out = tmp_path / "out.png"
    done = capture(site.url("/slow?s=15"), *written(out, policy_file), "--timeout", "2")
    assert done.returncode == 4, done.stderr
    assert "Timeout" in done.stderr and list(tmp_path.iterdir()) == []


def test_result_limit_exits_5(tmp_path: Path, site: TestSite) -> None:
    policy = site_policy(tmp_path, site, "limits: {maxResultBytes: 1024}")
    out = tmp_path / "out.png"
    done = capture(site.url("/page"), *written(out, policy), "--json")
    assert done.returncode == 5, done.stderr
    assert json.loads(done.stdout)["error"]["reason"] == "ResultTooLarge"
    assert not out.exists()


def test_policy_file_is_enforced(tmp_path: Path, site: TestSite) -> None:
    policy = site_policy(tmp_path, site, "features: {allowedFormats: [png]}")
    done = capture(site.url("/page"), *written(tmp_path / "x.pdf", policy))
    assert done.returncode == 3 and "format pdf is not allowed" in done.stderr


def test_html_file_input(tmp_path: Path) -> None:
    page = tmp_path / "in.html"
    page.write_text("<body style='margin:0;background:#0f0'>hi</body>")
    out = tmp_path / "out.jpg"
    done = capture("--html", str(page), "-o", str(out), "--quality", "90")
    assert done.returncode == 0, done.stderr
    with Image.open(out) as img:
        assert img.format == "JPEG"


def test_no_chromium_outlives_an_interrupted_capture(
    tmp_path: Path, site: TestSite, policy_file: Path
) -> None:
    before = chromium_pids()
    proc = subprocess.Popen(
        [*KUBESHOT, "capture", site.url("/slow?s=30"), *written(tmp_path / "o.png", policy_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    wait_for(lambda: chromium_pids() - before, 20, "Chromium to start", 0.2)
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=20)
    wait_for(lambda: not chromium_pids() - before, 15, "Chromium to go with the capture", 0.2)
    assert not (tmp_path / "o.png").exists()


def test_options_json_reaches_every_field_and_flags_win(
    tmp_path: Path, site: TestSite, policy_file: Path
) -> None:
    options = tmp_path / "options.json"
    options.write_text(
        json.dumps({"clickSelectors": [{"selector": "#more"}], "viewport": {"width": 400}})
    )
    out = tmp_path / "more.png"
    flags = ["--options", f"@{options}", "--height", "300"]  # merged into its viewport
    done = capture(site.url("/load-more"), *written(out, policy_file), *flags)
    assert done.returncode == 0, done.stderr
    with Image.open(out) as img:
        assert img.size == (400, 300)
        assert img.convert("RGB").getpixel((150, 200)) == (0, 255, 0)  # revealed by the click


def test_hide_and_clip_flags(tmp_path: Path, site: TestSite, policy_file: Path) -> None:
    out = tmp_path / "clip.png"
    flags = ["--clip", "180,40,160,100", "--hide", "#box", "--json"]
    done = capture(site.url("/page"), *written(out, policy_file), *flags)
    assert done.returncode == 0, done.stderr
    assert "partial" not in json.loads(done.stdout)  # a complete capture
    with Image.open(out) as img:
        assert img.size == (160, 100)
        assert img.convert("RGB").getpixel((30, 20)) == (255, 255, 255)  # #box is hidden


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--options", "[]"], "--options must be a JSON object"),
        (["--options", '{"clickSelector": []}'], "clickSelector"),
        (["--clip", "1,2,3"], "--clip X,Y,W,H expects 4"),
        (["--clip", "0,0,2000,10"], "clip must lie within the viewport"),
        (["--scroll-to-load"], "scrollToLoad applies to fullPage"),
    ],
)
def test_invalid_action_flags_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    done = capture("https://example.invalid/", "-o", str(tmp_path / "o.png"), *args, timeout=30)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
