"""The gateway's errors: raised anywhere, turned into `{"error": {...}}` by one middleware."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubeshot.api import CaptureError


class ApiError(Exception):
    """An HTTP error answer: status, machine-readable code, message and optional details."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    @classmethod
    def from_capture_error(cls, error: CaptureError) -> ApiError:
        return cls(
            error.reason.http_status,
            error.reason.error_code,
            error.message,
            {"reason": error.reason.value},
        )


def unauthorized(message: str, error: str = "invalid_token") -> ApiError:
    """401 with the RFC 6750 challenge."""
    return ApiError(
        401,
        "unauthorized",
        message,
        headers={"WWW-Authenticate": f'Bearer realm="kubeshot", error="{error}"'},
    )


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def invalid(message: str, details: Any = None) -> ApiError:
    return ApiError(400, "invalid_request", message, details)


def overloaded(message: str, retry_after: int = 1) -> ApiError:
    return ApiError(503, "overloaded", message, headers={"Retry-After": str(retry_after)})
