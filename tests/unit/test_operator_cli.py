"""`kubeshot operator`: flags and environment become one OperatorSettings."""

from __future__ import annotations

import pytest

from kubeshot.cli import build_parser
from kubeshot.operator.settings import OperatorSettings


def test_operator_subcommand_parses_its_flags() -> None:
    args = build_parser().parse_args(
        [
            "operator",
            "-n",
            "team-a",
            "-n",
            "team-*",
            "--http-port",
            "9090",
            "--upload-url",
            "http://gw:1/u/",
        ]
    )
    assert args.command == "operator"
    assert args.namespace == ["team-a", "team-*"]
    assert args.http_port == 9090
    assert callable(args.run)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBESHOT_OPERATOR_NAMESPACES", '["a", "b"]')
    monkeypatch.setenv(
        "KUBESHOT_OPERATOR_UPLOAD_URL", "https://gw.example:8443/v1/internal/uploads/"
    )
    monkeypatch.setenv("KUBESHOT_OPERATOR_RESYNC_SECONDS", "2.5")
    settings = OperatorSettings()
    assert settings.namespaces == ["a", "b"]
    assert settings.resync_seconds == 2.5
    assert settings.upload_port == 8443
    assert (
        settings.upload_url_for("ns", "job") == "https://gw.example:8443/v1/internal/uploads/ns/job"
    )


def test_settings_defaults_are_the_secure_ones() -> None:
    settings = OperatorSettings()
    assert settings.namespaces == []
    assert settings.run_as_user != 0
    assert settings.upload_port == 8081
