"""A transient browser error (Chromium's `Unable to capture screenshot`) is retried once, on a
fresh context, by the real engine; one that remains carries a reason, never a bare Internal."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page

from kubeshot.api import CaptureError, CaptureOptions, FailureReason, ScreenshotPolicySpec

pytestmark = pytest.mark.asyncio(loop_scope="session")

TRANSIENT = "Page.captureScreenshot: Unable to capture screenshot"
OPTIONS = CaptureOptions.model_validate({"html": "<h1>retried</h1>", "format": "png"})


def failing_screenshots(
    monkeypatch: pytest.MonkeyPatch, failures: int, message: str = TRANSIENT
) -> list[Any]:
    """Page.screenshot fails `failures` times with `message`; returns the context of each call."""
    real: Callable[..., Any] = Page.screenshot
    contexts: list[Any] = []

    async def screenshot(page: Page, **kwargs: Any) -> bytes:
        contexts.append(page.context)
        if len(contexts) <= failures:
            raise PlaywrightError(message)
        data: bytes = await real(page, **kwargs)
        return data

    monkeypatch.setattr(Page, "screenshot", screenshot)
    return contexts


async def test_one_transient_failure_is_retried_on_a_new_context(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    contexts = failing_screenshots(monkeypatch, failures=1)
    artifact = await engine.capture(OPTIONS, ScreenshotPolicySpec())
    assert len(contexts) == 2 and contexts[0] is not contexts[1]
    assert contexts[0] not in engine.browser.contexts  # the failed attempt's context is closed
    assert artifact.report.content_type == "image/png"
    assert Image.open(io.BytesIO(artifact.data)).format == "PNG"


async def test_a_second_transient_failure_is_named(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    contexts = failing_screenshots(monkeypatch, failures=2)
    with pytest.raises(CaptureError) as info:
        await engine.capture(OPTIONS, ScreenshotPolicySpec())
    assert len(contexts) == 2 and contexts[0] is not contexts[1]  # one retry, no more
    assert info.value.reason is FailureReason.NAVIGATION_FAILED
    assert info.value.reason.http_status == 502 and "Unable to capture screenshot" in str(
        info.value
    )


async def test_other_browser_errors_are_not_retried(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    contexts = failing_screenshots(monkeypatch, failures=1, message="Target page crashed")
    with pytest.raises(PlaywrightError):
        await engine.capture(OPTIONS, ScreenshotPolicySpec())
    assert len(contexts) == 1
