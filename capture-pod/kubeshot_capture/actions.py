"""Declarative page actions: what a caller may do to a page without custom JavaScript.

Clicks, hidden elements, scrolling for lazy content, and the time budget they share. The
scripts run here are ours and fixed; the caller's input reaches the page only as data (a
selector, passed as an argument), never as code, which is why a policy that forbids
customJavaScript still allows these.

Time: every action is bounded twice, by a limit of its own (CLICK_TIMEOUT, SETTLE_LIMIT,
MAX_SCROLL_STEPS) and by the capture's `Deadline.prepare_by`, which keeps the last slice of the
capture's time limit for rendering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, Request
from playwright.async_api import TimeoutError as PlaywrightTimeout

from kubeshot.api import CaptureError, FailureReason
from kubeshot.api.capture import ClickAction

log = logging.getLogger(__name__)

# The share of a capture's time limit kept for rendering once the page is loaded and prepared,
# and its bounds: a full-page image of a long page takes a few seconds to composite and encode.
RENDER_RESERVE_SHARE = 0.25
RENDER_RESERVE_MIN = 2.0
RENDER_RESERVE_MAX = 10.0
# The network counts as settled after this long without a request in flight...
SETTLE_QUIET = 0.2
# ...and is waited for at most this long after each click or scroll step (a page that polls or
# streams never settles).
SETTLE_LIMIT = 2.0
# How long a click waits for its element to be attached, visible, stable and enabled.
CLICK_TIMEOUT = 5.0
# Scroll steps are a viewport tall, but never more than this many: a 1-pixel-tall viewport
# would otherwise take one step per pixel of the page.
MAX_SCROLL_STEPS = 100
# How long the page gets to paint a frame (and run the IntersectionObservers it triggers).
FRAME_LIMIT = 1.0

PAGE_HEIGHT = (
    "Math.max(document.documentElement.scrollHeight, document.body ? "
    "document.body.scrollHeight : 0)"
)
_NEXT_FRAMES = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"
_SCROLL_TO = "y => window.scrollTo({top: y, left: 0, behavior: 'instant'})"
# Each selector becomes one CSS rule through the CSSOM, and only the browser's serialisation of
# a rule that parsed as exactly one style rule, with exactly the one declaration we wrote, goes
# into the style sheet: a "selector" that closes the rule and opens another (or an @-rule) is
# refused, not injected. The <style> element keeps the rules in the DOM, so they apply to
# elements that appear later and are part of the html format's output.
_HIDE = """selectors => {
  const probe = new CSSStyleSheet();
  const rules = [];
  for (const selector of selectors) {
    try {
      document.querySelector(selector);
      probe.insertRule(selector + ' { visibility: hidden !important; }', 0);
    } catch (error) {
      return {selector, message: String(error && error.message)};
    }
    const rule = probe.cssRules[0];
    probe.deleteRule(0);
    const ok = rule instanceof CSSStyleRule && rule.style.length === 1
      && rule.style.getPropertyValue('visibility') === 'hidden'
      && rule.style.getPropertyPriority('visibility') === 'important'
      && !rule.cssText.includes('<');
    if (!ok) return {selector, message: 'not a plain selector'};
    rules.push(rule.cssText);
  }
  const style = document.createElement('style');
  style.textContent = rules.join('\\n');
  (document.head || document.documentElement).appendChild(style);
  return null;
}"""
_RENDERED = """() => {
  const body = document.body;
  return !!body && (body.childElementCount > 0 || body.textContent.trim().length > 0);
}"""


@dataclass(frozen=True)
class Deadline:
    """When a capture must be done (`end`), and until when it may load and act (`prepare_by`):
    the time between is kept for rendering. Times are the event loop's clock."""

    seconds: float
    end: float
    prepare_by: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        now = asyncio.get_running_loop().time()
        reserve = min(max(seconds * RENDER_RESERVE_SHARE, RENDER_RESERVE_MIN), RENDER_RESERVE_MAX)
        return cls(seconds=seconds, end=now + seconds, prepare_by=now + seconds - reserve)

    def left(self) -> float:
        """Seconds left to load and act, 0 when the rendering slice has begun."""
        return max(0.0, self.prepare_by - asyncio.get_running_loop().time())


@contextlib.asynccontextmanager
async def preparing(deadline: Deadline, best_attempt: bool) -> AsyncIterator[None]:
    """The loading and preparation of the page: with bestAttempt it must end by
    `deadline.prepare_by` (TimeoutError), so that what the page rendered by then can still be
    captured within the time limit; otherwise it may use the whole limit, as before."""
    if not best_attempt:
        yield
        return
    async with asyncio.timeout_at(deadline.prepare_by):
        yield


async def has_rendered(page: Page, url_input: bool) -> bool:
    """Whether the page shows something of the target worth a partial capture: for url input,
    the navigation committed (the main frame left about:blank for the target, not for an error
    page), and the document's body has content."""
    if url_input and not page.url.startswith(("http://", "https://")):
        return False
    try:
        return bool(await page.evaluate(_RENDERED))
    except PlaywrightError:
        return False


