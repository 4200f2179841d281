"""One error vocabulary, from engine exit code to CaptureJob status to HTTP error code."""

from __future__ import annotations

import ipaddress
import re
from enum import IntEnum, StrEnum
from urllib.parse import urlsplit


class ExitCode(IntEnum):
    """Exit codes of `kubeshot capture` and of the capture pod."""

    OK = 0
    INTERNAL = 1
    INVALID_INPUT = 2
    BLOCKED = 3
    CAPTURE_FAILED = 4
    RESOURCE_LIMIT = 5


class FailureReason(StrEnum):
    """Why a capture failed. A closed set: CaptureJob `status.failure.reason` is one of these."""

    INVALID_SPEC = "InvalidSpec"
    POLICY_NOT_FOUND = "PolicyNotFound"
    POLICY_VIOLATION = "PolicyViolation"
    BLOCKED_BY_POLICY = "BlockedByPolicy"
    NAVIGATION_FAILED = "NavigationFailed"
    TARGET_HTTP_ERROR = "TargetHttpError"
    TIMEOUT = "Timeout"
    MEMORY_LIMIT_EXCEEDED = "MemoryLimitExceeded"
    DOWNLOAD_LIMIT_EXCEEDED = "DownloadLimitExceeded"
    RESULT_TOO_LARGE = "ResultTooLarge"
    POD_LOST = "PodLost"
    INTERNAL = "Internal"

    @property
    def exit_code(self) -> ExitCode:
        return _EXIT_CODES[self]

    @property
    def http_status(self) -> int:
        return _HTTP[self][0]

    @property
    def error_code(self) -> str:
        """The `error.code` of the gateway's JSON errors."""
        return _HTTP[self][1]

    @property
    def retriable(self) -> bool:
        """Whether another attempt may succeed (the operator retries these, with backoff)."""
        return self in {FailureReason.POD_LOST, FailureReason.INTERNAL}

    @classmethod
    def from_exit_code(cls, code: int) -> FailureReason:
        """The reason an engine exit code stands for when no termination message says more."""
        by_code: dict[int, FailureReason] = {
            ExitCode.INVALID_INPUT: cls.INVALID_SPEC,
            ExitCode.BLOCKED: cls.BLOCKED_BY_POLICY,
            ExitCode.CAPTURE_FAILED: cls.NAVIGATION_FAILED,
            ExitCode.RESOURCE_LIMIT: cls.DOWNLOAD_LIMIT_EXCEEDED,
        }
        return by_code.get(code, cls.INTERNAL)


_EXIT_CODES: dict[FailureReason, ExitCode] = {
    FailureReason.INVALID_SPEC: ExitCode.INVALID_INPUT,
    FailureReason.POLICY_NOT_FOUND: ExitCode.INVALID_INPUT,
    FailureReason.POLICY_VIOLATION: ExitCode.BLOCKED,
    FailureReason.BLOCKED_BY_POLICY: ExitCode.BLOCKED,
    FailureReason.NAVIGATION_FAILED: ExitCode.CAPTURE_FAILED,
    FailureReason.TARGET_HTTP_ERROR: ExitCode.CAPTURE_FAILED,
    FailureReason.TIMEOUT: ExitCode.CAPTURE_FAILED,
    FailureReason.MEMORY_LIMIT_EXCEEDED: ExitCode.RESOURCE_LIMIT,
    FailureReason.DOWNLOAD_LIMIT_EXCEEDED: ExitCode.RESOURCE_LIMIT,
    FailureReason.RESULT_TOO_LARGE: ExitCode.RESOURCE_LIMIT,
    FailureReason.POD_LOST: ExitCode.CAPTURE_FAILED,
    FailureReason.INTERNAL: ExitCode.INTERNAL,
}

_HTTP: dict[FailureReason, tuple[int, str]] = {
    FailureReason.INVALID_SPEC: (400, "invalid_request"),
    FailureReason.POLICY_NOT_FOUND: (403, "blocked_by_policy"),
    FailureReason.POLICY_VIOLATION: (403, "blocked_by_policy"),
    FailureReason.BLOCKED_BY_POLICY: (403, "blocked_by_policy"),
    FailureReason.NAVIGATION_FAILED: (502, "capture_failed"),
    # The target answered, with a status the caller chose to treat as a failure
    # (`failOnHttpStatus`): a bad answer from upstream, as 502 says, with a code of its own.
    FailureReason.TARGET_HTTP_ERROR: (502, "target_http_error"),
    FailureReason.TIMEOUT: (504, "timeout"),
    FailureReason.MEMORY_LIMIT_EXCEEDED: (422, "resource_limit"),
    FailureReason.DOWNLOAD_LIMIT_EXCEEDED: (422, "resource_limit"),
    FailureReason.RESULT_TOO_LARGE: (422, "resource_limit"),
    FailureReason.POD_LOST: (503, "unavailable"),
    FailureReason.INTERNAL: (500, "internal"),
}


class CaptureError(Exception):
    """A capture that did not produce a verified artifact, with the reason users see."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"


_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w])")
_V6 = r"(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}"
_IPV6 = re.compile(rf"\[{_V6}\]|(?<![\w:]){_V6}(?![\w:])")


def redact_addresses(message: str, keep: str = "") -> str:
    """Replace IP addresses in an engine message by `[address]`, except those the caller wrote
    in `keep` (their own URL): where a name resolved inside our network is not theirs to learn.

    Every boundary that hands a failure message to a caller applies it: the gateway's answers
    and the capture pod's termination message (read by whoever may read the CaptureJob)."""

    named = _named_address(keep)

    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        try:
            address = ipaddress.ip_address(text.strip("[]"))
        except ValueError:
            return text
        return text if address == named else "[address]"

    return _IPV6.sub(replace, _IPV4.sub(replace, message))


def _named_address(url: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a URL names as its host (compared as an address, never as a substring)."""
    try:
        host = urlsplit(url).hostname
        return ipaddress.ip_address(host) if host else None
    except ValueError:
        return None
