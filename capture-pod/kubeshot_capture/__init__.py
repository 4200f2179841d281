"""The capture engine: Chromium through Playwright, behind the egress guard, verified output.

Imports only `kubeshot.api` of kubeshot (never kopf, Kubernetes clients or the aiohttp server).
"""
