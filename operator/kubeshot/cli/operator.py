"""`kubeshot operator`: run the operator (CaptureJob and ScreenshotPolicy → capture pods)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "operator",
        help="run the Kubernetes operator",
        description="Reconcile CaptureJobs and ScreenshotPolicies into capture pods. "
        "Credentials: the pod's service account, else $KUBECONFIG. Other settings come from "
        "KUBESHOT_OPERATOR_* environment variables (see docs/operator.md).",
    )
    p.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="reconcile this namespace (repeatable; globs allowed, !NS excludes); "
        "default: all namespaces",
    )
    p.add_argument("--http-port", type=int, help="port of /metrics and /healthz (default 8080)")
    p.add_argument("--upload-url", help="base URL of the gateway's upload endpoint")
    p.add_argument("--capture-image", help="image of the capture pods")
    p.add_argument("-v", "--verbose", action="store_true", help="log every decision")
    p.add_argument(
        "--log-format",
        choices=["json", "text"],
        help="log lines as JSON (default) or text; else $KUBESHOT_LOG_FORMAT",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kubeshot import logs, tracing
    from kubeshot.operator import running
    from kubeshot.operator.settings import OperatorSettings

    try:
        logs.setup(
            logs.log_format(args.log_format, "json"),
            logging.DEBUG if args.verbose else logging.INFO,
        )
        tracing.setup("kubeshot-operator")
    except ValueError as exc:
        print(f"kubeshot operator: {exc}", file=sys.stderr)
        return 2
    overrides: dict[str, object] = {}
    if args.namespace:
        overrides["namespaces"] = args.namespace
    if args.http_port is not None:
        overrides["http_port"] = args.http_port
    if args.upload_url:
        overrides["upload_url"] = args.upload_url
    if args.capture_image:
        overrides["capture_image"] = args.capture_image
    settings = OperatorSettings(**overrides)  # type: ignore[arg-type]
    return asyncio.run(running.run(settings))
