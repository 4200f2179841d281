"""Finding and launching Chromium."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

NO_SANDBOX = "KUBESHOT_NO_SANDBOX"
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000

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
    # Chromium merges this list with Playwright's. The last line costs CPU, changes no pixel:
    # every context is a window of its own whose omnibox popups (browser UI, never captured) load
    # WebUI pages in a renderer, and a spare renderer is started for the next navigation, which
    # the next capture's new context never uses. Together 2 of every 3 renderers Chromium started
    # per capture (docs/performance.md).
    "--disable-features=DnsOverHttps,Translate,OptimizationHints,MediaRouter,"
    "InterestFeedContentSuggestions,NetworkTimeServiceQuerying,AutofillServerCommunication,"
    "CertificateTransparencyComponentUpdater,SafeBrowsing,"
    "WebUIOmniboxPopup,WebUIOmniboxAimPopup,SpareRendererForSitePerProcess",
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


@functools.cache
def sandbox_refusal() -> str | None:
    """Why Chromium's sandbox cannot run here, or None when it can (asked once per process).

    As root Chromium refuses its sandbox. Otherwise the sandbox needs new user, PID and network
    namespaces, which kernels (user.max_user_namespaces=0, AppArmor's
    restrict_unprivileged_userns) or seccomp profiles (a container's RuntimeDefault) may refuse:
    a child process tries to create them and says how it went by its exit status.
    """
    if os.geteuid() == 0:
        return "running as root, where Chromium refuses its sandbox"
    libc = ctypes.CDLL(None, use_errno=True)
    pid = os.fork()
    if pid == 0:
        flags = _CLONE_NEWUSER | _CLONE_NEWPID | _CLONE_NEWNET
        os._exit(0 if libc.unshare(flags) == 0 else min(ctypes.get_errno(), 255) or 255)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return None
    reason = os.strerror(code) if 0 < code < 255 else f"exit status {code}"
    return f"the kernel refused new user/PID/network namespaces (unshare: {reason})"


def chromium_args() -> list[str]:
    """Launch flags. Chromium keeps its sandbox unless `KUBESHOT_NO_SANDBOX=1` or the kernel
    cannot give it the namespaces it needs; either way a warning says so, once."""
    args = list(CHROMIUM_ARGS)
    if os.environ.get(NO_SANDBOX) == "1":
        _warn_once(f"{NO_SANDBOX}=1")
        args.append("--no-sandbox")
    elif (refusal := sandbox_refusal()) is not None:
        _warn_once(refusal)
        args.append("--no-sandbox")
    return args


@functools.cache
def _warn_once(why: str) -> None:
    log.warning("Chromium runs without its sandbox (--no-sandbox): %s", why)
