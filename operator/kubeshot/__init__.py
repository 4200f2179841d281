"""kubeshot: web page capture for untrusted callers, on Kubernetes or standalone."""

from importlib.metadata import PackageNotFoundError, version

try:
    # The one source of the version: pyproject.toml, through the installed package's metadata
    # (the CLI's --version, kubeshot_build_info, the default capture image tag and the images'
    # labels all read it; tests/unit/test_version.py keeps the chart's appVersion in step).
    __version__ = version("kubeshot")
except PackageNotFoundError:  # pragma: no cover - running from a source tree never installed
    __version__ = "0+unknown"
