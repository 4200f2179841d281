"""Helpers shared by subcommands: policy files, one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from kubeshot.api import ScreenshotPolicy


def load_policies(paths: list[str]) -> list[ScreenshotPolicy]:
    """ScreenshotPolicy documents from YAML files (several documents per file allowed)."""
    policies = []
    for path in paths:
        text = Path(path).read_text(encoding="utf-8")
        for document in yaml.safe_load_all(text):
            if document is not None:
                policies.append(ScreenshotPolicy.model_validate(document))
    return policies


def describe_validation_error(exc: ValidationError) -> str:
    """A pydantic error in one line, naming the offending field by its wire name."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "input"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def fail(code: int, message: str) -> int:
    print(f"kubeshot: {message}", file=sys.stderr)
    return code
