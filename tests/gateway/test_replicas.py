"""Two gateway replicas (`kubeshot serve` processes) sharing a real Redis and a real S3 store
(versitygw), behind one address, each with a directory of its own (nothing shared on a disk).

The one address is a small TCP balancer in this file: each connection goes to the next replica
in turn, skipping one that refuses connections (a killed replica), as a Service does. (Two
processes binding one port with SO_REUSEPORT would be the kernel's choice of replica per
connection; the balancer makes the spread deterministic, so both replicas surely serve.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientError, ClientSession, TCPConnector

from kubeshot.gateway.settings import SECRET_ENVIRONMENT
from tests.conftest import S3Server
from tests.gateway.conftest import CI_TOKEN, LIMITED_TOKEN, TOKEN, Pages
from tests.gateway.test_webhooks import SECRET, receiving
from tests.support import free_port, wait_until

pytestmark = pytest.mark.gateway

KUBESHOT = [sys.executable, "-m", "kubeshot.cli", "serve"]
READ_LIMIT = 60
PER_IDENTITY = 2


@dataclass
class Replica:
    port: int
    env: dict[str, str]
    log: Path
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, session: ClientSession) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *KUBESHOT,
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )
        process = self.process

        async def ready() -> bool:
            if process.returncode is not None:
                pytest.fail(f"kubeshot serve exited:\n{self.log.read_text()}", pytrace=False)
            with contextlib.suppress(ClientError):
                async with session.get(f"{self.url}/readyz") as response:
                    return response.status == 200
            return False

        assert await wait_until(ready, 120, 0.5), f"{self.url} never became ready"

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(60):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@dataclass
class Balancer:
    """Round-robin per connection over the replicas' ports; a refused one is skipped."""

    ports: list[int]
    port: int = field(default_factory=free_port)
    served: Counter[int] = field(default_factory=Counter)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        turn = itertools.cycle(self.ports)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            with contextlib.suppress(Exception):
                writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for _ in self.ports:
                port = next(turn)
                try:
                    upstream = await asyncio.open_connection("127.0.0.1", port)
                except ConnectionRefusedError:
                    continue
                self.served[port] += 1
                await asyncio.gather(pipe(reader, upstream[1]), pipe(upstream[0], writer))
                return
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", self.port)
        try:
            yield
        finally:
            server.close()


