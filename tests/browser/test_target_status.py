"""What the target answered: final URL, HTTP status and title in every result, and
`failOnHttpStatus` turning chosen statuses into TargetHttpError (engine and CLI)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from kubeshot.api import CaptureError, CaptureOptions, ExitCode, FailureReason, ScreenshotPolicySpec
from tests.browser.test_cli import capture
from tests.support import Handler, Site, serving

LANDED_TITLE = "Landed — 中文 ✓"
# Body colour per page, so that a capture shows which page it is.
PAGES: dict[str, tuple[int, str, str]] = {
    "/missing": (404, "Not found here", "#ff0000"),
    "/broken": (500, "Server error", "#0000ff"),
    "/landed": (200, LANDED_TITLE, "#00ff00"),
    "/tricky": (200, "a\u202eevil\u202c " + "long " * 200, "#ffffff"),
    # An image that never arrives: the load event never fires.
    "/stalled": (404, "Stalled", "#00ff00"),
}


class StatusPages(Handler):
    """Pages answering 404, 500, 200 and a 302 to /landed."""

    def do_GET(self) -> None:
        if self.path == "/never.png":
            time.sleep(60)
            return
        if self.path == "/moved":
            self.reply(302, headers={"Location": "/landed"})
            return
        status, title, colour = PAGES.get(self.path, (404, "none", "#000000"))
        stall = "<img src=/never.png>" if self.path == "/stalled" else ""
        body = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>html,body{{margin:0;background:{colour}}}</style></head>"
            f"<body>{stall}</body></html>"
        )
        self.reply(status, body.encode())


@pytest.fixture(scope="module")
def status_site() -> Iterator[Site]:
    with serving(StatusPages, "127.0.0.2") as site:
        yield site


@pytest.fixture(scope="module")
def status_policy(status_site: Site) -> ScreenshotPolicySpec:
    return ScreenshotPolicySpec.model_validate(
        {"network": {"allowedCIDRs": ["127.0.0.2/32"], "allowedPorts": [status_site.port]}}
    )


async def shot(engine: Any, policy: ScreenshotPolicySpec, **raw: Any) -> tuple[bytes, Any]:
    artifact = await engine.capture(CaptureOptions.model_validate(raw), policy)
    return artifact.data, artifact.report


def corner(data: bytes) -> tuple[int, int, int]:
    pixel = Image.open(io.BytesIO(data)).convert("RGB").getpixel((5, 5))
    assert isinstance(pixel, tuple)
    return pixel[0], pixel[1], pixel[2]


@pytest.mark.parametrize(
    ("path", "status", "title", "colour"),
    [
        ("/missing", 404, "Not found here", (255, 0, 0)),
        ("/broken", 500, "Server error", (0, 0, 255)),
    ],
)
async def test_an_error_page_is_captured_by_default_and_its_status_reported(
    engine: Any,
    status_policy: ScreenshotPolicySpec,
    status_site: Site,
    path: str,
    status: int,
    title: str,
    colour: tuple[int, int, int],
) -> None:
    data, report = await shot(engine, status_policy, url=status_site.url(path))
    assert corner(data) == colour  # the error page itself, as the target served it
    assert report.http_status == status
    assert report.title == title
    assert report.final_url == status_site.url(path)
    wire = report.to_wire()
    assert (wire["httpStatus"], wire["title"]) == (status, title)


async def test_a_redirect_reports_the_final_page(
    engine: Any, status_policy: ScreenshotPolicySpec, status_site: Site
) -> None:
    # The 302 is not what counts: the final response is, for the report and failOnHttpStatus.
    data, report = await shot(
        engine, status_policy, url=status_site.url("/moved"), failOnHttpStatus=["3xx", "4xx"]
    )
    assert corner(data) == (0, 255, 0)
    assert report.http_status == 200
    assert report.final_url == status_site.url("/landed")
    assert report.title == LANDED_TITLE


@pytest.mark.parametrize(
    ("path", "rules", "status"),
    [("/missing", ["4xx"], 404), ("/broken", ["404", "500"], 500), ("/broken", ["5xx"], 500)],
)
async def test_fail_on_http_status_fails_with_target_http_error(
    engine: Any,
    status_policy: ScreenshotPolicySpec,
    status_site: Site,
    path: str,
    rules: list[str],
    status: int,
) -> None:
    with pytest.raises(CaptureError) as caught:
        await shot(engine, status_policy, url=status_site.url(path), failOnHttpStatus=rules)
    assert caught.value.reason is FailureReason.TARGET_HTTP_ERROR
    assert f"HTTP {status}" in caught.value.message
    assert status_site.url(path) in caught.value.message


async def test_a_status_outside_the_rules_is_captured(
    engine: Any, status_policy: ScreenshotPolicySpec, status_site: Site
) -> None:
    _, report = await shot(
        engine, status_policy, url=status_site.url("/broken"), failOnHttpStatus=["404", "4xx"]
    )
    assert report.http_status == 500


async def test_html_input_has_a_title_and_no_status(
    engine: Any, status_policy: ScreenshotPolicySpec
) -> None:
    _, report = await shot(engine, status_policy, html="<title>  Inline\tpage </title><p>x</p>")
    assert (report.http_status, report.final_url, report.title) == (None, None, "Inline page")
    assert {"httpStatus", "finalUrl"}.isdisjoint(report.to_wire())


async def test_a_hostile_title_is_bounded_and_stripped(
    engine: Any, status_policy: ScreenshotPolicySpec, status_site: Site
) -> None:
    _, report = await shot(engine, status_policy, url=status_site.url("/tricky"))
    assert report.title.startswith("a evil long long")  # bidi controls gone
    assert len(report.title) <= 512
    assert not any(c in report.title for c in "\u202e\u202c\r\n")


def _policy_file(tmp_path: Path, site: Site) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "apiVersion: kubeshot.dev/v1alpha1\nkind: ScreenshotPolicy\nmetadata: {name: test}\n"
        f"spec:\n  network:\n    allowedCIDRs: ['127.0.0.2/32']\n    allowedPorts: [{site.port}]\n"
    )
    return path


def test_cli_json_reports_status_and_title(tmp_path: Path, status_site: Site) -> None:
    out = tmp_path / "page.png"
    policy = _policy_file(tmp_path, status_site)
    done = capture(status_site.url("/missing"), "-o", str(out), "--policy", str(policy), "--json")
    assert done.returncode == ExitCode.OK, done.stderr
    report = json.loads(done.stdout)
    assert report["httpStatus"] == 404
    assert report["title"] == "Not found here"
    assert report["finalUrl"] == status_site.url("/missing")
    assert out.exists()


def test_cli_fail_on_http_status_exits_4(tmp_path: Path, status_site: Site) -> None:
    out = tmp_path / "page.png"
    policy = _policy_file(tmp_path, status_site)
    done = capture(
        status_site.url("/missing"),
        "-o",
        str(out),
        "--policy",
        str(policy),
        "--fail-on-http-status",
        "5xx,4xx",
        "--json",
    )
    assert done.returncode == ExitCode.CAPTURE_FAILED == 4, done.stderr
    assert json.loads(done.stdout)["error"]["reason"] == "TargetHttpError"
    assert "TargetHttpError: the target answered HTTP 404" in done.stderr
    assert not out.exists()


def test_cli_refuses_a_malformed_rule(tmp_path: Path, status_site: Site) -> None:
    done = capture(
        status_site.url("/missing"), "-o", str(tmp_path / "x.png"), "--fail-on-http-status", "4XX"
    )
    assert done.returncode == ExitCode.INVALID_INPUT, done.stderr
    assert "failOnHttpStatus" in done.stderr


async def test_best_attempt_reports_and_judges_the_status_it_got(
    engine: Any, status_policy: ScreenshotPolicySpec, status_site: Site
) -> None:
    # The navigation never finishes (load never fires), yet the target had answered 404.
    raw = {"url": status_site.url("/stalled"), "timeoutSeconds": 4, "bestAttempt": True}
    data, report = await shot(engine, status_policy, **raw)
    assert report.partial is True
    assert corner(data) == (0, 255, 0)
    assert (report.http_status, report.title) == (404, "Stalled")
    assert report.final_url == status_site.url("/stalled")
    with pytest.raises(CaptureError) as caught:
        await shot(engine, status_policy, **raw, failOnHttpStatus=["4xx"])
    assert caught.value.reason is FailureReason.TARGET_HTTP_ERROR
