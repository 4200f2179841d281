"""Capture options: one model for the CRD, the gateway, the CLI and the capture pod."""

from __future__ import annotations

import re
import zoneinfo
from enum import StrEnum
from functools import cache
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator, model_validator

from kubeshot.api._base import Model

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
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
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
    return frozenset(zoneinfo.available_timezones())


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


class PdfOptions(Model):
    """PDF output options (format pdf only)."""

    format: PaperFormat = PaperFormat.A4
    """Paper size."""
    landscape: bool = False
    """Landscape orientation."""
    print_background: bool = True
    """Print background colours and images."""
    scale: float = Field(default=1.0, ge=0.1, le=2.0)
    """Rendering scale."""
    page_ranges: str | None = Field(
        default=None, max_length=256, pattern=r"^\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$"
    )
    """Pages to print, e.g. "1-3, 5"."""


HeaderValue = Annotated[str, Field(max_length=8192)]


class CaptureOptions(Model):
    """What to capture and how. Every option is honoured or rejected; none is ignored."""

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
    device_scale_factor: float = Field(default=1.0, ge=0.1, le=4.0)
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
    locale: str | None = Field(default=None, max_length=35)
    """Browser locale, e.g. de-DE (navigator.language, Accept-Language)."""
    timezone: str | None = Field(default=None, max_length=64)
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
    """Abort requests to known ad and tracker hosts and paths."""
    hide_cookie_banners: bool = False
    """Hide common cookie-consent banners before capture."""
    pdf: PdfOptions | None = None
    """PDF options (format pdf only)."""
    timeout_seconds: int | None = Field(default=None, ge=1, le=900)
    """Time limit of this capture; at most the policy's limit (which applies when unset)."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        return None if url is None else normalise_url(url)

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"invalid header name {name!r}")
            if name.lower() in FORBIDDEN_HEADERS:
                raise ValueError(f"header {name!r} may not be set")
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"header {name!r} has a line break or NUL in its value")
        return headers

    @field_validator("locale")
    @classmethod
    def _check_locale(cls, locale: str | None) -> str | None:
        if locale is not None and not _LOCALE.match(locale):
            raise ValueError(f"not a BCP 47 locale: {locale!r}")
        return locale

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, timezone: str | None) -> str | None:
        if timezone is not None and timezone not in _timezones():
            raise ValueError(f"unknown IANA time zone: {timezone!r}")
        return timezone

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


class CrossFieldRule:
    """A rule between fields, checked by the model and by the CRD (as CEL) alike."""

    def __init__(self, cel: str, message: str, check: object) -> None:
        self.cel = cel
        self.message = message
        self._check = check

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
)
