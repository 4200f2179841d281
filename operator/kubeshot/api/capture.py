"""Capture options: one model for the CRD, the gateway, the CLI and the capture pod."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import ConfigDict, Field, field_validator, model_validator

from kubeshot.api._base import Model
from kubeshot.api.devices import MAX_DEVICE_NAME_LENGTH, devices, find_device

MAX_URL_LENGTH = 2048
MAX_SCRIPT_BYTES = 64 * 1024
MAX_HTML_BYTES = 1024 * 1024
MAX_HEADERS = 32
MAX_COOKIES = 50
MAX_VIEWPORT_SIDE = 16384
ALLOWED_SCHEMES = frozenset({"http", "https"})
# Headers the browser or the egress guard own; a caller setting them could smuggle requests or
# credentials past the guard.
FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "connection",
        "content-length",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "cookie",
        "expect",
    }
)
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class Format(StrEnum):
    """Output format."""

    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"
    PDF = "pdf"
    HTML = "html"

    @property
    def content_type(self) -> str:
        return {
            "png": "image/png",
            "jpeg": "image/jpeg",
            "webp": "image/webp",
            "pdf": "application/pdf",
            "html": "text/html; charset=utf-8",
        }[self.value]

    @property
    def is_image(self) -> bool:
        return self in {Format.PNG, Format.JPEG, Format.WEBP}


class WaitUntil(StrEnum):
    """When navigation counts as finished."""

    LOAD = "load"
    DOMCONTENTLOADED = "domcontentloaded"
    NETWORKIDLE = "networkidle"


class PaperFormat(StrEnum):
    """PDF paper size."""

    LETTER = "Letter"
    LEGAL = "Legal"
    TABLOID = "Tabloid"
    LEDGER = "Ledger"
    A0 = "A0"
    A1 = "A1"
    A2 = "A2"
    A3 = "A3"
    A4 = "A4"
    A5 = "A5"
    A6 = "A6"


def normalise_domain(domain: str) -> str:
    """A domain in its ASCII (IDNA) lower-case form, without a trailing dot; ValueError if bad."""
    text = domain.strip().rstrip(".").lower()
    if not text:
        raise ValueError("empty domain")
    try:
        ascii_form = text.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"not a valid domain name: {domain!r}") from exc
    labels = ascii_form.split(".")
    if len(ascii_form) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"not a valid domain name: {domain!r}")
    return ascii_form


def normalise_url(url: str) -> str:
    """A target URL checked and normalised: http(s) only, no credentials, IDNA host.

    This is input validation. Whether the host may be reached is the egress guard's decision.
    """
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"URL longer than {MAX_URL_LENGTH} characters")
    if any(c in url for c in "\\\r\n\t\0") or url != url.strip():
        raise ValueError("URL contains whitespace, control characters or backslashes")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise ValueError(f"URL scheme must be http or https, not {parts.scheme or 'none'!r}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("URL must not carry credentials")
    host = parts.hostname
    if not host:
        raise ValueError("URL has no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"URL port is invalid: {exc}") from exc
    if host.startswith("[") or ":" in host:
        netloc_host = f"[{host}]"
    elif re.fullmatch(r"[0-9a-fA-FxX.]+", host):
        netloc_host = host.lower()  # numeric spellings: the guard decodes and classifies them
    else:
        netloc_host = normalise_domain(host)
    netloc = netloc_host if port is None else f"{netloc_host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


@cache
def _timezones() -> frozenset[str]:
    """The zones of the pinned tzdata package (its `zones` list): not the host's zoneinfo, so
    the schema, the CRDs and every image accept the same names."""
    listed = resources.files("tzdata").joinpath("zones").read_text(encoding="utf-8")
    return frozenset(listed.split())


def _enum_schema(values: Callable[[], Iterable[str]]) -> Callable[[dict[str, Any]], None]:
    """A json_schema_extra naming every accepted value (the time zones and devices of this
    build), so that a client generated from the schema offers exactly those."""
    return lambda schema: schema.update(enum=sorted(values()))


class Viewport(Model):
    """Browser viewport in CSS pixels."""

    width: int = Field(default=1280, ge=1, le=MAX_VIEWPORT_SIDE)
    """Viewport width in CSS pixels."""
    height: int = Field(default=720, ge=1, le=MAX_VIEWPORT_SIDE)
    """Viewport height in CSS pixels."""


class Cookie(Model):
    """A cookie set before navigation."""

    name: str = Field(min_length=1, max_length=256, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
    """Cookie name."""
    value: str = Field(max_length=4096, pattern=r"^[^;\r\n\x00]*$")
    """Cookie value."""
    domain: str | None = Field(default=None, max_length=253)
    """Cookie domain; the target URL's host when unset."""
    path: str = Field(default="/", max_length=1024)
    """Cookie path."""
    secure: bool = False
    """Send only over HTTPS."""
    http_only: bool = False
    """Hide from page scripts."""
    same_site: str | None = Field(default=None, pattern="^(Strict|Lax|None)$")
    """SameSite attribute."""


