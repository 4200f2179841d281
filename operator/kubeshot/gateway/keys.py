"""Every typed application key of the gateway, in one place."""

from __future__ import annotations

from aiohttp import web

from kubeshot.gateway.auth import Authenticator, Identity
from kubeshot.gateway.backend import Backend, Jobs
from kubeshot.gateway.fairness import FairShare
from kubeshot.gateway.metrics import Metrics
from kubeshot.gateway.ratelimit import Decision, RateLimiter
from kubeshot.gateway.serving import ConnectionGuard
from kubeshot.gateway.settings import Settings
from kubeshot.gateway.signing import UrlSigner
from kubeshot.gateway.store import ResultStore

SETTINGS = web.AppKey("settings", Settings)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
SIGNER = web.AppKey("signer", UrlSigner)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
BACKEND = web.AppKey("backend", Backend)
STORE = web.AppKey("store", ResultStore)
JOBS = web.AppKey("jobs", Jobs)
METRICS = web.AppKey("metrics", Metrics)
FAIRNESS = web.AppKey("fairness", FairShare)
CONNECTIONS = web.AppKey("connections", ConnectionGuard)

IDENTITY = web.RequestKey("identity", Identity)
CLIENT = web.RequestKey("client", str)
TARGET = web.RequestKey("target", str)
RATE_DECISION = web.RequestKey("rate_decision", Decision)
