"""`kubeshot_build_info`: which release, on which Python, a daemon runs (both daemons export it).

A constant 1 whose labels carry the facts, the Prometheus convention for build information: a
dashboard joins on it (`* on(instance) group_left(version) kubeshot_build_info`) and an upgrade
shows as a label change. The version is the package metadata's (`kubeshot.__version__`), the one
source the CLI, the images and the chart also take it from.
"""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Gauge

from kubeshot import __version__


def register_build_info(registry: CollectorRegistry) -> Gauge:
    """`kubeshot_build_info{version,python,implementation} 1`, registered on `registry`."""
    gauge = Gauge(
        "kubeshot_build_info",
        "kubeshot build information: the release and the Python that runs it (always 1)",
        ["version", "python", "implementation"],
        registry=registry,
    )
    gauge.labels(
        version=__version__,
        python=platform.python_version(),
        implementation=platform.python_implementation(),
    ).set(1)
    return gauge
