"""Ad/tracker blocking and cookie-banner dismissal from maintained sources; no list is kept here.

- Ads and trackers (`blockAds`): the filter lists uBlock Origin ships (EasyList, EasyPrivacy,
  uBlock filters, privacy, badware, quick fixes, unbreak), installed by Debian's package
  `webext-ublock-origin-chromium` (only its list files are read; the extension never runs),
  matched by Brave's adblock-rust (PyPI `adblock`). Each request is matched with its resource
  type and the URL of the document that makes it, so `$third-party`, `$domain=` and exception
  rules apply as in a browser's blocker: a site's own `/ads/` path is not blocked unless a list
  names that site. The same lists' element-hiding rules then hide ad slots on the page. Without
  the lists, `blockAds` is refused, never silently ignored.
- Cookie banners (`hideCookieBanners`): DuckDuckGo's autoconsent (npm `@duckduckgo/autoconsent`,
  vendored by hack/vendor-autoconsent.sh), the maintained rules for several hundred consent
  managers compiled into one script. It finds the banner and takes its "reject" path (hiding the
  banner meanwhile), the way a person declining would. It is our own vetted script, injected for
  every caller alike; callers' custom JavaScript stays under the policy's control.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import threading
import time
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import adblock

if TYPE_CHECKING:
    from playwright.async_api import Page

FILTER_LISTS_ENV = "KUBESHOT_FILTER_LISTS"
"""Names the directory of the filter lists, laid out as uBlock Origin's `assets/` (other
distributions install the extension elsewhere; a copy of its `assets/` works as well)."""
DEFAULT_FILTER_LISTS = Path("/usr/share/chromium/extensions/ublock-origin/assets")
REQUIRED_LISTS = ("thirdparties/easylist/easylist.txt", "thirdparties/easylist/easyprivacy.txt")
OPTIONAL_LISTS = (
    "ublock/filters.min.txt",
    "ublock/privacy.min.txt",
    "ublock/badware.min.txt",
    "ublock/quick-fixes.min.txt",
    "ublock/unbreak.min.txt",
)

# Playwright's resource types (Chromium's, lower-cased) to adblock-rust's request types
# (webRequest's). A subframe's document is a `sub_frame`; the page's own document is never asked.
_REQUEST_TYPES = {
    "document": "sub_frame",
    "stylesheet": "stylesheet",
    "image": "image",
    "media": "media",
    "font": "font",
    "script": "script",
    "texttrack": "media",
    "xhr": "xmlhttprequest",
    "fetch": "xmlhttprequest",
    "eventsource": "xmlhttprequest",
    "websocket": "websocket",
    "manifest": "web_manifest",
    "ping": "ping",
    "cspviolationreport": "csp_report",
}


class BlockingUnavailable(RuntimeError):
    """The filter lists are not installed: `blockAds` cannot be honoured here."""


@dataclass(frozen=True)
class AdBlocker:
    """A compiled adblock-rust engine over the filter lists (immutable once built)."""

    engine: adblock.Engine
    lists: tuple[str, ...]
    compile_seconds: float

    def blocks(self, url: str, source_url: str, resource_type: str) -> bool:
        """Whether a request for `url`, made by the document at `source_url`, is an ad or a
        tracker by the lists (exception rules, such as the unbreak list's, win)."""
        request_type = _REQUEST_TYPES.get(resource_type, "other")
        result = self.engine.check_network_urls(url, source_url, request_type)
        return bool(result.matched) and result.exception is None


def filter_lists_dir() -> Path:
    return Path(os.environ.get(FILTER_LISTS_ENV) or DEFAULT_FILTER_LISTS)


ENGINE_CACHE_ENV = "KUBESHOT_FILTER_ENGINE"
"""Names a compiled engine written by `python -m kubeshot_capture.blocklists --write PATH` (the
capture image has one at DEFAULT_ENGINE_CACHE); used only while it matches the lists."""
DEFAULT_ENGINE_CACHE = Path("/opt/kubeshot/filter-engine.bin")
_CACHE_MAGIC = b"kubeshot-filter-engine/1 "


def _read_lists(directory: Path) -> dict[str, str]:
    missing = [name for name in REQUIRED_LISTS if not (directory / name).is_file()]
    if missing:
        raise BlockingUnavailable(
            f"blockAds is unavailable: no filter lists at {directory} (missing "
            f"{', '.join(missing)}); install Debian's webext-ublock-origin-chromium or set "
            f"{FILTER_LISTS_ENV} to a copy of uBlock Origin's assets/ directory"
        )
    lists = {}
    for name in (*REQUIRED_LISTS, *OPTIONAL_LISTS):
        path = directory / name
        if path.is_file():
            lists[name] = path.read_text(encoding="utf-8", errors="replace")
    return lists


def _fingerprint(lists: dict[str, str]) -> bytes:
    """What a compiled engine was made from: the lists' names and text, adblock's version."""
    digest = hashlib.sha256(f"adblock {version('adblock')}\n".encode())
    for name, text in lists.items():
        digest.update(f"{name}\n{len(text)}\n".encode())
        digest.update(text.encode())
    return digest.hexdigest().encode()


def build_ad_blocker(directory: Path, cache: Path | None = None) -> AdBlocker:
    """The engine for the lists under `directory`: loaded from `cache` when that was compiled
    from the very same lists (~0.15 s, ~55 MiB), else compiled (~0.5 s, ~105 MiB resident)."""
    started = time.perf_counter()
    lists = _read_lists(directory)
    fingerprint = _fingerprint(lists)
    engine = adblock.Engine(adblock.FilterSet(), optimize=True)
    if cache is not None and cache.is_file():
        data = cache.read_bytes()
        header, _, body = data.partition(b"\n")
        if header == _CACHE_MAGIC + fingerprint:
            engine.deserialize(body)
            return AdBlocker(engine, tuple(lists), time.perf_counter() - started)
    filters = adblock.FilterSet()
    for text in lists.values():
        filters.add_filter_list(text)
    engine = adblock.Engine(filters, optimize=True)
    return AdBlocker(engine, tuple(lists), time.perf_counter() - started)


def write_engine_cache(directory: Path, cache: Path) -> AdBlocker:
    """Compile the lists and write the engine to `cache` (at image build time)."""
    blocker = build_ad_blocker(directory)
    header = _CACHE_MAGIC + _fingerprint(_read_lists(directory)) + b"\n"
    cache.write_bytes(header + blocker.engine.serialize())
    return blocker


_build_lock = threading.Lock()


@functools.cache
def _cached_ad_blocker(directory: Path, cache: Path) -> AdBlocker:
    return build_ad_blocker(directory, cache)


def ad_blocker() -> AdBlocker:
    """The process's ad blocker, built on first use (raises BlockingUnavailable)."""
    cache = Path(os.environ.get(ENGINE_CACHE_ENV) or DEFAULT_ENGINE_CACHE)
    with _build_lock:  # one build even when two threads ask at once
        return _cached_ad_blocker(filter_lists_dir(), cache)


async def ad_blocker_async() -> AdBlocker:
    """`ad_blocker` off the event loop: the first compilation must not stall the egress guard,
    which serves the browser's connections on the same loop."""
    return await asyncio.to_thread(ad_blocker)


MAX_DOM_NAMES = 5000
"""Class names and ids a page may submit for the lists' element hiding (each list scales)."""
_DOM_NAMES_JS = """(limit) => {
  const classes = new Set(), ids = new Set();
  for (const el of document.querySelectorAll('[id],[class]')) {
    if (classes.size >= limit || ids.size >= limit) break;
    if (typeof el.id === 'string' && el.id) ids.add(el.id);
    for (const name of el.classList) classes.add(name);
  }
  return [Array.from(classes).slice(0, limit), Array.from(ids).slice(0, limit)];
}"""


def _names(values: object) -> list[str]:
    if not isinstance(values, list):
        return []
    return [v for v in values[:MAX_DOM_NAMES] if isinstance(v, str) and 0 < len(v) <= 256]


async def hide_ad_elements(page: Page, blocker: AdBlocker) -> int:
    """Hide what the lists' element-hiding rules name (the ad slots whose content was blocked,
    sponsored boxes) on the page's main document, as uBlock Origin's cosmetic filtering does:
    the rules for this site, plus the generic ones for the class names and ids present. Returns
    how many selectors were applied."""
    specific = blocker.engine.url_cosmetic_resources(page.url)  # any string; none: no rules
    selectors = list(specific.hide_selectors)
    if not getattr(specific, "generichide", False):  # $generichide; not in adblock's stub
        # The page answers (it can redefine what the script calls): only strings are kept,
        # as many and as long as a real page's.
        names = await page.evaluate(_DOM_NAMES_JS, MAX_DOM_NAMES)
        classes, ids = (
            (names[0], names[1]) if isinstance(names, list) and len(names) == 2 else ([], [])
        )
        selectors += blocker.engine.hidden_class_id_selectors(
            _names(classes), _names(ids), set(specific.exceptions)
        )
    if selectors:
        # One rule per selector: a selector Chromium cannot parse drops its own rule only.
        css = "\n".join(f"{selector} {{ display: none !important; }}" for selector in selectors)
        await page.add_style_tag(content=css)
    return len(selectors)


# -- cookie banners ----------------------------------------------------------------------------

_AUTOCONSENT = "vendor/autoconsent/autoconsent.standalone.js"

# Autoconsent's lifecycle (lib/types.ts LifecycleState): where it stops, where a banner was seen.
_FINISHED = frozenset(
    {"nothingDetected", "done", "optOutSucceeded", "optOutFailed", "optInSucceeded", "optInFailed"}
)
_FOUND = frozenset({"cmpDetected", "openPopupDetected", "runningOptOut"})
CONSENT_DETECT_SECONDS = 2.0
"""How long after load a capture waits for autoconsent to recognise a consent manager; a page
without one costs this much at most (detection itself goes on retrying for ~10 s)."""
CONSENT_OPT_OUT_SECONDS = 8.0
"""How long after load a capture waits, at most, once a consent manager was recognised, for its
opt-out steps (some open a settings dialog and untick purposes) to finish."""
_STATE_JS = """() => {
  const s = window.autoconsentStandalone;
  try { return s ? String(s.instance.state.lifecycle) : null; } catch (e) { return 'unknown'; }
}"""


@functools.cache
def autoconsent_script() -> str:
    """Autoconsent's standalone content script (its rules compiled in), run in every frame."""
    return (resources.files("kubeshot_capture") / _AUTOCONSENT).read_text(encoding="utf-8")


async def dismiss_cookie_banners(page: Page, until: float | None = None) -> str:
    """Let autoconsent finish with the page's consent banner; returns its last lifecycle state.

    The script was added to the context before navigation (so it runs in frames and hides
    banners early); a document it never ran in (html input, written into about:blank) gets it
    now. Bounded: CONSENT_DETECT_SECONDS without a consent manager, CONSENT_OPT_OUT_SECONDS with
    one, and never past `until` (the event loop's clock: the end of the capture's time to
    prepare). The page can tamper with the state it reports, which only shortens or lengthens
    its own wait within those bounds.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    if await page.evaluate(_STATE_JS) is None:
        await page.evaluate(autoconsent_script())
    while True:
        answer = await page.evaluate(_STATE_JS)
        state = answer if isinstance(answer, str) else "unknown"
        if state in _FINISHED:
            return state
        limit = CONSENT_OPT_OUT_SECONDS if state in _FOUND else CONSENT_DETECT_SECONDS
        now = loop.time()
        if now - started >= limit or (until is not None and now >= until):
            return state
        await asyncio.sleep(0.1)


def main() -> None:
    """`python -m kubeshot_capture.blocklists --write PATH`: compile the installed lists into
    PATH, which `ad_blocker` then loads instead of compiling (see ENGINE_CACHE_ENV)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--write", type=Path, required=True)
    args = parser.parse_args()
    blocker = write_engine_cache(filter_lists_dir(), args.write)
    print(f"{args.write}: {len(blocker.lists)} lists in {blocker.compile_seconds:.2f} s")


if __name__ == "__main__":
    main()
