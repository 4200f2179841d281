"""Credentials never reach a log line: signatures, tokens, passwords, Authorization values.

Two layers. The access log writes request targets with the values of credential parameters
masked (`signature=***`) and no headers. And every log record of the process, whoever logs it
and whichever handler prints it, passes `redact()` when it is created (a LogRecord factory): the
patterns below plus the literal secrets of the running gateway (AUTH_TOKEN, the signing keys,
PROXY_PASSWORD).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, RequestKey, StreamResponse

MASK = "***"
# Query parameters whose value is a credential. `keyId` and `expires` of a signed URL are not.
CREDENTIAL_PARAMS = (
    "signature",
    "sig",
    "token",
    "access_token",
    "id_token",
    "refresh_token",
    "auth",
    "api_key",
    "apikey",
    "api-key",
    "key",
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
)
# Header-like names whose value is a credential, in `Name: value`, `name=value` or JSON form.
CREDENTIAL_NAMES = (
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "x-auth-token",
    "api-key",
    "cookie",
    "set-cookie",
    "password",
    "passwd",
    "secret",
    "token",
    "access_token",
    "auth_token",
    "url_signing_secret",
    "proxy_password",
    "client_secret",
    "signature",
)
_names = "|".join(re.escape(n) for n in CREDENTIAL_PARAMS)
_QUERY = re.compile(rf"(?i)([?&;](?:{_names})=)[^&#;\s\"'<>]*")
_fields = "|".join(re.escape(n) for n in sorted(CREDENTIAL_NAMES, key=len, reverse=True))
_FIELD = re.compile(
    rf"(?i)(?<![\w-])([\"']?(?:{_fields})[\"']?\s*[:=]\s*[\"']?)"
    r"(?!\*\*\*)[^\"'\r\n,;&}]+"
)
# Bearer tokens, and Basic credentials (base64 with a digit, `+`, `/` or `=`: "Basic checks"
# is English).
_SCHEME = re.compile(
    r"\b(Bearer|bearer|BEARER)\s+(?!\*\*\*)[A-Za-z0-9._~+/=-]+"
    r"|\b(Basic|basic)\s+(?=[A-Za-z0-9+/]*[0-9+/=])[A-Za-z0-9+/]+=*"
)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@\"']*:)[^@\s/\"']*@")

# A request's log context (request id, identity, policy, job, trace ids), kept by the gateway's
# first middleware: the access line is written after the request's own scope has ended.
LOG_CONTEXT = RequestKey("log_context", dict[str, str])

_lock = threading.Lock()
_secrets: set[str] = set()
_installed = False
# Shorter literals would mask ordinary words; real secrets here are >= 16 characters.
MIN_SECRET_LENGTH = 8


def redact(text: str) -> str:
    """`text` with every credential it carries replaced by `***`."""
    if not text:
        return text
    text = _USERINFO.sub(rf"\g<1>{MASK}@", text)
    text = _QUERY.sub(rf"\g<1>{MASK}", text)
    text = _FIELD.sub(rf"\g<1>{MASK}", text)
    text = _SCHEME.sub(lambda m: f"{m.group(1) or m.group(2)} {MASK}", text)
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_target(target: str) -> str:
    """A request target (`/path?query`) with the values of credential parameters masked."""
    return _QUERY.sub(rf"\g<1>{MASK}", target) if "?" in target else target


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: logging reports it when the record is emitted
        return
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        cleaned = redact(text)
        if cleaned != text:
            record.exc_text = cleaned
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def install(secrets: Iterable[str] = ()) -> None:
    """Redact every log record of this process from now on, and these literal secrets too.

    The factory is process-wide (log records are): installing twice adds secrets only.
    """
    global _installed
    with _lock:
        _secrets.update(s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH)
        if _installed:
            return
        previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


class AccessLogger(AbstractAccessLogger):
    """One line per request: client, request line (credentials masked), status, size, time.

    No headers: Authorization, cookies and Referer (which may hold a signed URL) stay out.
    The request's log context and the same facts go on the record as fields (JSON logs).
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        fields = {
            **request.get(LOG_CONTEXT, {}),
            "client": request.remote or "-",
            "method": request.method,
            "path": redact_target(request.raw_path),
            "status": response.status,
            "bytes": response.body_length,
            "duration_seconds": round(time, 6),
        }
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.3fs',
            request.remote or "-",
            request.method,
            redact_target(request.raw_path),
            request.version.major,
            request.version.minor,
            response.status,
            response.body_length,
            time,
            extra=fields,
        )
