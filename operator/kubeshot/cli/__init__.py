"""The one `kubeshot` entry point. Each subcommand is a module with `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from kubeshot import __version__

# Subcommand modules import their heavy dependencies inside their run function, so that
# `kubeshot capture` never loads the gateway or the operator.
SUBCOMMANDS = ("capture", "serve", "sign", "operator", "crds", "openapi")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubeshot",
        description="Capture web pages (PNG, JPEG, WebP, PDF, HTML) safely, standalone or on "
        "Kubernetes.",
    )
    parser.add_argument(
        "--version", action="version", version=f"kubeshot {__version__}", help="print the version"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"kubeshot.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


def console() -> None:
    """Console-script entry point."""
    sys.exit(main())
