"""The gateway's OpenAPI document, generated from the same pydantic models that validate.

The generated document is checked in as openapi.json (`kubeshot openapi --write ...`); a test
fails when the two differ.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from pydantic.json_schema import models_json_schema

from kubeshot.api import CaptureOptions, Format
from kubeshot.api.capture import FORBIDDEN_HEADERS, HEADER_NAME
from kubeshot.api.delivery import CaptureRequestBody
from kubeshot.gateway.models import CaptureJobView, ErrorBody, Health

CHECKED_IN = Path(__file__).with_name("openapi.json")
_REF = "#/components/schemas/{model}"


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }


_ERRORS = {
    "400": _error("Invalid request: `details` names the offending fields"),
    "401": _error("Missing, malformed or invalid token (with WWW-Authenticate)"),
    "403": _error("Blocked by policy, or a signed URL that does not verify"),
    "413": _error("Request body too large"),
    "429": _error(
        "Rate limit reached (`rate_limited`, RateLimit-* headers), or the caller already holds"
        " its share of the captures in flight (`concurrency_limited`); Retry-After either way"
    ),
    "503": _error("Overloaded, shutting down, or the capture backend unavailable (Retry-After)"),
}
_CAPTURE_ERRORS = {
    **_ERRORS,
    "408": _error("The request body did not arrive in time (`request_timeout`)"),
    "415": _error("Body is not application/json"),
    "422": _error("A resource limit was exceeded (memory, download, result size)"),
    "502": _error(
        "The page could not be captured (`capture_failed`), or the target answered with a"
        " status listed in `failOnHttpStatus` (`target_http_error`)"
    ),
    "504": _error("The capture timed out"),
}
_TEXT_HEADER = {"schema": {"type": "string"}}
_SHA256_HEADER = {"description": "SHA-256 of the artifact, hex", **_TEXT_HEADER}
_ARTIFACT = {
    "description": "The verified artifact",
    "headers": {
        "X-Kubeshot-Sha256": _SHA256_HEADER,
        "X-Kubeshot-Final-Url": {
            "description": "The target's URL after redirects (url input); characters outside"
            " printable ASCII percent-encoded",
            **_TEXT_HEADER,
        },
        "X-Kubeshot-Http-Status": {
            "description": "HTTP status of the target's final response (url input)",
            "schema": {"type": "integer"},
        },
        "X-Kubeshot-Title": {
            "description": "The page's title, percent-encoded UTF-8 (`%` included): decode"
            " with decodeURIComponent or urllib.parse.unquote",
            **_TEXT_HEADER,
        },
        "X-Kubeshot-Partial": {
            "description": "`true` for a bestAttempt capture that timed out; absent otherwise",
            **_TEXT_HEADER,
        },
    },
    "content": {
        f.content_type.split(";")[0]: {"schema": {"type": "string", "format": "binary"}}
        for f in Format
    },
}
_POLICY_PARAM = {
    "name": "policy",
    "in": "query",
    "required": False,
    "description": "ScreenshotPolicy to capture under (`default` when absent)",
    "schema": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"},
}
_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
}


# A URL of this form passes the model's URL check (http or https, no credentials, a host name of
# at most three labels or a dotted IPv4 address, a port under 10000); the check also takes some
# that do not match (internationalised hosts, IPv6), which a client sends at its own risk.
_LABEL = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
URL_PATTERN = (
    rf"^[Hh][Tt][Tt][Pp][Ss]?://(({_LABEL}\.){{0,2}}{_LABEL}|([0-9]{{1,3}}\.){{3}}[0-9]{{1,3}})"
    r"(:[0-9]{1,4})?([/?][!-\[\]-~]*)?$"
)


def _client_rules(options: dict[str, Any]) -> dict[str, Any]:
    """The rules of CaptureOptions that the CRD cannot carry (propertyNames) or states less
    strictly, added to its schema in this document."""
    properties = options["properties"]
    properties["url"]["anyOf"][0]["pattern"] = URL_PATTERN
    forbidden = "|".join(
        "".join(f"[{c.upper()}{c}]" if c.isalpha() else c for c in name)
        for name in sorted(FORBIDDEN_HEADERS)
    )
    properties["headers"]["propertyNames"] = {
        "pattern": HEADER_NAME.pattern,
        "not": {"pattern": f"^({forbidden})$"},
    }
    return options


def _signed_query_parameters(options_schema: dict[str, Any]) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for name, prop in options_schema["properties"].items():
        if (
            "$ref" in prop
            or prop.get("type") in {"object", "array"}
            or ("anyOf" in prop and any("$ref" in p for p in prop["anyOf"]))
        ):
            schema: dict[str, Any] = {"type": "string", "description": "JSON, or dotted fields"}
        else:
            schema = {k: v for k, v in prop.items() if k not in {"title", "description"}}
        params.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": prop.get("description", ""),
                "schema": schema,
            }
        )
    params.append(_POLICY_PARAM)
    params += [
        {
            "name": "expires",
            "in": "query",
            "required": True,
            "schema": {"type": "integer"},
            "description": "Unix time after which the URL is refused",
        },
        {
            "name": "keyId",
            "in": "query",
            "required": True,
            "schema": {"type": "string"},
            "description": "Id of the signing key",
        },
        {
            "name": "signature",
            "in": "query",
            "required": True,
            "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "description": "HMAC-SHA256 of GET, the path and the canonical query, hex",
        },
    ]
    return params


def json_ok(ref: str, text: str) -> dict[str, Any]:
    return {
        "description": text,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


@cache
def _document() -> str:
    _, schemas = models_json_schema(
        [
            (CaptureOptions, "validation"),
            (CaptureRequestBody, "validation"),
            (ErrorBody, "serialization"),
            (CaptureJobView, "serialization"),
            (Health, "serialization"),
        ],
        by_alias=True,
        ref_template=_REF,
    )
    components = schemas["$defs"]
    _client_rules(components["CaptureOptions"])
    _client_rules(components["CaptureRequestBody"])
    components["Webhook"]["properties"]["url"]["pattern"] = URL_PATTERN
    bearer: list[dict[str, list[str]]] = [{"bearerAuth": []}]
    body, async_body = (
        {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=name)}}},
        }
        for name in ("CaptureOptions", "CaptureRequestBody")
    )
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "kubeshot gateway",
            "version": "v1",
            "description": "Capture web pages safely. Every error is "
            '`{"error": {"code", "message", "details"}}`.',
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/v1/screenshot": {
                "post": {
                    "operationId": "screenshot",
                    "summary": "Capture synchronously; the answer is the artifact",
                    "security": bearer,
                    "parameters": [_POLICY_PARAM],
                    "requestBody": body,
                    "responses": {"200": _ARTIFACT, **_CAPTURE_ERRORS},
                },
                "get": {
                    "operationId": "screenshotSigned",
                    "summary": "Capture through a signed URL (`kubeshot sign`), no token",
                    "security": [],
                    "parameters": _signed_query_parameters(components["CaptureOptions"]),
                    "responses": {"200": _ARTIFACT, **_CAPTURE_ERRORS},
                },
            },
            "/v1/captures": {
                "post": {
                    "operationId": "createCapture",
                    "summary": "Accept a capture to run in the background",
                    "security": bearer,
                    "parameters": [_POLICY_PARAM],
                    "requestBody": async_body,
                    "responses": {"202": json_ok("CaptureJobView", "Accepted"), **_CAPTURE_ERRORS},
                }
            },
            "/v1/captures/{job_id}": {
                "get": {
                    "operationId": "getCapture",
                    "summary": "Status of a background capture",
                    "security": bearer,
                    "parameters": [_JOB_ID],
                    "responses": {
                        "200": json_ok("CaptureJobView", "The capture"),
                        "404": _error("No such capture (or not yours)"),
                        **_ERRORS,
                    },
                }
            },
            "/v1/captures/{job_id}/artifact": {
                "get": {
                    "operationId": "getCaptureArtifact",
                    "summary": "Download the artifact of a finished capture",
                    "security": bearer,
                    "parameters": [_JOB_ID],
                    "responses": {
                        "200": _ARTIFACT,
                        "307": {
                            "description": "KUBESHOT_STORE_DOWNLOAD=presigned: the artifact is"
                            " at `Location`, a presigned GET of the S3 bucket valid 5 minutes"
                            " (follow it without the token)",
                            "headers": {
                                "Location": {"description": "The presigned GET", **_TEXT_HEADER},
                                "X-Kubeshot-Sha256": _SHA256_HEADER,
                            },
                        },
                        "404": _error("No such capture, or its artifact expired"),
                        "409": _error("Not finished, or failed (`details` says why)"),
                        **_ERRORS,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "security": [],
                    "responses": {"200": json_ok("Health", "Alive")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "security": [],
                    "responses": {
                        "200": json_ok("Health", "A worker can take a capture"),
                        "503": json_ok("Health", "Not ready"),
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "This document",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def openapi_text() -> str:
    """The document as it is checked in."""
    return _document()


def openapi_document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(_document())
    return loaded
