"""A small async Kubernetes API client over aiohttp, authenticated like Kopf itself.

Shared by the operator (Pods, Secrets, NetworkPolicies, Leases, status patches beside what Kopf
watches) and the gateway's kubernetes backend (CaptureJobs and one shared watch). Credentials come
from Kopf's own login functions (in-cluster service account, else kubeconfig) and are re-read
when the server answers 401 (rotated service-account tokens). What both of them call things
(API paths, labels, names, how a CaptureJob is read) is `kubeshot.kube.names`.

Names come from objects users write: a path whose object name is ".", "..", empty, or holds "/"
or "%" is never sent (URL normalisation would make it address the collection or another
resource), and an answer is used only when its `kind` is the one asked for: `<Kind>` for an
object, `<Kind>List` for a collection, never a List for an object.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

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


class NotOwned(Conflict):
    """The object exists already, and it is not the one this client would have created."""


class InvalidPath(ApiError, ValueError):
    """A request this client refuses to send: its path names no object or collection.

    An object name like "." or ".." is folded away by URL normalisation and would address
    the collection, "/" or "%" another path: such names are refused before anything is sent.
    """

    def __init__(self, message: str) -> None:
        super().__init__(400, "InvalidPath", message)


class UnexpectedKind(ApiError):
    """The API server answered with another kind than the one asked for (e.g. a List for a
    GET of one object): the answer is never used."""

    def __init__(self, message: str) -> None:
        super().__init__(502, "UnexpectedKind", message)


# The kind of each resource this client reads or writes (by plural): every answer is checked.
KINDS = {
    "capturejobs": "CaptureJob",
    "screenshotpolicies": "ScreenshotPolicy",
    "pods": "Pod",
    "secrets": "Secret",
    "networkpolicies": "NetworkPolicy",
    "events": "Event",
    "leases": "Lease",
    "namespaces": "Namespace",
}
# Subresources whose answers are the object itself.
_OBJECT_SUBRESOURCES = frozenset({"status"})


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


def _check_segment(name: str) -> str:
    """A name as one path segment; InvalidPath for names that would address something else."""
    if name in {"", ".", ".."} or "/" in name or "%" in name:
        raise InvalidPath(f"{name!r} is not a valid object name")
    return name


def resource_path(
    api_version: str, plural: str, namespace: str | None = None, name: str | None = None
) -> str:
    """/api/v1/namespaces/NS/pods/NAME and the like; InvalidPath for names such as "." or ".."."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace is not None:
        base += f"/namespaces/{quote(_check_segment(namespace), safe='')}"
    base += f"/{plural}"
    if name is not None:
        base += f"/{quote(_check_segment(name), safe='')}"
    return base


def expected_kinds(method: str, path: str) -> frozenset[str]:
    """The kinds an answer to METHOD PATH may have; InvalidPath for a path this client refuses.

    A named object (and its status) answers with its kind; a collection with `<Kind>List` when
    read, with the kind when created into; a deletion with the object or a Status.
    """
    segments = path.split("?", 1)[0].split("/")
    if segments[:2] == ["", "api"] and len(segments) >= 4:
        rest = segments[3:]
    elif segments[:2] == ["", "apis"] and len(segments) >= 5:
        rest = segments[4:]
    else:
        raise InvalidPath(f"not a resource path: {path!r}")
    for segment in rest:
        _check_segment(unquote(segment))
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]  # a namespaced resource (the namespace object itself is [namespaces, NAME])
    plural, named, subresource = rest[0], len(rest) >= 2, rest[2] if len(rest) >= 3 else None
    kind = KINDS.get(plural)
    if kind is None or len(rest) > 3 or (subresource and subresource not in _OBJECT_SUBRESOURCES):
        raise InvalidPath(f"no known kind answers {method} {path}")
    if method == "DELETE":
        return frozenset({kind, "Status"}) if named else frozenset({"Status", f"{kind}List"})
    if named or method == "POST":
        return frozenset({kind})
    return frozenset({f"{kind}List"})


