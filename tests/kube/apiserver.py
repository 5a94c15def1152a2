"""A stand-in for the Kubernetes API server, over real HTTP, for the `kubernetes` runtime's tests.

It serves what the runtime uses, the way the API server answers it: Pods, PersistentVolumeClaims and
Secrets in namespaces (create, get, replace, delete, list with an equality label selector), Events (listed with a
field selector on involvedObject, as the runtime reads a pending pod's), a pod's log
(tail and follow), `Status` bodies for errors (404 NotFound, 409 AlreadyExists, 422 Invalid), bearer-token
authentication, and DELETE with a grace period. It records every request (method, path, query, body) for
assertions, and injects faults: a status for the next matching calls, every call forbidden (RBAC).

No scheduler and no kubelet: a created pod stays `Pending` until a test sets its status (`run_pod`,
`set_pod_status`) or a kubelet hook does (tests/kube/kubelet.py runs pods on the local Docker engine).

kmock (PyPI) was tried first: its emulator neither filters lists by label selector nor serves pod logs.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

KINDS = {"pods": "Pod", "persistentvolumeclaims": "PersistentVolumeClaim", "secrets": "Secret", "events": "Event"}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")

BODY = web.RequestKey("body", object)
Hook = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any = None

    @property
    def rbac(self) -> tuple[str, str] | None:
        """(verb, resource) as RBAC names this request (None for a non-resource path such as /version)."""
        match = _RESOURCE_PATH.match(self.path)
        if match is None:
            return None
        resource = match["plural"] + (f"/{match['sub']}" if match["sub"] else "")
        if self.method == "GET":
            verb = "watch" if self.query.get("watch") in ("true", "1") else "get" if match["name"] else "list"
        else:
            verb = _VERBS.get(self.method, self.method.lower())
        return verb, resource


_RESOURCE_PATH = re.compile(r"^/api/v1/namespaces/[^/]+/(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$")
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass
class Fault:
    """Answer `status` to the next `count` requests whose method and path match."""

    method: str
    path: re.Pattern[str]
    status: int
    reason: str
    message: str
    count: int = 1


@dataclass
class PodLog:
    lines: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def append(self, line: str) -> None:
        self.lines.append(line)
        self.changed.set()
        self.changed = asyncio.Event()


class FakeApiServer:
    def __init__(self, *, token: str = "fake-apiserver-token") -> None:
        self.token = token
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, namespace, name)
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.forbidden: str | None = None  # every request answers 403 with this message (RBAC refused)
        self.hold_deletions = False  # deleted pods stay terminating until finish_deletion (a slow kubelet)
        self.logs: dict[tuple[str, str], PodLog] = {}
        # A kubelet: told of each pod made and each pod deleted (then waited for), asked for logs.
        self.on_pod_created: Hook | None = None
        self.on_pod_deleted: Callable[[dict[str, Any], int], Awaitable[None]] | None = None
        self.log_source: Callable[[dict[str, Any], int | None, bool], AsyncIterator[str]] | None = None
        self._version = 0
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    # ---- serving ------------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(middlewares=[self._middleware])
        base = "/api/v1/namespaces/{ns}/{plural}"
        app.router.add_get(base, self._list)
        app.router.add_post(base, self._create)
        app.router.add_get(base + "/{name}", self._get)
        app.router.add_put(base + "/{name}", self._replace)
        app.router.add_delete(base + "/{name}", self._delete)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}/log", self._log)
        app.router.add_get("/version", self._version_info)
        # Followed logs may still be open at the end: they are cut, not waited for.
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
        self.url = f"http://{host}:{bound[1]}"
        return self.url

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    def kubeconfig(self, path: Path, namespace: str, *, token: str | None = None) -> Path:
        """A kubeconfig that points at this server (JSON is YAML)."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fleet", "user": {"token": token or self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fleet", "namespace": namespace}}],
        }
        path.write_text(json.dumps(config))
        return path

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        body = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
        self.requests.append(Recorded(request.method, request.path, dict(request.query), body))
        request[BODY] = body
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        if self.forbidden is not None:
            return _status(403, "Forbidden", self.forbidden)
        for fault in self.faults:
            if fault.count > 0 and fault.method == request.method and fault.path.search(request.path):
                fault.count -= 1
                return _status(fault.status, fault.reason, fault.message)
        return await handler(request)

    # ---- handlers -----------------------------------------------------------------------------------

    async def _version_info(self, _request: web.Request) -> web.Response:
        return _json({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake"})

    async def _list(self, request: web.Request) -> web.Response:
        ns, plural = request.match_info["ns"], request.match_info["plural"]
        if plural not in KINDS:
            return _status(404, "NotFound", f"the server could not find the requested resource ({plural})")
        wanted = _selector(request.query.get("labelSelector", ""))
        fields = _selector(request.query.get("fieldSelector", ""))
        items = [
            obj for (p, n, _), obj in sorted(self.objects.items())
            if p == plural and n == ns and _matches((obj["metadata"].get("labels") or {}), wanted)
            and _matches(_field_values(obj), fields)
        ]
        return _json({"apiVersion": "v1", "kind": f"{KINDS[plural]}List",
                                  "metadata": {"resourceVersion": str(self._version)}, "items": items})

    async def _create(self, request: web.Request) -> web.Response:
        ns, plural = request.match_info["ns"], request.match_info["plural"]
        body = request[BODY]
        if plural not in KINDS or not isinstance(body, dict):
            return _status(400, "BadRequest", "not an object of a known kind")
        name = (body.get("metadata") or {}).get("name", "")
        pattern = _DNS_LABEL if plural == "pods" else _DNS_SUBDOMAIN
        if not pattern.match(name) or len(name) > (63 if plural == "pods" else 253):
            return _status(422, "Invalid", f'{KINDS[plural]} "{name}" is invalid: metadata.name: Invalid value')
        if (plural, ns, name) in self.objects:
            return _status(409, "AlreadyExists", f'{plural} "{name}" already exists')
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        meta.update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion=self._bump(),
                    creationTimestamp=_now())
        if plural == "secrets" and "stringData" in obj:
            data = obj.setdefault("data", {})
            for key, value in obj.pop("stringData").items():
                data[key] = base64.b64encode(value.encode()).decode()
        if plural == "pods":
            obj["status"] = {"phase": "Pending", "qosClass": "Guaranteed"}
        if plural == "persistentvolumeclaims":
            obj["status"] = {"phase": "Bound"}
        self.objects[(plural, ns, name)] = obj
        if plural == "pods" and self.on_pod_created is not None:
            self._spawn(self.on_pod_created(obj))
        return _json(obj, status=201)

    async def _get(self, request: web.Request) -> web.Response:
        obj = self.objects.get(_key(request))
        if obj is None:
            return _not_found(request)
        return _json(obj)

    async def _replace(self, request: web.Request) -> web.Response:
        key = _key(request)
        if key not in self.objects:
            return _not_found(request)
        obj = copy.deepcopy(request[BODY])
        obj["metadata"]["resourceVersion"] = self._bump()
        self.objects[key] = obj
        return _json(obj)

    async def _delete(self, request: web.Request) -> web.Response:
        key = _key(request)
        obj = self.objects.get(key)
        if obj is None:
            return _not_found(request)
        grace = int(request.query.get("gracePeriodSeconds", obj.get("spec", {}).get("terminationGracePeriodSeconds", 30)))
        if key[0] != "pods":
            del self.objects[key]
            return _json(obj)
        if not obj["metadata"].get("deletionTimestamp"):
            obj["metadata"]["deletionTimestamp"] = _now()
            obj["metadata"]["deletionGracePeriodSeconds"] = grace
            if self.on_pod_deleted is not None:
                self._spawn(self._kubelet_delete(key, obj, grace))
            elif not self.hold_deletions:
                self.finish_deletion(key[1], key[2])
        return _json(obj)

    async def _kubelet_delete(self, key: tuple[str, str, str], pod: dict[str, Any], grace: int) -> None:
        assert self.on_pod_deleted is not None
        try:
            await self.on_pod_deleted(pod, grace)
        finally:
            self.finish_deletion(key[1], key[2])

    async def _log(self, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["ns"], request.match_info["name"]
        pod = self.objects.get(("pods", ns, name))
        if pod is None:
            return _status(404, "NotFound", f'pods "{name}" not found')
        tail = int(request.query["tailLines"]) if "tailLines" in request.query else None
        follow = request.query.get("follow") == "true"
        if self.log_source is None and (pod.get("status") or {}).get("phase") == "Pending":
            return _status(400, "BadRequest", f'container "instance" in pod "{name}" is waiting to start: ContainerCreating')
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        lines = self.log_source(pod, tail, follow) if self.log_source else self._stored_log(ns, name, tail, follow)
        async for line in lines:
            await response.write(line.encode() + b"\n")
        await response.write_eof()
        return response

    async def _stored_log(self, ns: str, name: str, tail: int | None, follow: bool) -> AsyncIterator[str]:
        log = self.logs.setdefault((ns, name), PodLog())
        sent = max(0, len(log.lines) - tail) if tail is not None else 0
        while True:
            changed = log.changed
            for line in log.lines[sent:]:
                yield line
            sent = len(log.lines)
            pod = self.objects.get(("pods", ns, name))
            if not follow or pod is None or (pod.get("status") or {}).get("phase") != "Running":
                return
            await changed.wait()

    # ---- what a test or a kubelet does --------------------------------------------------------------

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get(("pods", namespace, name))

    def items(self, plural: str, namespace: str) -> dict[str, dict[str, Any]]:
        return {name: obj for (p, n, name), obj in self.objects.items() if p == plural and n == namespace}

    def set_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        pod = self.objects[("pods", namespace, name)]
        pod["status"] = status
        pod["metadata"]["resourceVersion"] = self._bump()
        log = self.logs.get((namespace, name))
        if log is not None:
            log.changed.set()  # a follower notices the pod is no longer running

    def run_pod(self, namespace: str, name: str, ip: str = "10.0.0.7") -> None:
        """What the scheduler and the kubelet would report for a pod whose container runs."""
        self.set_pod_status(namespace, name, {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
            "containerStatuses": [container_status({"running": {"startedAt": _now()}}, ready=True)],
        })

    def add_event(self, namespace: str, pod_name: str, reason: str, message: str, *, kind: str = "Normal",
                  count: int = 1, at: str | None = None) -> None:
        """An Event about a pod, as the scheduler or the kubelet records it (Scheduled, Pulling, Failed, ...)."""
        name = f"{pod_name}.{uuid.uuid4().hex[:16]}"
        stamp = at or _now()
        self.objects[("events", namespace, name)] = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "resourceVersion": self._bump(),
                         "creationTimestamp": stamp},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "namespace": namespace},
            "reason": reason, "message": message, "type": kind, "count": count,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "source": {"component": "kubelet"},
        }

    def finish_deletion(self, namespace: str, name: str) -> None:
        self.objects.pop(("pods", namespace, name), None)
        if (log := self.logs.get((namespace, name))) is not None:
            log.changed.set()  # a follower's stream ends with its pod

    def log(self, namespace: str, name: str) -> PodLog:
        return self.logs.setdefault((namespace, name), PodLog())

    def fail_next(self, method: str, path: str, status: int, reason: str, message: str = "injected", count: int = 1) -> None:
        self.faults.append(Fault(method, re.compile(path), status, reason, message, count))

    def rbac_calls(self) -> set[tuple[str, str]]:
        """Every (verb, resource) this server was asked for, as a Role grants them."""
        return {r.rbac for r in self.requests if r.rbac is not None}

    def calls(self, method: str | None = None, path: str = "") -> list[Recorded]:
        return [r for r in self.requests if (method is None or r.method == method) and path in r.path]

    # ---- helpers ------------------------------------------------------------------------------------

    def _bump(self) -> str:
        self._version += 1
        return str(self._version)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def container_status(state: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A pod's container status with the fields the API server always sends (lightkube requires them)."""
    return {"name": "instance", "image": "aistudio-fleet-instance:latest", "imageID": "", "ready": False,
            "restartCount": 0, "state": state, **extra}


def _key(request: web.Request) -> tuple[str, str, str]:
    return request.match_info["plural"], request.match_info["ns"], request.match_info["name"]


def _not_found(request: web.Request) -> web.Response:
    plural, name = request.match_info["plural"], request.match_info["name"]
    return _status(404, "NotFound", f'{plural} "{name}" not found')


def _json(body: Any, status: int = 200) -> web.Response:
    """As the API server sends it: exactly `application/json` (lightkube reads Status bodies only then)."""
    return web.Response(body=json.dumps(body).encode(), status=status, headers={"Content-Type": "application/json"})


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    return _json(body, status=code)


def _selector(text: str) -> list[tuple[str, str | None, bool]]:
    """`a=b,c!=d,e` as (key, value, equal); only the equality forms the runtime sends, and existence."""
    terms: list[tuple[str, str | None, bool]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "!=" in part:
            key, value = part.split("!=", 1)
            terms.append((key, value, False))
        elif "=" in part:
            key, value = part.split("=", 1)
            terms.append((key, value.lstrip("="), True))
        else:
            terms.append((part, None, True))
    return terms


def _field_values(obj: dict[str, Any]) -> dict[str, str]:
    """The fields a fieldSelector may name, as the API server offers them for the kinds here."""
    involved = obj.get("involvedObject") or {}
    return {"metadata.name": obj["metadata"].get("name", ""), "metadata.namespace": obj["metadata"].get("namespace", ""),
            **{f"involvedObject.{k}": str(v) for k, v in involved.items()}}


def _matches(labels: dict[str, str], terms: list[tuple[str, str | None, bool]]) -> bool:
    for key, value, equal in terms:
        if value is None:
            if key not in labels:
                return False
        elif (labels.get(key) == value) != equal:
            return False
    return True


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
