"""`kubeshot serve`: the HTTP gateway with the local or the kubernetes backend."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="run the HTTP gateway",
        description="Run the kubeshot gateway. Every flag overrides its environment variable "
        "(see docs/gateway.md). Without a token configured, one is generated and printed once.",
    )
    parser.add_argument(
        "--host", action="append", help="address to listen on (repeatable; default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, help="TCP port (default 8080)")
    parser.add_argument(
        "--upload-port",
        type=int,
        help="kubernetes backend: plain-HTTP port of the internal upload endpoint (default 8081)",
    )
    parser.add_argument(
        "--metrics-port", type=int, help="plain-HTTP port of /metrics (Prometheus; default 9090)"
    )
    parser.add_argument("--backend", choices=["local", "kubernetes"], help="where captures run")
    parser.add_argument(
        "--policy", action="append", metavar="FILE", help="ScreenshotPolicy YAML (repeatable)"
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain (HTTPS)")
    parser.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    parser.add_argument(
        "--http-redirect-port",
        type=int,
        metavar="PORT",
        help="with TLS: also listen for plain HTTP here, redirecting to HTTPS",
    )
    parser.add_argument("--tokens-file", metavar="FILE", help="hashed tokens (YAML)")
    parser.add_argument(
        "--no-auth", action="store_true", help="run WITHOUT authentication (logged as a warning)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="capture worker processes (default: one per CPU, 1 GiB of available memory each)",
    )
    parser.add_argument("--queue-size", type=int, help="captures that may wait (default 16)")
    parser.add_argument(
        "--captures-per-worker", type=int, help="recycle a worker after N captures (default 50)"
    )
    parser.add_argument("--result-dir", metavar="DIR", help="where async artifacts are kept")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.add_argument(
        "--log-format",
        choices=["json", "text"],
        help="log lines as JSON (default) or text; else $KUBESHOT_LOG_FORMAT",
    )
    parser.set_defaults(run=run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {
        "host": args.host,
        "port": args.port,
        "upload_port": args.upload_port,
        "metrics_port": args.metrics_port,
        "backend": args.backend,
        "policy_files": args.policy,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "http_redirect_port": args.http_redirect_port,
        "tokens_file": args.tokens_file,
        "workers": args.workers,
        "queue_size": args.queue_size,
        "captures_per_worker": args.captures_per_worker,
        "result_dir": args.result_dir,
    }
    overrides = {k: v for k, v in pairs.items() if v is not None}
    if args.no_auth:
        overrides["no_auth"] = True
    return overrides


def run(args: argparse.Namespace) -> int:
    import secrets
    import ssl

    from pydantic import SecretStr, ValidationError

    from kubeshot import logs, tracing
    from kubeshot.gateway import Settings, create_app
    from kubeshot.gateway.auth import hash_token

    try:
        log_format = logs.log_format(args.log_format, "json")
        logs.setup(log_format, args.log_level)
        tracing.setup("kubeshot-gateway")
    except ValueError as exc:
        print(f"kubeshot serve: {exc}", file=sys.stderr)
        return 2
    os.environ[logs.FORMAT_ENV] = log_format  # the capture workers log alike
    try:
        settings = Settings(**_overrides(args))
    except ValidationError as exc:
        print(f"kubeshot serve: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if settings.backend == "kubernetes":
        from kubeshot.gateway.kube import login

        try:
            login()
        except Exception as exc:
            print(f"kubeshot serve: cannot reach the Kubernetes API: {exc}", file=sys.stderr)
            return 2
    if (settings.tls_cert is None) != (settings.tls_key is None):
        print("kubeshot serve: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if not settings.no_auth and settings.auth_token is None and settings.tokens_file is None:
        token = secrets.token_urlsafe(32)
        settings = settings.model_copy(update={"auth_token": SecretStr(token)})
        print(
            "\nNo AUTH_TOKEN or TOKENS_FILE configured: generated a token for this run "
            "(shown once, not stored):\n\n"
            f"    {token}\n\n"
            f"    (sha256 for a tokens file: {hash_token(token)})\n",
            file=sys.stderr,
            flush=True,
        )
    try:
        app = create_app(settings)
    except ValueError as exc:
        print(f"kubeshot serve: {exc}", file=sys.stderr)
        return 2

    ssl_context = None
    if settings.tls:
        assert settings.tls_cert is not None
        assert settings.tls_key is not None
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        ssl_context.load_cert_chain(settings.tls_cert, settings.tls_key)
    elif settings.https_only and not settings.plain_http_allowed:
        logging.getLogger("kubeshot.gateway").warning(
            "HTTPS_ONLY is on, no certificate is configured and the gateway listens beyond "
            "loopback: plain-HTTP requests are redirected to HTTPS (expecting a TLS proxy in "
            "front, listed in TRUSTED_PROXIES)"
        )
    try:
        asyncio.run(_serve(app, settings, ssl_context))
    except OSError as exc:
        print(f"kubeshot serve: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(app: Any, settings: Any, ssl_context: Any) -> None:
    """Listen until SIGINT/SIGTERM, then shut down gracefully (in-flight captures finish)."""
    from aiohttp import web

    from kubeshot.gateway import keys
    from kubeshot.gateway.metrics import metrics_app
    from kubeshot.gateway.redaction import AccessLogger
    from kubeshot.gateway.serving import ConnectionGuard, GatewaySite

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    # The app brings its own access log (credentials masked) and header timeout.
    runner = web.AppRunner(app, shutdown_timeout=settings.http_shutdown_timeout)
    await runner.setup()
    guard = app[keys.CONNECTIONS]
    upload_runner = None
    # /metrics has its own listener (and its own connection cap): never the callers' port.
    metrics_runner = web.AppRunner(
        metrics_app(app[keys.METRICS]), access_log=None, keepalive_timeout=settings.header_timeout
    )
    await metrics_runner.setup()
    try:
        metrics_guard = ConnectionGuard(settings.max_connections_per_address)
        for host in settings.host:
            site = GatewaySite(metrics_runner, host, settings.metrics_port, guard=metrics_guard)
            await site.start()
            print(
                f"kubeshot metrics at http://{_authority(host)}:{settings.metrics_port}/metrics",
                file=sys.stderr,
                flush=True,
            )
        scheme = "https" if ssl_context else "http"
        for host in settings.host:
            site = GatewaySite(
                runner,
                host,
                settings.port,
                guard=guard,
                ssl_context=ssl_context,
                handshake_timeout=settings.header_timeout,
            )
            await site.start()
            print(
                f"kubeshot gateway listening on {scheme}://{_authority(host)}:{settings.port}",
                file=sys.stderr,
                flush=True,
            )
            if ssl_context is not None and settings.http_redirect_port is not None:
                await GatewaySite(runner, host, settings.http_redirect_port, guard=guard).start()
        if settings.backend == "kubernetes":
            from kubeshot.gateway.uploads import create_upload_app

            # Capture pods reach this port only (their NetworkPolicy); it serves uploads alone.
            upload_runner = web.AppRunner(
                create_upload_app(app, settings.max_upload_bytes),
                access_log=logging.getLogger("kubeshot.gateway.access"),
                access_log_class=AccessLogger,
                keepalive_timeout=settings.header_timeout,
            )
            await upload_runner.setup()
            upload_guard = ConnectionGuard(
                settings.max_connections_per_address, metrics=app[keys.METRICS]
            )
            for host in settings.host:
                await GatewaySite(
                    upload_runner, host, settings.upload_port, guard=upload_guard
                ).start()
                print(
                    f"kubeshot upload endpoint listening on "
                    f"http://{_authority(host)}:{settings.upload_port}",
                    file=sys.stderr,
                    flush=True,
                )
        await stop.wait()
        print("kubeshot gateway shutting down", file=sys.stderr, flush=True)
    finally:
        if upload_runner is not None:
            await upload_runner.cleanup()
        await metrics_runner.cleanup()
        await runner.cleanup()


def _authority(host: str) -> str:
    return f"[{host}]" if ":" in host else host