class Geolocation(Model):
    """Emulated geolocation (the geolocation permission is granted with it)."""

    latitude: float = Field(ge=-90, le=90)
    """Latitude in degrees."""
    longitude: float = Field(ge=-180, le=180)
    """Longitude in degrees."""
    accuracy: float = Field(default=10, ge=0, le=100000)
    """Accuracy in metres."""


class MediaType(StrEnum):
    """CSS media type a page is rendered with."""

    SCREEN = "screen"
    PRINT = "print"


class ColorScheme(StrEnum):
    """Emulated prefers-color-scheme."""

    LIGHT = "light"
    DARK = "dark"
    NO_PREFERENCE = "no-preference"


class ReducedMotion(StrEnum):
    """Emulated prefers-reduced-motion."""

    REDUCE = "reduce"
    NO_PREFERENCE = "no-preference"


# PDF layout. Lengths are CSS lengths in the units Chromium's printing takes; a page is at most
# 200 inches a side (14400 points, the PDF format's own limit).
MAX_PDF_TEMPLATE_BYTES = 16 * 1024
MAX_PAGE_SIDE_INCHES = 200.0
CssLength = Annotated[str, Field(max_length=16, pattern=r"^\d{1,5}(\.\d{1,4})?(px|in|cm|mm)$")]
_INCHES_PER_UNIT = {"px": 1 / 96, "in": 1.0, "cm": 1 / 2.54, "mm": 1 / 25.4}
# Chromium's (and Playwright's) paper sizes in inches, portrait.
PAPER_INCHES: dict[PaperFormat, tuple[float, float]] = {
    PaperFormat.LETTER: (8.5, 11),
    PaperFormat.LEGAL: (8.5, 14),
    PaperFormat.TABLOID: (11, 17),
    PaperFormat.LEDGER: (17, 11),
    PaperFormat.A0: (33.1, 46.8),
    PaperFormat.A1: (23.4, 33.1),
    PaperFormat.A2: (16.54, 23.4),
    PaperFormat.A3: (11.7, 16.54),
    PaperFormat.A4: (8.27, 11.7),
    PaperFormat.A5: (5.83, 8.27),
    PaperFormat.A6: (4.13, 5.83),
}
# Margin a header or footer template gets when its margin is not given: Chromium draws the
# templates inside the margins, so at 0 (the default) they would not show.
TEMPLATE_MARGIN = "1cm"


def css_inches(length: str) -> float:
    """A CssLength ("2.5cm", "96px") in inches."""
    return float(length[:-2]) * _INCHES_PER_UNIT[length[-2:]]


class PdfMargin(Model):
    """PDF page margins as CSS lengths (px, in, cm or mm)."""

    top: CssLength | None = None
    """Top margin (0 unless a headerTemplate is given: then 1cm)."""
    right: CssLength | None = None
    """Right margin (0)."""
    bottom: CssLength | None = None
    """Bottom margin (0 unless a footerTemplate is given: then 1cm)."""
    left: CssLength | None = None
    """Left margin (0)."""