class NetworkActivity:
    """The page's requests in flight, to wait until the network settles after an action.

    Not `page.wait_for_load_state("networkidle")`: that resolves at once once the page has been
    idle after its load, and a click or a scroll comes later.
    """

    def __init__(self, page: Page) -> None:
        self._page = page
        self._in_flight: set[Request] = set()
        self._changed = 0.0

    def __enter__(self) -> NetworkActivity:
        self._changed = asyncio.get_running_loop().time()
        self._page.on("request", self._started)
        self._page.on("requestfinished", self._ended)
        self._page.on("requestfailed", self._ended)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._page.remove_listener("request", self._started)
        self._page.remove_listener("requestfinished", self._ended)
        self._page.remove_listener("requestfailed", self._ended)

    def _started(self, request: Request) -> None:
        self._in_flight.add(request)
        self._changed = asyncio.get_running_loop().time()

    def _ended(self, request: Request) -> None:
        self._in_flight.discard(request)
        self._changed = asyncio.get_running_loop().time()

    async def settle(self, limit: float) -> None:
        """Return once no request was in flight for SETTLE_QUIET, or after `limit` seconds.

        The quiet time counts from the call at the earliest: the requests an action just caused
        reach us a moment after it, and must not find the network "settled" before them.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + max(0.0, limit)
        while (now := loop.time()) < end:
            if not self._in_flight and now - max(self._changed, start) >= SETTLE_QUIET:
                return
            await asyncio.sleep(min(0.05, end - now))


async def click(page: Page, actions: list[ClickAction], deadline: Deadline) -> None:
    """`clickSelectors`: click each in order, then let the network settle.

    A required click whose element does not become clickable within CLICK_TIMEOUT fails the
    capture (NavigationFailed, naming the selector); an optional one is skipped when nothing
    matches at that moment, or when its element cannot be clicked.
    """
    with NetworkActivity(page) as network:
        for action in actions:
            name = f"clickSelectors {action.selector!r}"
            locator = page.locator(action.selector)
            try:
                present = await locator.count()
            except PlaywrightError as exc:
                raise selector_error(name, exc) from exc
            if action.optional and present == 0:
                continue
            seconds = min(CLICK_TIMEOUT, deadline.left())
            if seconds <= 0:
                raise CaptureError(FailureReason.TIMEOUT, f"no time left for {name}")
            try:
                await locator.first.click(timeout=seconds * 1000)
            except PlaywrightError as exc:
                if action.optional:
                    log.info("optional %s skipped: %s", name, first_line(exc.message))
                    continue
                what = "matched no element" if present == 0 else "could not be clicked"
                if isinstance(exc, PlaywrightTimeout):
                    what += f" within {seconds:.3g} s"
                raise CaptureError(
                    FailureReason.NAVIGATION_FAILED,
                    f"{name} {what}: {first_line(exc.message)}",
                ) from exc
            await network.settle(min(SETTLE_LIMIT, deadline.left()))


async def hide(page: Page, selectors: list[str]) -> None:
    """`hideSelectors`: visibility: hidden for every element matching one of the selectors,
    now and later. The layout is kept (unlike display: none), so nothing else moves."""
    refused: Any = await page.evaluate(_HIDE, selectors)
    if refused is not None:
        raise CaptureError(
            FailureReason.INVALID_SPEC,
            f"hideSelectors {refused['selector']!r} is not a valid selector: "
            f"{first_line(str(refused['message']))}",
        )


async def scroll_to_load(page: Page, *, max_height: int, deadline: Deadline) -> None:
    """`scrollToLoad`: scroll down a viewport at a time, letting each step's lazy images and
    IntersectionObserver content load (the network settles or SETTLE_LIMIT passes), then back
    to the top. Stops at `max_height` (the policy's maxFullPageHeight; a page that grows as it
    is scrolled grows at most to there), after MAX_SCROLL_STEPS, or when the time to act is up.
    """
    viewport = page.viewport_size
    view_height = viewport["height"] if viewport is not None else 720
    step = max(view_height, math.ceil(max_height / MAX_SCROLL_STEPS))
    top = 0
    try:
        with NetworkActivity(page) as network:
            for _ in range(MAX_SCROLL_STEPS):
                bottom = min(int(await page.evaluate(PAGE_HEIGHT)), max_height)
                if top + view_height >= bottom:
                    break
                if deadline.left() <= 0:
                    log.info("scrollToLoad stopped at %d px: the time to prepare is up", top)
                    break
                top += step
                await page.evaluate(_SCROLL_TO, top)
                await _next_frames(page)
                await network.settle(min(SETTLE_LIMIT, deadline.left()))
        await page.evaluate(_SCROLL_TO, 0)
        await _next_frames(page)
    except PlaywrightError as exc:  # the page navigated away meanwhile: capture what it shows
        log.info("scrollToLoad stopped at %d px: %s", top, first_line(exc.message))


async def _next_frames(page: Page) -> None:
    """Let the page paint twice: layout, IntersectionObserver callbacks and lazy-image
    decisions of the new scroll position have run by then."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(FRAME_LIMIT):
            await page.evaluate(_NEXT_FRAMES)


def selector_error(field: str, exc: PlaywrightError) -> CaptureError:
    """An invalid selector is the caller's mistake: InvalidSpec."""
    return CaptureError(
        FailureReason.INVALID_SPEC, f"{field} is not a valid selector: {first_line(exc.message)}"
    )


def first_line(text: str) -> str:
    """The first line of an error message, at most 300 characters."""
    return text.strip().splitlines()[0][:300] if text.strip() else "unknown error"
