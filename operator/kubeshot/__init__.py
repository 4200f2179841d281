"""kubeshot: web page capture for untrusted callers, on Kubernetes or standalone."""

__version__ = "0.1.0"
