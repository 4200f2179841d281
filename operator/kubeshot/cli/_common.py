"""Helpers shared by subcommands."""

from __future__ import annotations

import sys


def fail(code: int, message: str) -> int:
    print(f"kubeshot: {message}", file=sys.stderr)
    return code
