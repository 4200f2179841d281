"""The kubeshot gateway: `kubeshot serve`. Build one with `create_app(Settings(...))`."""

from kubeshot.gateway.app import create_app
from kubeshot.gateway.settings import Settings

__all__ = ["Settings", "create_app"]