def replica_env(
    redis_url: str, store: dict[str, str], policy_file: Path, tokens_file: Path, results: Path
) -> dict[str, str]:
    """A replica's environment: the shared Redis and S3 store (`store`), a directory of its own
    (`results`: nothing on a disk is shared, as between two pods)."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENVIRONMENT}
    env.update(
        AUTH_TOKEN=TOKEN,
        TOKENS_FILE=str(tokens_file),
        KUBESHOT_REDIS_URL=redis_url,
        KUBESHOT_POLICY_FILES=json.dumps([str(policy_file)]),
        KUBESHOT_RESULT_DIR=str(results),
        KUBESHOT_WORKERS="1",
        KUBESHOT_METRICS_PORT=str(free_port()),
        KUBESHOT_MAX_CAPTURES_PER_IDENTITY=str(PER_IDENTITY),
        RATE_LIMIT_READ=f"{READ_LIMIT} per minute",
        RATE_LIMIT_CAPTURE="100 per minute",
        KUBESHOT_MAX_CONNECTIONS_PER_ADDRESS="512",  # every test connection is from 127.0.0.1
        **store,
    )
    return env


@pytest.fixture
async def replicas(
    redis_url: str, s3_server: S3Server, policy_file: Path, tokens_file: Path, tmp_path: Path
) -> AsyncIterator[tuple[list[Replica], Balancer, ClientSession]]:
    group = []
    store = s3_server.store_env(f"replicas-{uuid.uuid4().hex[:8]}")
    for name in ("a", "b"):
        port = free_port()
        env = replica_env(redis_url, store, policy_file, tokens_file, tmp_path / name)
        env["KUBESHOT_PORT"] = str(port)
        group.append(Replica(port, env, tmp_path / f"{name}.log"))
    balancer = Balancer([r.port for r in group])
    # A fresh connection per request: the balancer spreads connections.
    async with (
        ClientSession(connector=TCPConnector(force_close=True)) as session,
        balancer.running(),
    ):
        try:
            await asyncio.gather(*(r.start(session) for r in group))
            yield group, balancer, session
        finally:
            await asyncio.gather(*(r.stop() for r in group))
    password = redis_url.split("@")[0].rpartition(":")[2]
    for replica in group:  # the Redis password never reaches a log line
        assert password not in replica.log.read_text()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def job(session: ClientSession, url: str, job_id: str, token: str = TOKEN) -> Any:
    async with session.get(f"{url}/v1/captures/{job_id}", headers=auth(token)) as response:
        return response.status, await response.json()


async def test_limits_and_captures_in_flight_hold_across_both_replicas(
    replicas: tuple[list[Replica], Balancer, ClientSession], pages: Pages
) -> None:
    group, balancer, session = replicas

    # N requests at a limit of L per minute, through the one address: exactly L pass.
    n = 150

    async def read() -> int:
        url = f"{balancer.url}/v1/captures/{uuid.uuid4().hex}"
        async with session.get(url, headers=auth(LIMITED_TOKEN)) as response:
            return response.status

    statuses = Counter(await asyncio.gather(*(read() for _ in range(n))))
    assert statuses == {404: READ_LIMIT, 429: n - READ_LIMIT}, statuses
    assert all(balancer.served[r.port] >= n // 2 - 1 for r in group), balancer.served

    # Captures in flight per identity: 6 slow asynchronous captures at once, across both
    # replicas: exactly PER_IDENTITY are accepted, the rest refused.
    body = {"url": f"{pages.base}/slow?s=8", "format": "png"}

    async def submit() -> tuple[int, Any]:
        async with session.post(f"{balancer.url}/v1/captures", json=body, headers=auth()) as r:
            return r.status, await r.json()

    answers = await asyncio.gather(*(submit() for _ in range(6)))
    accepted = [a for s, a in answers if s == 202]
    refused = [a for s, a in answers if s == 429]
    assert len(accepted) == PER_IDENTITY and len(refused) == 6 - PER_IDENTITY, answers
    assert {a["error"]["code"] for a in refused} == {"concurrency_limited"}


async def test_a_job_and_its_webhook_outlive_the_replica_that_accepted_it(
    replicas: tuple[list[Replica], Balancer, ClientSession], pages: Pages, s3_server: S3Server
) -> None:
    group, balancer, session = replicas
    a, b = group
    async with receiving() as receiver:
        webhook = {"url": receiver.url, "secret": SECRET}
        body = {"url": f"{pages.base}/slow?s=6", "format": "png", "delivery": {"webhook": webhook}}
        async with session.post(f"{a.url}/v1/captures", json=body, headers=auth(CI_TOKEN)) as r:
            assert r.status == 202, await r.text()
            job_id = (await r.json())["id"]
        # Seen through the other replica, by its caller only (the identity check is unchanged).
        assert (await job(session, b.url, job_id, CI_TOKEN))[0] == 200
        assert (await job(session, b.url, job_id, TOKEN))[0] == 404

        async def running() -> bool:
            return (await job(session, a.url, job_id, CI_TOKEN))[1].get("phase") == "Running"

        assert await wait_until(running, 60, 1.0)
        await a.kill()  # mid-capture: the page takes 6 s to answer

        finished: dict[str, Any] = {}

        async def announced() -> bool:
            status, view = await job(session, balancer.url, job_id, CI_TOKEN)
            finished.update(view if status == 200 else {})
            return finished["delivery"]["webhook"]["outcome"] != "Pending"

        # Replica b takes it over once a's lease has run out, runs it again, announces it.
        assert await wait_until(announced, 90, 2.0), finished
        assert finished["phase"] == "Succeeded", finished
        assert finished["delivery"]["webhook"]["outcome"] == "Delivered", finished
        # Once (a was killed before it finished), signed, with the id a promised.
        [hit] = receiver.received
        assert hit.headers["webhook-id"] == finished["delivery"]["webhook"]["id"]
        assert hit.headers["webhook-id"] == f"msg_{job_id}"
        assert isinstance(hit.verified, dict), hit.verified
        assert hit.verified["data"]["job"] == job_id
        assert hit.verified["data"]["result"]["sha256"] == finished["result"]["sha256"]
    await a.start(session)
    status, view = await job(session, a.url, job_id, CI_TOKEN)
    assert status == 200 and view == finished
    async with session.get(f"{a.url}{view['result']['url']}", headers=auth(CI_TOKEN)) as r:
        served = await r.read()
        assert r.status == 200 and served.startswith(b"\x89PNG")
    # From the bucket: the replicas share no directory.
    [stored] = (s3_server.data / s3_server.bucket).glob(f"replicas-*/{job_id}")
    assert stored.read_bytes() == served
    for replica in group:  # the job store holds the webhook's secret; no log line does
        assert SECRET.removeprefix("whsec_") not in replica.log.read_text()
