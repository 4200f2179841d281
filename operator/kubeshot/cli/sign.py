"""`kubeshot sign`: print a signed /v1/screenshot URL for a query (URL_SIGNING_SECRET)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sign",
        help="print a signed /v1/screenshot URL",
        description="Sign a capture query with URL_SIGNING_SECRET (its first key) and print the "
        "URL, e.g. kubeshot sign --base-url https://shots.example.com 'url=https://example.com'.",
    )
    parser.add_argument("--base-url", required=True, help="the gateway, e.g. https://shots.corp")
    parser.add_argument(
        "--expires-in",
        type=int,
        default=3600,
        metavar="SECONDS",
        help="validity in seconds (default 3600; at most SIGNED_URL_MAX_TTL)",
    )
    parser.add_argument("query", metavar="QUERY", help="capture options: url=...&format=...")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from urllib.parse import parse_qsl

    from pydantic import ValidationError

    from kubeshot.gateway.errors import ApiError
    from kubeshot.gateway.settings import Settings
    from kubeshot.gateway.signing import SIGNED_PATH, UrlSigner
    from kubeshot.gateway.validation import options_from_query

    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"kubeshot sign: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if settings.url_signing_secret is None:
        print("kubeshot sign: URL_SIGNING_SECRET is not set", file=sys.stderr)
        return 2
    try:
        params = parse_qsl(args.query.lstrip("?"), keep_blank_values=True, strict_parsing=True)
    except ValueError:
        print("kubeshot sign: QUERY must look like url=...&format=...", file=sys.stderr)
        return 2
    try:
        options_from_query(params)  # the gateway would refuse it: say so now
    except ApiError as exc:
        print(f"kubeshot sign: {exc.message}", file=sys.stderr)
        return 2
    try:
        signer = UrlSigner.from_secret(
            settings.url_signing_secret.get_secret_value(), settings.signed_url_max_ttl
        )
        query = signer.signed_query(params, args.expires_in)
    except ValueError as exc:
        print(f"kubeshot sign: {exc}", file=sys.stderr)
        return 2
    print(f"{args.base_url.rstrip('/')}{SIGNED_PATH}?{query}")
    return 0
