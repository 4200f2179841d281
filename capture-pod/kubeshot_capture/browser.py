"""Finding and launching Chromium."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Debian's Chromium binary itself: its /usr/bin/chromium wrapper sources /etc/chromium.d, which
# sets Google API keys (and with them background requests to Google) and extra flags.
DEBIAN_CHROMIUM = "/usr/lib/chromium/chromium"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
# Flags that keep Chromium from phoning home or opening UDP paths the egress guard cannot see.
CHROMIUM_ARGS = (
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-breakpad",
    # The crash handler double-forks away from the browser and would outlive every capture.
    "--disable-crash-reporter",
    "--disable-domain-reliability",
    "--metrics-recording-only",
    "--no-default-browser-check",
    # Playwright merges this list with its own.
    "--disable-features=DnsOverHttps,Translate,OptimizationHints,MediaRouter,"
    "InterestFeedContentSuggestions,NetworkTimeServiceQuerying,AutofillServerCommunication,"
    "CertificateTransparencyComponentUpdater,SafeBrowsing",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--webrtc-ip-handling-policy=disable_non_proxied_udp",
)


def chromium_executable() -> str | None:
    """The Chromium binary to drive: $KUBESHOT_CHROMIUM, else Debian's, else Playwright's own.

    None means "let Playwright use the browser it manages" (`playwright install chromium`), the
    fallback for machines without a system Chromium.
    """
    configured = os.environ.get("KUBESHOT_CHROMIUM")
    if configured:
        if not Path(configured).is_file():
            raise FileNotFoundError(f"KUBESHOT_CHROMIUM={configured} does not exist")
        return configured
    candidates = (DEBIAN_CHROMIUM, DEFAULT_CHROMIUM, shutil.which("chromium"))
    for candidate in (*candidates, shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def chromium_args() -> list[str]:
    """Launch flags. The sandbox needs user namespaces, unavailable when running as root here."""
    args = list(CHROMIUM_ARGS)
    if os.geteuid() == 0 or os.environ.get("KUBESHOT_NO_SANDBOX") == "1":
        args.append("--no-sandbox")
    return args
