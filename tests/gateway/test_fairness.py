"""No identity takes the capture capacity from the others, and no small request buys a huge
render: a per-identity cap and fair share of the queue, and a pixel budget checked up front."""

from __future__ import annotations

import asyncio

from aiohttp import ClientSession

from tests.gateway.conftest import CI_TOKEN, MAX_CAPTURES_PER_IDENTITY, TOKEN, Gateway, Pages
from tests.support import wait_until


def _total(text: str, name: str) -> float:
    """The sum of every sample of one metric."""
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith(name) and line[len(name)] in "{ "
    )


async def _capture(
    gateway: Gateway, session: ClientSession, body: dict[str, object], token: str = TOKEN
) -> tuple[int, dict[str, object], dict[str, str]]:
    async with session.post(
        f"{gateway.url}/v1/screenshot", json=body, headers=gateway.auth(token)
    ) as r:
        data = await r.read()
        answer = await r.json() if r.content_type == "application/json" else {}
        assert data
        return r.status, answer, dict(r.headers)


async def test_one_identity_cannot_take_the_queue_from_the_others(
    gateway: Gateway, session: ClientSession, pages: Pages
):
    # As many slow captures from one token as there are workers and queue places together:
    # before, they filled the queue and every other caller got 503.
    settings = gateway.settings
    capacity = settings.workers + settings.queue_size
    allowed = MAX_CAPTURES_PER_IDENTITY
    slow = {"url": pages.base + "/slow?s=3"}
    greedy = [
        asyncio.create_task(_capture(gateway, session, slow, CI_TOKEN)) for _ in range(capacity)
    ]

    def refused() -> int:
        return sum(1 for t in greedy if t.done() and t.result()[0] == 429)

    queue_full = lambda: gateway.backend.queue_depth >= settings.queue_size  # noqa: E731
    assert await wait_until(lambda: refused() == capacity - allowed or queue_full(), within=60)

    # Another tenant still gets its capture.
    status, _, _ = await _capture(gateway, session, {"url": pages.base + "/"})
    assert status == 200

    results = await asyncio.gather(*greedy)
    assert sorted(status for status, _, _ in results) == [200] * allowed + [429] * (
        capacity - allowed
    )
    for status, answer, headers in results:
        if status == 429:
            assert answer["error"]["code"] == "concurrency_limited"  # type: ignore[index]
            assert headers["Retry-After"] == "1"


async def test_a_render_over_the_pixel_budget_is_refused_before_any_worker(
    gateway: Gateway, session: ClientSession, pages: Pages
):
    async with session.get(gateway.metrics_url) as r:
        before = await r.text()
    cases = [
        # 3840x2160 at scale 4: 133 M device pixels from a 150-byte request.
        (
            {"viewport": {"width": 3840, "height": 2160}, "deviceScaleFactor": 4},
            "deviceScaleFactor",
        ),
        # A full page is counted at the policy's maxFullPageHeight (16384): 2560 x 32768.
        ({"fullPage": True, "deviceScaleFactor": 2}, "fullPage"),
    ]
    for options, field in cases:
        status, answer, _ = await _capture(gateway, session, {"url": pages.base + "/", **options})
        assert status == 400, answer
        error = answer["error"]
        assert error["code"] == "invalid_request"  # type: ignore[index]
        assert field in {d["field"] for d in error["details"]}  # type: ignore[index]
        assert "33554432" in error["message"]  # type: ignore[index]
    async with session.get(gateway.metrics_url) as r:
        after = await r.text()
    for metric in ("kubeshot_captures_total", "kubeshot_worker_restarts_total"):
        assert _total(after, metric) == _total(before, metric), metric
    # Within the budget, the same options render (3840x2160 at scale 2 is 33.2 M pixels).
    within = {"viewport": {"width": 1920, "height": 1080}, "deviceScaleFactor": 2}
    status, _, headers = await _capture(gateway, session, {"url": pages.base + "/", **within})
    assert status == 200
    assert headers["X-Kubeshot-Size"] == "3840x2160"