def checked_kind(document: object, kinds: frozenset[str], what: str) -> Manifest:
    found = document.get("kind") if isinstance(document, dict) else None
    if found not in kinds or not isinstance(document, dict):
        wanted = " or ".join(sorted(kinds))
        raise UnexpectedKind(f"{what}: the API server answered {found!r}, not {wanted}")
    return document


class KubeClient:
    """JSON in, JSON out; errors as ApiError subclasses.

    guard: called before every request but a GET is sent; it raises to refuse the write (the
    operator's leader fence).
    """

    def __init__(
        self,
        login_fn: Callable[[], kopf.ConnectionInfo] = login,
        *,
        user_agent: str = "kubeshot-operator",
        guard: Callable[[], None] | None = None,
    ) -> None:
        self._login = login_fn
        self._user_agent = user_agent
        self._guard = guard
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
        kinds = expected_kinds(method, path)
        for attempt in (1, 2):
            if self._guard is not None and method != "GET":
                self._guard()
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
                try:
                    document = json.loads(text)
                except ValueError:
                    document = None
                return checked_kind(document, kinds, f"{method} {path}")
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def stream(
        self, path: str, params: dict[str, str]
    ) -> AsyncIterator[AsyncIterator[Manifest]]:
        """A watch: the events of `path` as they come, one JSON document a line.

        Every event's object must be of the collection's kind (an ERROR event's a Status).
        """
        (list_kind,) = expected_kinds("GET", path)
        kind = list_kind.removesuffix("List")
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
            yield _events(_lines(response), kind, path)

    async def get(self, path: str, params: dict[str, str] | None = None) -> Manifest:
        return await self.request("GET", path, params=params)

    async def create(self, path: str, body: Manifest) -> Manifest:
        return await self.request("POST", path, body)

    async def create_or_adopt(self, path: str, body: Manifest) -> tuple[Manifest, bool]:
        """Create; if an object of that name exists already, return it only when it has the
        same controller as body (ownerReference uid): (object, created). An object someone else
        made first raises NotOwned; it is never taken for ours."""
        try:
            return await self.create(path, body), True
        except Conflict:
            existing = await self.get(f"{path}/{quote(body['metadata']['name'], safe='')}")
        owner = controller_uid(body)
        if owner is None or controller_uid(existing) != owner:
            kind, name = body.get("kind", "object"), body["metadata"]["name"]
            raise NotOwned(409, "AlreadyExists", f"a {kind} named {name} exists and is not ours")
        return existing, False

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

    async def delete(self, path: str, *, missing_ok: bool = True, uid: str | None = None) -> None:
        """Delete; with uid, only that very object (another of the same name raises Conflict)."""
        options: Manifest = {"propagationPolicy": "Background"}
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", path, options)
        except NotFound:
            if not missing_ok:
                raise


def controller_uid(manifest: Manifest) -> str | None:
    """The uid of the object's controller (its ownerReference with `controller: true`)."""
    for owner in (manifest.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(owner, dict) and owner.get("controller") is True and owner.get("uid"):
            return str(owner["uid"])
    return None


def _error(status: int, text: str) -> ApiError:
    try:
        document = json.loads(text)
        reason, message = str(document.get("reason", "")), str(document.get("message", text))
    except ValueError:
        reason, message = "", text
    kind = {404: NotFound, 409: Conflict}.get(status, ApiError)
    return kind(status, reason, message[:2000])


async def _events(events: AsyncIterator[Manifest], kind: str, path: str) -> AsyncIterator[Manifest]:
    async for event in events:
        wanted = frozenset({"Status"}) if event.get("type") == "ERROR" else frozenset({kind})
        checked_kind(event.get("object"), wanted, f"watch {path}")
        yield event


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[Manifest]:
    # Objects may be longer than aiohttp's line limit: split the chunks ourselves.
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
