"""Ad/tracker blocking and cookie-banner hiding: small curated lists, honoured or not offered."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

AD_HOST_SUFFIXES = (
    "doubleclick.net",
    "googlesyndication.com",
    "googleadservices.com",
    "google-analytics.com",
    "googletagmanager.com",
    "googletagservices.com",
    "adservice.google.com",
    "adnxs.com",
    "adsrvr.org",
    "advertising.com",
    "amazon-adsystem.com",
    "criteo.com",
    "criteo.net",
    "outbrain.com",
    "taboola.com",
    "scorecardresearch.com",
    "quantserve.com",
    "moatads.com",
    "pubmatic.com",
    "rubiconproject.com",
    "openx.net",
    "casalemedia.com",
    "yieldmo.com",
    "adform.net",
    "smartadserver.com",
    "hotjar.com",
    "facebook.net",
    "ads-twitter.com",
    "bat.bing.com",
    "media.net",
)
AD_PATH = re.compile(
    r"(^|[/_.-])(ads?|adserver|adservice|advert(isement)?s?|banners?|pagead|doubleclick|"
    r"prebid|adsbygoogle|tracking|analytics)([/_.-]|$)",
    re.IGNORECASE,
)

COOKIE_BANNER_SELECTORS = (
    "#onetrust-banner-sdk",
    "#onetrust-consent-sdk",
    "#CybotCookiebotDialog",
    "#cookiebanner",
    "#cookie-banner",
    "#cookie-notice",
    "#cookie-law-info-bar",
    "#gdpr-cookie-notice",
    "#usercentrics-root",
    "#didomi-host",
    "#truste-consent-track",
    "#qc-cmp2-container",
    ".cc-window",
    ".cc-banner",
    ".cookie-banner",
    ".cookie-consent",
    ".cookie-notice",
    ".cookieconsent",
    ".fc-consent-root",
    ".osano-cm-window",
    "[id^='sp_message_container']",
    "[aria-label='cookieconsent']",
    "[class*='cookie-consent']",
    "[id*='cookie-consent']",
)
COOKIE_BANNER_CSS = (
    ",\n".join(COOKIE_BANNER_SELECTORS)
    + " { display: none !important; visibility: hidden !important; }\n"
    + "html, body { overflow: auto !important; }\n"
)


def is_ad_request(url: str) -> bool:
    """Whether a request goes to a known ad/tracker host or an ad-like path."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if any(host == s or host.endswith("." + s) for s in AD_HOST_SUFFIXES):
        return True
    return bool(AD_PATH.search(parts.path))
