"""A small async Kubernetes API client over aiohttp, authenticated like Kopf itself.

Shared by the operator (Pods, Secrets, NetworkPolicies, Leases, status patches beside what Kopf
watches) and the gateway's kubernetes backend (CaptureJobs and one shared watch). Credentials come
from Kopf's own login functions (in-cluster service account, else kubeconfig) and are re-read
when the server answers 401 (rotated service-account tokens).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

if TYPE_CHECKING:
    import kopf

Manifest = dict[str, Any]


class ApiError(Exception):
    """The API server refused a request."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(ApiError):
    """404: the object does not exist."""


class Conflict(ApiError):
    """409: the object exists already, or was changed meanwhile."""


def login() -> kopf.ConnectionInfo:
    """Credentials as Kopf finds them: the pod's service account, else the kubeconfig."""
    import kopf  # here, not at the top: the gateway's local-backend workers never pay for it

    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )
    if info is None:
        raise kopf.LoginError("no service account and no kubeconfig to reach the cluster with")
    return info


def resource_path(
    api_version: str, plural: str, namespace: str | None = None, name: str | None = None
) -> str:
    """/api/v1/namespaces/NS/pods/NAME and the like."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace is not None:
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{plural}"
    if name is not None:
        base += f"/{quote(name, safe='')}"
    return base


class KubeClient:
    """JSON in, JSON out; errors as ApiError subclasses."""

    def __init__(
        self,
        login_fn: Callable[[], kopf.ConnectionInfo] = login,
        *,
        user_agent: str = "kubeshot-operator",
    ) -> None:
        self._login = login_fn
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._server = ""

    def _open(self) -> aiohttp.ClientSession:
        info = self._login()
        self._server = info.server.rstrip("/")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, ssl=info.as_ssl_context()),
            headers={**info.as_http_headers(), "User-Agent": self._user_agent},
            timeout=aiohttp.ClientTimeout(total=30),
        )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> Manifest:
        for attempt in (1, 2):
            session = self._session or self._open()
            data = None if body is None else json.dumps(body)
            async with session.request(
                method,
                self._server + path,
                data=data,
                params=params,
                headers={"Content-Type": content_type, "Accept": "application/json"},
            ) as response:
                text = await response.text()
                if response.status == 401 and attempt == 1:
                    await self.close()  # rotated token: log in again, once
                    continue
                if response.status >= 400:
                    raise _error(response.status, text)
                return json.loads(text) if text else {}
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def stream(
        self, path: str, params: dict[str, str]
    ) -> AsyncIterator[AsyncIterator[Manifest]]:
        """A watch: the events of `path` as they come, one JSON document a line."""
        session = self._session or self._open()
        async with session.get(
            self._server + path,
            params=params,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        ) as response:
            if response.status >= 400:
                if response.status == 401:
                    await self.close()  # rotated token: the next watch logs in again
                raise _error(response.status, await response.text())
            yield _lines(response)

    async def get(self, path: str, params: dict[str, str] | None = None) -> Manifest:
        return await self.request("GET", path, params=params)

    async def create(self, path: str, body: Manifest) -> Manifest:
        return await self.request("POST", path, body)

    async def create_or_keep(self, path: str, body: Manifest) -> tuple[Manifest, bool]:
        """Create; if it exists already, return the existing one. (object, created)."""
        try:
            return await self.create(path, body), True
        except Conflict:
            return await self.get(f"{path}/{quote(body['metadata']['name'], safe='')}"), False

    async def merge_patch(self, path: str, patch: Manifest) -> Manifest:
        return await self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    async def apply(self, path: str, body: Manifest, field_manager: str) -> Manifest:
        """Server-side apply (create or update), taking over fields from other managers."""
        return await self.request(
            "PATCH",
            path,
            body,
            content_type="application/apply-patch+yaml",
            params={"fieldManager": field_manager, "force": "true"},
        )

    async def delete(self, path: str, *, missing_ok: bool = True) -> None:
        try:
            await self.request("DELETE", path, {"propagationPolicy": "Background"})
        except NotFound:
            if not missing_ok:
                raise


def _error(status: int, text: str) -> ApiError:
    try:
        document = json.loads(text)
        reason, message = str(document.get("reason", "")), str(document.get("message", text))
    except ValueError:
        reason, message = "", text
    kind = {404: NotFound, 409: Conflict}.get(status, ApiError)
    return kind(status, reason, message[:2000])


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[Manifest]:
    # Objects may be longer than aiohttp's line limit: split the chunks ourselves.
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
