"""A capture worker whose Chromium died is replaced (bench/chaos.py's worker-kill scenario): the
capture in flight gets a named 5xx, and the pool serves the next captures again, with nothing
left of the worker."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession

from tests.gateway.conftest import (
    Gateway,
    base_settings,
    start_gateway,
    tagged_processes,
    zombie_children,
)
from tests.support import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")

BODY = {"html": "<h1>crash</h1>", "format": "png"}


# Chromium's executable names (its crashpad handler, also untyped, is not the browser).
BROWSERS = {"chromium", "chrome", "headless_shell"}


def browser_process(tag: str) -> int:
    """The Chromium browser process (not a renderer, zygote or utility) of a worker."""
    for pid in tagged_processes().get(tag, set()):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if Path(os.fsdecode(argv[0])).name in BROWSERS and not any(
            a.startswith(b"--type=") for a in argv
        ):
            return pid
    raise LookupError(f"no browser process tagged {tag}")


async def capture(gateway: Gateway, session: ClientSession, **extra: object) -> tuple[int, str]:
    async with session.post(
        gateway.url + "/v1/screenshot", json=BODY | extra, headers=gateway.auth()
    ) as answer:
        body = await answer.read()
        return answer.status, "" if answer.status == 200 else body.decode()


def worker_tag(gateway: Gateway) -> str:
    """The tag of this gateway's one worker (other gateways of the tier run in this process)."""
    (tag,) = {worker.tag for worker in gateway.backend._workers}
    return tag


@pytest.fixture
async def gateway(
    chromium: str, policy_file: Path, tokens_file: Path, session: ClientSession
) -> AsyncIterator[Gateway]:
    """A gateway of one worker that has made one capture (its browser is up)."""
    started = await start_gateway(base_settings(policy_file, tokens_file, workers=1))
    try:
        await started.wait_ready(session)
        assert (await capture(started, session))[0] == 200
        yield started
    finally:
        await started.stop()


async def test_a_worker_whose_browser_died_mid_capture_is_replaced(
    gateway: Gateway, session: ClientSession
) -> None:
    tag = worker_tag(gateway)
    in_flight = asyncio.create_task(capture(gateway, session, delayMs=3000))
    await asyncio.sleep(1.5)
    os.kill(browser_process(tag), signal.SIGKILL)
    status, error = await in_flight
    assert status == 503, error  # named, never a bare 500 `internal`
    assert '"PodLost"' in error and "browser exited" in error, error
    after = [(await capture(gateway, session))[0] for _ in range(3)]
    assert after == [200, 200, 200], after
    assert tag not in tagged_processes()  # nothing of the worker is left
    assert await wait_until(lambda: not zombie_children(), within=10), zombie_children()


async def test_a_worker_whose_browser_died_while_idle_is_replaced_before_it_captures(
    gateway: Gateway, session: ClientSession
) -> None:
    tag = worker_tag(gateway)
    os.kill(browser_process(tag), signal.SIGKILL)
    # The worker exits, and the pool kills what is left of it and starts another.
    assert await wait_until(lambda: tag not in tagged_processes(), within=20)
    after = [(await capture(gateway, session))[0] for _ in range(2)]
    assert after == [200, 200], after
