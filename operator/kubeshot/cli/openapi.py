"""`kubeshot openapi`: print (or write) the gateway's OpenAPI document."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "openapi", help="print the gateway's OpenAPI document"
    )
    parser.add_argument("--write", metavar="FILE", help="write it to FILE instead of stdout")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kubeshot.gateway.openapi import openapi_text

    text = openapi_text()
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0