class PdfOptions(Model):
    """PDF output options (format pdf only)."""

    format: PaperFormat | None = None
    """Paper size (A4 when neither format nor width and height are given)."""
    landscape: bool = False
    """Landscape orientation."""
    print_background: bool = True
    """Print background colours and images."""
    scale: float = Field(default=1.0, ge=0.1, le=2.0)
    """Rendering scale."""
    page_ranges: str | None = Field(
        default=None, max_length=256, pattern=r"^\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$"
    )
    """Pages to print, e.g. "1-3, 5"; a page past the document's end fails the capture
    (InvalidSpec)."""
    width: CssLength | None = None
    """Custom paper width, e.g. "8in" or "210mm" (with height, instead of format)."""
    height: CssLength | None = None
    """Custom paper height (with width, instead of format)."""
    margin: PdfMargin | None = None
    """Page margins; the page's content area must stay non-empty."""
    prefer_css_page_size: bool = Field(default=False, alias="preferCSSPageSize")
    """Let the page's CSS @page size win over format, width and height."""
    header_template: str | None = Field(default=None, max_length=MAX_PDF_TEMPLATE_BYTES)
    """HTML of each page's header (at most 16 KiB). Chromium fills elements of the classes
    pageNumber, totalPages, title, url and date. It is rendered without network access (images
    only as data: URLs) and without the page's styles: give it its own font-size."""
    footer_template: str | None = Field(default=None, max_length=MAX_PDF_TEMPLATE_BYTES)
    """HTML of each page's footer, like headerTemplate; e.g. `<div style="font-size:10px">Page
    <span class="pageNumber"></span> of <span class="totalPages"></span></div>`."""
    emulate_media: MediaType | None = None
    """CSS media the PDF is rendered with: print (the default) or screen."""

    @field_validator("header_template", "footer_template")
    @classmethod
    def _check_template_size(cls, template: str | None) -> str | None:
        if template is not None and len(template.encode("utf-8")) > MAX_PDF_TEMPLATE_BYTES:
            raise ValueError(f"template longer than {MAX_PDF_TEMPLATE_BYTES} bytes")
        return template

    @field_validator("page_ranges")
    @classmethod
    def _check_page_ranges(cls, ranges: str | None) -> str | None:
        for part in (ranges or "").split(","):
            if not part.strip():
                continue
            first, _, last = part.partition("-")
            start, end = int(first), int(last or first)
            if start < 1 or end < start:
                raise ValueError(f"page range {part.strip()!r} must count up from page 1")
        return ranges

    @model_validator(mode="after")
    def _check_page_box(self) -> PdfOptions:
        width, height = self.paper_inches()
        for side in (width, height):
            if not 0 < side <= MAX_PAGE_SIDE_INCHES:
                raise ValueError(f"paper width and height must be within {MAX_PAGE_SIDE_INCHES} in")
        if self.landscape:
            width, height = height, width
        margins = {side: css_inches(value) for side, value in self.margins().items()}
        if width - margins["left"] - margins["right"] <= 0:
            raise ValueError("margin left + right leave no room on the page")
        if height - margins["top"] - margins["bottom"] <= 0:
            raise ValueError("margin top + bottom leave no room on the page")
        return self

    def paper_inches(self) -> tuple[float, float]:
        """Portrait width and height in inches: width and height when given, else the format."""
        if self.width is not None and self.height is not None:
            return css_inches(self.width), css_inches(self.height)
        return PAPER_INCHES[self.format or PaperFormat.A4]

    def margins(self) -> dict[str, str]:
        """Every margin as Chromium gets it: unset ones 0, or 1cm beside a header or footer."""
        given = self.margin or PdfMargin()
        header = TEMPLATE_MARGIN if self.header_template is not None else "0px"
        footer = TEMPLATE_MARGIN if self.footer_template is not None else "0px"
        return {
            "top": given.top or header,
            "right": given.right or "0px",
            "bottom": given.bottom or footer,
            "left": given.left or "0px",
        }


HeaderValue = Annotated[
    str, Field(max_length=8192, json_schema_extra={"pattern": r"^[^\r\n\x00]*$"})
]

# The most device pixels one image capture may render (2**25: 128 MiB as RGBA, e.g. 3840x2160
# at deviceScaleFactor 2, or a 1920-wide full page 16384 tall). Chromium holds the bitmap several
# times over while it encodes it: 3840x2160 at scale 4 (133 M pixels) blows a 1Gi capture's
# memory limit and costs a worker respawn, so it is refused before any browser work.
MAX_CAPTURE_PIXELS = 2**25
# How a refusal over the pixel budget reads (the budget follows).
OVER_PIXEL_BUDGET = "device pixels, over the limit of"
PIXEL_BUDGET_RULE = (
    "an image capture renders at most a budget of device pixels (viewport x deviceScaleFactor^2,"
    f" a full page counted at the policy's maxFullPageHeight): {MAX_CAPTURE_PIXELS} unless"
    " the service sets less; a larger one is refused (400)"
)

