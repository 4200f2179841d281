"""`kubeshot serve` and `kubeshot sign` as a user runs them: real processes, real ports."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import ClientSession

from kubeshot.gateway.auth import hash_token
from kubeshot.gateway.settings import SECRET_ENVIRONMENT
from tests.gateway.conftest import SIGNING_SECRET, Gateway, Pages, tagged_processes, wait_ready
from tests.support import free_port

KUBESHOT = [sys.executable, "-m", "kubeshot.cli"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENVIRONMENT}
    env.update(extra)
    return env


@dataclass
class Served:
    process: asyncio.subprocess.Process
    url: str
    output: list[str]


async def _serve(*args: str, env: dict[str, str] | None = None) -> Served:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *KUBESHOT,
        "serve",
        "--port",
        str(port),
        *([] if "--metrics-port" in args else ["--metrics-port", str(free_port())]),
        "--workers",
        "1",
        *args,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        env=env or _clean_env(),
    )
    assert process.stderr is not None
    output: list[str] = []
    async with asyncio.timeout(60):
        while True:
            line = (await process.stderr.readline()).decode()
            if not line:
                pytest.fail("kubeshot serve exited:\n" + "".join(output), pytrace=False)
            output.append(line)
            if "listening on" in line:
                break

    async def drain() -> None:
        assert process.stderr is not None
        while line := await process.stderr.readline():
            output.append(line.decode())

    asyncio.get_running_loop().create_task(drain())
    return Served(process, f"http://127.0.0.1:{port}", output)


async def _stop(served: Served) -> int:
    served.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(60):
        return await served.process.wait()


@pytest.fixture
async def cli_session() -> AsyncIterator[ClientSession]:
    async with ClientSession() as client:
        yield client


async def test_serve_without_a_token_generates_one_and_prints_it_once(
    chromium: str, policy_file: Path, pages: Pages, cli_session: ClientSession
):
    tags_before = set(tagged_processes())
    served = await _serve("--policy", str(policy_file))
    text = "".join(served.output)
    match = re.search(r"generated a token.*?\n\s*\n\s+(\S+)\n", text, re.S)
    assert match, text
    token = match.group(1)
    assert text.count(token) == 1
    await wait_ready(cli_session, served.url)
    headers = {"Authorization": f"Bearer {token}"}
    async with cli_session.post(
        f"{served.url}/v1/screenshot", json={"url": pages.base + "/"}, headers=headers
    ) as r:
        assert r.status == 200
        assert (await r.read()).startswith(b"\x89PNG")
    async with cli_session.post(f"{served.url}/v1/screenshot", json={"url": pages.base}) as r:
        assert r.status == 401
    assert await _stop(served) == 0
    # Every worker process (Chromium included) is gone with the gateway.
    assert set(tagged_processes()) <= tags_before
    assert token not in "".join(served.output[len(text.splitlines()) :])


async def test_no_auth_runs_open_with_a_warning(
    chromium: str, policy_file: Path, cli_session: ClientSession
):
    served = await _serve("--policy", str(policy_file), "--no-auth")
    try:
        await wait_ready(cli_session, served.url)
        async with cli_session.get(f"{served.url}/v1/captures/{'0' * 32}") as r:
            assert r.status == 404  # no 401: open
    finally:
        assert await _stop(served) == 0
    assert "authentication is OFF" in "".join(served.output)


def test_kubernetes_backend_without_cluster_credentials_exits_2(tmp_path):
    env = {k: v for k, v in _clean_env(HOME=str(tmp_path)).items() if k != "KUBECONFIG"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    result = subprocess.run(
        [*KUBESHOT, "serve", "--backend", "kubernetes", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "cannot reach the Kubernetes API" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_configuration_exits_2():
    result = subprocess.run(
        [*KUBESHOT, "serve", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(RATE_LIMIT_CAPTURE="lots please", AUTH_TOKEN="x" * 20),
    )
    assert result.returncode == 2
    assert "RATE_LIMIT_CAPTURE" in result.stderr or "rate_limit_capture" in result.stderr


def _serve_refuses(args: list[str], env: dict[str, str]) -> str:
    """Run `kubeshot serve`, which must exit 2 before it listens; its stderr."""
    process = subprocess.Popen(
        [*KUBESHOT, "serve", "--port", str(free_port()), "--workers", "1", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.terminate()  # SIGTERM: the gateway stops its workers on the way out
        _, stderr = process.communicate(timeout=60)
        pytest.fail(f"kubeshot serve started instead of refusing:\n{stderr}", pytrace=False)
    assert process.returncode == 2, stderr
    assert "Traceback" not in stderr
    return stderr


@pytest.mark.parametrize("name", ["default", "signed", "Anonymous"])
def test_serve_refuses_a_token_named_like_an_identity_it_reserves(tmp_path: Path, name: str):
    # A file token named `default` used to merge with AUTH_TOKEN's identity: shared jobs and
    # rate limits.
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - name: {name}\n    sha256: {hash_token('f' * 32)}\n")
    stderr = _serve_refuses(["--tokens-file", str(tokens)], _clean_env(AUTH_TOKEN="a" * 32))
    assert f"token name '{name}' is reserved" in stderr
    assert str(tokens) in stderr


def test_serve_refuses_the_same_token_in_two_places(tmp_path: Path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - name: ci\n    sha256: {hash_token('a' * 32)}\n")
    stderr = _serve_refuses(["--tokens-file", str(tokens)], _clean_env(AUTH_TOKEN="a" * 32))
    assert "the same token is listed twice" in stderr
    assert "AUTH_TOKEN" in stderr and "'ci'" in stderr


async def test_sign_prints_a_url_the_gateway_accepts(
    gateway: Gateway, pages: Pages, session: ClientSession
):
    result = subprocess.run(  # noqa: ASYNC221 - a short CLI call, the gateway runs meanwhile
        [
            *KUBESHOT,
            "sign",
            "--base-url",
            gateway.url,
            "--expires-in",
            "120",
            f"url={pages.base}/&format=png&viewport.width=320&viewport.height=200",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(URL_SIGNING_SECRET=SIGNING_SECRET),
    )
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    assert url.startswith(f"{gateway.url}/v1/screenshot?") and "signature=" in url
    async with session.get(url) as r:
        assert r.status == 200
        assert r.headers["X-Kubeshot-Size"] == "320x200"
    async with session.get(url.replace("format=png", "format=jpeg")) as r:
        assert r.status == 403


@pytest.mark.parametrize(
    ("env", "args", "words"),
    [
        ({}, ["url=http://example.com/"], "URL_SIGNING_SECRET"),
        ({"URL_SIGNING_SECRET": SIGNING_SECRET}, ["url=ftp://example.com/"], "url"),
        (
            {"URL_SIGNING_SECRET": SIGNING_SECRET},
            ["--expires-in", "99999999", "url=http://a.b/"],
            "expires",
        ),
        ({"URL_SIGNING_SECRET": "short"}, ["url=http://a.b/"], "shorter"),
    ],
)
def test_sign_refuses_what_the_gateway_would(env: dict[str, str], args: list[str], words: str):
    result = subprocess.run(
        [*KUBESHOT, "sign", "--base-url", "http://127.0.0.1:1", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(**env),
    )
    assert result.returncode == 2
    assert words in result.stderr