MAX_HTTP_STATUS_RULES = 16
# Strings only, so that the CRD (a structural schema: one type per field) and the API accept the
# same documents.
HttpStatusRule = Annotated[str, Field(max_length=3, pattern=r"^[2-5]([0-9]{2}|xx)$")]


def http_status_matches(rules: list[str], status: int) -> bool:
    """Whether an HTTP status matches one of the `failOnHttpStatus` rules ("404", "4xx")."""
    code = str(status)
    return len(code) == 3 and any(rule in {code, code[0] + "xx"} for rule in rules)


# Declarative page actions: bounded so that a request cannot make a capture click or style
# without end.
MAX_SELECTOR_LENGTH = 1024
MAX_HIDE_SELECTORS = 32
MAX_CLICK_SELECTORS = 10
Selector = Annotated[str, Field(min_length=1, max_length=MAX_SELECTOR_LENGTH)]


class WaitForSelectorState(StrEnum):
    """What `waitForSelector` waits for (Playwright's element states)."""

    VISIBLE = "visible"
    HIDDEN = "hidden"
    ATTACHED = "attached"
    DETACHED = "detached"


class ClickAction(Model):
    """A click on the first element matching a CSS selector, before capture."""

    selector: Selector
    """CSS selector of the element to click."""
    optional: bool = False
    """Skip the click when nothing matches; otherwise the capture fails (NavigationFailed)."""


class Clip(Model):
    """A rectangle of the viewport, in CSS pixels."""

    x: int = Field(ge=0, le=MAX_VIEWPORT_SIDE)
    """Left edge."""
    y: int = Field(ge=0, le=MAX_VIEWPORT_SIDE)
    """Top edge."""
    width: int = Field(ge=1, le=MAX_VIEWPORT_SIDE)
    """Width."""
    height: int = Field(ge=1, le=MAX_VIEWPORT_SIDE)
    """Height."""


# CROSS_FIELD_RULES as JSON Schema, for the OpenAPI document (the CRD carries them as CEL),
# spelled as alternatives by input and by format and layout rather than one per rule, which
# schema tools would have to multiply out. The `prose` rules are named in the description only:
# JSON Schema cannot add (clip within the viewport), and schemathesis 4.32 gives up on the 44
# alternatives the other two would make of these 22. A field absent or null is unset, as in the
# model; `format` absent is png.
def _all(*schemas: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for schema in schemas:
        properties.update(schema.get("properties", {}))
        required += schema.get("required", [])
    return {"properties": properties, **({"required": required} if required else {})}


def _unset(*fields: str) -> dict[str, Any]:
    return {"properties": {f: {"type": "null"} for f in fields}}


def _set(*fields: str) -> dict[str, Any]:
    return {"required": list(fields), "properties": {f: {"not": {"type": "null"}} for f in fields}}


def _is(field: str, value: object) -> dict[str, Any]:
    return {"properties": {field: {"const": value}}}


def _format_branches(fmt: Format) -> list[dict[str, Any]]:
    rules = [
        _is("format", fmt.value)
        if fmt is Format.PNG
        else {**_is("format", fmt), "required": ["format"]},
        {} if fmt in {Format.JPEG, Format.WEBP} else _unset("quality"),
        {} if fmt is Format.PDF else _unset("pdf"),
        {} if fmt in {Format.PNG, Format.WEBP} else _is("omitBackground", False),
        {} if fmt.is_image else _is("deviceScaleFactor", 1),
        _unset("mediaType") if fmt is Format.PDF else {},
    ]
    no_page, no_scroll = _is("fullPage", False), _is("scrollToLoad", False)
    if fmt is Format.PDF:
        layouts = [_all(no_page, _unset("selector", "clip"))]
    elif fmt is Format.HTML:
        layouts = [_all(no_page, no_scroll, _unset("clip"))]
    else:
        layouts = [
            _all(_is("fullPage", True), {"required": ["fullPage"]}, _unset("selector", "clip")),
            _all(no_page, no_scroll, _unset("selector")),
            _all(no_page, no_scroll, _unset("clip")),
        ]
    return [_all(*rules, layout) for layout in layouts]


def _cross_field_schemas(schema: dict[str, Any]) -> None:
    html_only = _all(
        _set("html"),
        _unset("url"),
        {"properties": {"headers": {"maxProperties": 0}, "failOnHttpStatus": {"maxItems": 0}}},
    )
    pdf_size = {
        "anyOf": [_unset("width", "height"), _all(_set("width", "height"), _unset("format"))]
    }
    prose = "; ".join(rule.message for rule in CROSS_FIELD_RULES if rule.prose)
    schema["description"] = f"{schema['description']} Also: {prose}; {PIXEL_BUDGET_RULE}."
    schema["allOf"] = [
        {"anyOf": [_all(_set("url"), _unset("html")), html_only]},
        {"anyOf": [branch for fmt in Format for branch in _format_branches(fmt)]},
        {"properties": {"pdf": pdf_size}},
    ]


class CaptureOptions(Model):
    """What to capture and how. Every option is honoured or rejected; none is ignored."""

    model_config = ConfigDict(json_schema_extra=_cross_field_schemas)

    url: str | None = Field(default=None, max_length=MAX_URL_LENGTH)
    """Page to capture (http or https). Exactly one of url and html."""
    html: str | None = Field(default=None, max_length=MAX_HTML_BYTES)
    """HTML document to render instead of a URL. Exactly one of url and html."""
    format: Format = Format.PNG
    """Output format: png, jpeg, webp, pdf or html."""
    quality: int | None = Field(default=None, ge=1, le=100)
    """Image quality 1-100 (jpeg and webp only)."""
    full_page: bool = False
    """Capture the whole scrollable page instead of the viewport (images only)."""
    selector: str | None = Field(default=None, min_length=1, max_length=1024)
    """Capture only the first element matching this CSS selector (images and html)."""
    viewport: Viewport = Field(default_factory=Viewport)
    """Browser viewport."""
    # At most 4.5: the densest device of Playwright's list (Galaxy S9+); the pixel budget bounds
    # what a scale may cost.
    device_scale_factor: float = Field(default=1.0, ge=0.1, le=4.5)
    """Device pixel ratio: 2 gives an image twice the viewport size (images only)."""
    wait_until: WaitUntil = WaitUntil.LOAD
    """Navigation event to wait for: load, domcontentloaded or networkidle."""
    wait_for_selector: str | None = Field(default=None, min_length=1, max_length=1024)
    """Wait until an element matching this CSS selector is visible."""
    delay_ms: int = Field(default=0, ge=0, le=30000)
    """Extra wait after the page is ready, in milliseconds."""
    dark_mode: bool = False
    """Emulate prefers-color-scheme: dark."""
    omit_background: bool = False
    """Transparent background instead of white (png and webp only)."""
    user_agent: str | None = Field(default=None, min_length=1, max_length=512)
    """User-Agent header and navigator.userAgent."""
    headers: dict[str, HeaderValue] = Field(default_factory=dict, max_length=MAX_HEADERS)
    """Extra HTTP headers, sent only with requests to the target URL's origin (never to third
    parties, nor across a redirect to another origin); needs `url`."""
    cookies: list[Cookie] = Field(default_factory=list, max_length=MAX_COOKIES)
    """Cookies set before navigation."""
    locale: Annotated[str, Field(json_schema_extra={"pattern": _LOCALE.pattern})] | None = Field(
        default=None, max_length=35
    )
    """Browser locale, e.g. de-DE (navigator.language, Accept-Language)."""
    timezone: Annotated[str, Field(json_schema_extra=_enum_schema(_timezones))] | None = Field(
        default=None, max_length=64
    )
    """IANA time zone, e.g. Europe/Berlin."""
    geolocation: Geolocation | None = None
    """Emulated geolocation."""
    custom_css: str | None = Field(default=None, max_length=MAX_SCRIPT_BYTES, alias="customCSS")
    """CSS injected into the page before capture."""
    custom_java_script: str | None = Field(
        default=None, max_length=MAX_SCRIPT_BYTES, alias="customJavaScript"
    )
    """JavaScript run in the page before capture (only when the policy allows it)."""
    block_ads: bool = False
    """Abort the requests that maintained filter lists (EasyList, EasyPrivacy, uBlock) call ads
    or trackers, judged first- versus third-party, and hide the lists' ad slots."""
    hide_cookie_banners: bool = False
    """Decline cookie consent through DuckDuckGo's autoconsent rules (hides the banner, presses
    its reject button) before capture."""
    wait_for_selector_state: WaitForSelectorState = WaitForSelectorState.VISIBLE
    """What `waitForSelector` waits for: visible, hidden, attached or detached."""
    click_selectors: list[ClickAction] = Field(default_factory=list, max_length=MAX_CLICK_SELECTORS)
    """Elements to click, in order, before capture ("load more", consent buttons); needs no
    customJavaScript. Each click waits at most 5 s, then for the network to settle."""
    hide_selectors: list[Selector] = Field(default_factory=list, max_length=MAX_HIDE_SELECTORS)
    """CSS selectors of elements to hide (visibility: hidden) before capture, also elements that
    appear later; needs no customJavaScript."""
    clip: Clip | None = None
    """Capture only this rectangle of the viewport, lying within it (images; not with fullPage or
    selector)."""
    scroll_to_load: bool = False
    """Scroll through the page a viewport at a time before capture, letting lazy content load,
    then back to the top (fullPage images and pdf). Stops at the policy's maxFullPageHeight and
    in time to render within the capture's time limit."""
    best_attempt: bool = False
    """On a timeout after the page rendered something, capture what is there and report the
    result as partial, instead of failing. The last quarter of the time limit (2-10 s) is kept
    for rendering."""
    pdf: PdfOptions | None = None
    """PDF options (format pdf only)."""
    device: Annotated[str, Field(json_schema_extra=_enum_schema(devices))] | None = Field(
        default=None, min_length=1, max_length=MAX_DEVICE_NAME_LENGTH
    )
    """Emulate a device of Playwright's device list, e.g. "iPhone 13" (rendered by Chromium
    whatever its usual browser): it sets viewport, deviceScaleFactor (images only), userAgent,
    isMobile and hasTouch, each only when not given explicitly (explicit values win)."""
    is_mobile: bool | None = None
    """Mobile emulation: the page's meta viewport tag is honoured (default: the device's, else
    false). Needs a context of its own."""
    has_touch: bool | None = None
    """Touch emulation: touch events, (pointer: coarse), navigator.maxTouchPoints (default: the
    device's, else false)."""
    color_scheme: ColorScheme | None = None
    """Emulated prefers-color-scheme: light, dark or no-preference (default light; darkMode
    true means dark)."""
    reduced_motion: ReducedMotion | None = None
    """Emulated prefers-reduced-motion: reduce or no-preference."""
    media_type: MediaType | None = None
    """CSS media type of image and html captures: screen (the default) or print. For pdf see
    pdf.emulateMedia."""
    timeout_seconds: int | None = Field(default=None, ge=1, le=900)
    """Time limit of this capture; at most the policy's limit (which applies when unset)."""
    fail_on_http_status: list[HttpStatusRule] = Field(
        default_factory=list, max_length=MAX_HTTP_STATUS_RULES
    )
    """Fail with TargetHttpError when the target's final HTTP status (after redirects) matches
    one of these: a code ("404") or a class ("4xx", "5xx"), 200-599; needs `url`."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        return None if url is None else normalise_url(url)

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not HEADER_NAME.fullmatch(name):
                raise ValueError(f"invalid header name {name!r}")
            if name.lower() in FORBIDDEN_HEADERS:
                raise ValueError(f"header {name!r} may not be set")
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"header {name!r} has a line break or NUL in its value")
        return headers

    @field_validator("locale")
    @classmethod
    def _check_locale(cls, locale: str | None) -> str | None:
        if locale is not None and not _LOCALE.fullmatch(locale):
            raise ValueError(f"not a BCP 47 locale: {locale!r}")
        return locale

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, timezone: str | None) -> str | None:
        if timezone is not None and timezone not in _timezones():
            raise ValueError(f"unknown IANA time zone: {timezone!r}")
        return timezone

    @model_validator(mode="before")
    @classmethod
    def _apply_device(cls, data: Any) -> Any:
        """A device fills in the fields the caller left out: it is resolved here, once, so that
        admission and every entry point see the effective viewport and scale."""
        name = data.get("device") if isinstance(data, dict) else None
        preset = devices().get(name) if isinstance(name, str) else None
        if preset is None:  # no device, or an unknown one: `_check_device` names it
            return data
        try:
            is_image = Format(data.get("format", Format.PNG)).is_image
        except ValueError:
            is_image = False  # the format's own error is reported
        filled = dict(data)
        viewport = dict(zip(("width", "height"), preset.viewport, strict=True))
        if isinstance(data.get("viewport"), dict):  # a side left out is the device's
            filled["viewport"] = {**viewport, **data["viewport"]}
        defaults: dict[str, tuple[str, object]] = {
            "viewport": ("viewport", viewport),
            "user_agent": ("userAgent", preset.user_agent),
            "is_mobile": ("isMobile", preset.is_mobile),
            "has_touch": ("hasTouch", preset.has_touch),
        }
        if is_image:  # deviceScaleFactor applies to images only
            defaults["device_scale_factor"] = ("deviceScaleFactor", preset.device_scale_factor)
        for field, (alias, value) in defaults.items():
            if field not in data and alias not in data:
                filled[alias] = value
        return filled

    @field_validator("device")
    @classmethod
    def _check_device(cls, name: str | None) -> str | None:
        if name is not None:
            find_device(name)
        return name

    @model_validator(mode="after")
    def _check_combinations(self) -> CaptureOptions:
        for rule in CROSS_FIELD_RULES:
            if not rule.holds(self):
                raise ValueError(rule.message)
        return self

    @property
    def target(self) -> str:
        """The URL, or a short description of the HTML input, for logs and status."""
        return self.url if self.url is not None else "(html input)"

    def capture_options(self) -> CaptureOptions:
        """The options alone, without a subclass's fields (a CaptureJob's retries, a request's
        delivery): validated as this document's already, never validated again."""
        fields = CaptureOptions.model_fields
        values = {name: getattr(self, name) for name in fields}
        return CaptureOptions.model_construct(self.model_fields_set & set(fields), **values)


class CrossFieldRule:
    """A rule between fields, checked by the model and by the CRD (as CEL) alike; stated in the
    model's JSON Schema too (`_cross_field_schemas`) unless `prose` (then in its description)."""

    def __init__(self, cel: str, message: str, check: object, *, prose: bool = False) -> None:
        self.cel = cel
        self.message = message
        self._check = check
        self.prose = prose

    def holds(self, options: CaptureOptions) -> bool:
        return bool(self._check(options))  # type: ignore[operator]


CROSS_FIELD_RULES: tuple[CrossFieldRule, ...] = (
    CrossFieldRule(
        "has(self.url) != has(self.html)",
        "exactly one of url and html must be set",
        lambda o: (o.url is None) != (o.html is None),
    ),
    CrossFieldRule(
        "!has(self.quality) || (has(self.format) && self.format in ['jpeg', 'webp'])",
        "quality applies to jpeg and webp only",
        lambda o: o.quality is None or o.format in {Format.JPEG, Format.WEBP},
    ),
    CrossFieldRule(
        "!has(self.pdf) || (has(self.format) && self.format == 'pdf')",
        "pdf options apply to format pdf only",
        lambda o: o.pdf is None or o.format is Format.PDF,
    ),
    CrossFieldRule(
        "!has(self.fullPage) || !self.fullPage || !has(self.format)"
        " || self.format in ['png', 'jpeg', 'webp']",
        "fullPage applies to image formats only",
        lambda o: not o.full_page or o.format.is_image,
    ),
    CrossFieldRule(
        "!has(self.fullPage) || !self.fullPage || !has(self.selector)",
        "fullPage and selector cannot be combined",
        lambda o: not (o.full_page and o.selector is not None),
    ),
    CrossFieldRule(
        "!has(self.selector) || !has(self.format) || self.format != 'pdf'",
        "selector does not apply to pdf",
        lambda o: o.selector is None or o.format is not Format.PDF,
    ),
    CrossFieldRule(
        "!has(self.omitBackground) || !self.omitBackground || !has(self.format)"
        " || self.format in ['png', 'webp']",
        "omitBackground applies to png and webp only (jpeg has no transparency)",
        lambda o: not o.omit_background or o.format in {Format.PNG, Format.WEBP},
    ),
    CrossFieldRule(
        "!has(self.deviceScaleFactor) || self.deviceScaleFactor == 1.0"
        " || !has(self.format) || self.format in ['png', 'jpeg', 'webp']",
        "deviceScaleFactor applies to image formats only",
        lambda o: o.device_scale_factor == 1.0 or o.format.is_image,
    ),
    CrossFieldRule(
        "!has(self.headers) || size(self.headers) == 0 || has(self.url)",
        "headers apply to url input only (they are sent to the target's origin only)",
        lambda o: not o.headers or o.url is not None,
    ),
    CrossFieldRule(
        "!has(self.failOnHttpStatus) || size(self.failOnHttpStatus) == 0 || has(self.url)",
        "failOnHttpStatus applies to url input only (html input has no HTTP status)",
        lambda o: not o.fail_on_http_status or o.url is not None,
    ),
    CrossFieldRule(
        "!has(self.waitForSelectorState) || self.waitForSelectorState == 'visible'"
        " || has(self.waitForSelector)",
        "waitForSelectorState needs waitForSelector",
        lambda o: (
            o.wait_for_selector_state is WaitForSelectorState.VISIBLE
            or o.wait_for_selector is not None
        ),
        prose=True,
    ),
    CrossFieldRule(
        "!has(self.scrollToLoad) || !self.scrollToLoad || (has(self.fullPage) && self.fullPage)"
        " || (has(self.format) && self.format == 'pdf')",
        "scrollToLoad applies to fullPage image captures and to pdf",
        lambda o: not o.scroll_to_load or o.full_page or o.format is Format.PDF,
    ),
    CrossFieldRule(
        "!has(self.clip) || !has(self.format) || self.format in ['png', 'jpeg', 'webp']",
        "clip applies to image formats only",
        lambda o: o.clip is None or o.format.is_image,
    ),
    CrossFieldRule(
        "!has(self.clip) || ((!has(self.fullPage) || !self.fullPage) && !has(self.selector))",
        "clip cannot be combined with fullPage or selector",
        lambda o: o.clip is None or not (o.full_page or o.selector is not None),
    ),
    CrossFieldRule(
        # With a device the viewport is the device's (resolved by the model, which checks it).
        "!has(self.clip) || has(self.device)"
        " || (self.clip.x + self.clip.width <= (has(self.viewport)"
        f" && has(self.viewport.width) ? self.viewport.width : {Viewport().width})"
        " && self.clip.y + self.clip.height <= (has(self.viewport)"
        f" && has(self.viewport.height) ? self.viewport.height : {Viewport().height}))",
        "clip must lie within the viewport",
        lambda o: (
            o.clip is None
            or (
                o.clip.x + o.clip.width <= o.viewport.width
                and o.clip.y + o.clip.height <= o.viewport.height
            )
        ),
        prose=True,
    ),
    CrossFieldRule(
        "!has(self.darkMode) || !self.darkMode || !has(self.colorScheme)"
        " || self.colorScheme == 'dark'",
        "darkMode true means colorScheme dark: give one of them, or both alike",
        lambda o: not o.dark_mode or o.color_scheme in {None, ColorScheme.DARK},
        prose=True,
    ),
    CrossFieldRule(
        "!has(self.mediaType) || !has(self.format) || self.format != 'pdf'",
        "mediaType applies to image and html captures; for pdf use pdf.emulateMedia",
        lambda o: o.media_type is None or o.format is not Format.PDF,
    ),
    CrossFieldRule(
        "!has(self.pdf) || has(self.pdf.width) == has(self.pdf.height)",
        "pdf.width and pdf.height go together",
        lambda o: o.pdf is None or (o.pdf.width is None) == (o.pdf.height is None),
    ),
    CrossFieldRule(
        "!has(self.pdf) || !has(self.pdf.format) || !has(self.pdf.width)",
        "pdf.format and pdf.width/height cannot be combined: give a paper format or a custom size",
        lambda o: o.pdf is None or o.pdf.format is None or o.pdf.width is None,
    ),
)
