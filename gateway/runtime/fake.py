"""A fake runtime for tests: in-process "containers" that answer the instance HTTP contract.

Nothing here is real: no container, no browser. The gateway reaches the fake instances through
`FakeRuntime.http_transport` (an httpx transport), so the reconciler's probes and the session
pass-through run over the same client code as with a real engine. Faults are injected by methods
whose names say what they break.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
import zipfile
from datetime import UTC, datetime
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from fleet_contract import messages as m
from fleet_contract import selectors as selectors_contract
from fleet_contract.catalogue import load as load_catalogue
from fleet_contract.codes import BrowserState, LoginState, Reach
from gateway.runtime.base import InstanceSpec, RuntimeError_, RuntimeState, RuntimeUnavailable

# A 1x1 transparent PNG, the fake's screenshot and generated image.
TINY_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
FAKE_DOMAIN = "fake-instance.invalid"


def numbered_png(number: int) -> bytes:
    """A 1x1 PNG of its own per number (its colour), for tests that follow which image went where."""
    from PIL import Image  # the gateway's own dependency, imported only by the tests that number images

    out = io.BytesIO()
    Image.new("RGB", (1, 1), (number % 256, number // 256 % 256, 7)).save(out, format="PNG")
    return out.getvalue()


@dataclass(frozen=True)
class FakeOutcome:
    """What one fake generation does: succeed, fail with an instance error code, answer an HTTP error,
    drop the connection mid-task (`reset`), refuse it (`refused`), or take `delay` seconds first."""

    kind: str = "ok"  # ok | error | http | reset | refused
    code: str | None = None
    retry_safe: bool = False
    status: int = 200
    delay: float | None = None  # None: the container's, else the runtime's generate_delay
    text: str | None = None  # what the page said with an error (AI Studio's words when it refuses a prompt)
    image: bytes | None = None  # the generated image's bytes (None: TINY_PNG, or the numbered one)

    @classmethod
    def ok(cls, delay: float | None = None, *, image: bytes | None = None) -> FakeOutcome:
        return cls("ok", delay=delay, image=image)

    @classmethod
    def error(cls, code: str, *, retry_safe: bool, delay: float | None = None, text: str | None = None) -> FakeOutcome:
        return cls("error", code=code, retry_safe=retry_safe, delay=delay, text=text)

    @classmethod
    def http(cls, status: int) -> FakeOutcome:
        return cls("http", status=status)

    @classmethod
    def reset(cls, delay: float | None = None) -> FakeOutcome:
        return cls("reset", delay=delay)

    @classmethod
    def refused(cls) -> FakeOutcome:
        return cls("refused")


@dataclass
class FakeGeneration:
    """One generation a fake instance ran (for assertions on spread and overlap)."""

    instance_id: str
    task_id: str | None
    started: float
    outcome: str
    ended: float | None = None
    prompt: str = ""
    aspect_ratio: str = ""
    references: list[str] = field(default_factory=list)
    model: str | None = None
    image_size: str | None = None
    model_options: dict[str, Any] | None = None  # what the gateway sent for a model the packaged catalogue lacks
    # A conversation's turn as the gateway asked it (GenerateRequest), and whether it went into the kept chat.
    keep_chat: bool = False
    continue_chat: str | None = None
    turn_prompt: str | None = None
    turn_references: int = 0
    continued: bool = False


@dataclass
class FakeContainer:
    """One fake instance: its "container" state and what its HTTP server would answer."""

    instance_id: str
    name: str
    token: str
    env: dict[str, str]
    phase: str = "running"
    exit_code: int | None = None
    ready_at: float = 0.0  # monotonic time when /status turns ready
    login_state: str = "logged_in"
    reach: str = "reachable"  # whether its page loads AI Studio
    page_error: str | None = None  # reported while reach is "unreachable"
    # What a reload of AI Studio would find (a sign-out the page has not seen yet); None: the same as login_state.
    account_login_state: str | None = None
    login_checked_at: str | None = None
    session_expires_at: str | None = None
    login_checks: int = 0
    followers: int = 0  # log readers waiting for the next line
    busy: bool = False
    refuses_selectors: bool = False
    hang_http: bool = False  # accepts connections but never answers
    generate_delay: float | None = None  # None: the runtime's generate_delay
    script: list[FakeOutcome] = field(default_factory=list)  # outcomes of the next generations, in order
    unavailable_models: set[str] = field(default_factory=set)  # its account cannot use these: model_unavailable
    session_failures: list[int] = field(default_factory=list)  # statuses of the next session imports (503, 507...)
    log_lines: list[str] = field(default_factory=list)
    log_changed: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    current_task: str | None = None
    last_success_at: str | None = None
    kept_chat: tuple[str, str | None] | None = None  # (task id, model) of the chat its page holds, as a real one
    fake_snapshots: list[m.Snapshot] = field(default_factory=list)  # newest first, as the real instance lists them
    # What its page's model picker offers beyond the packaged models (offer_fake_model): id -> {label, ratios, sizes}.
    fake_offered_models: dict[str, dict[str, Any]] = field(default_factory=dict)
    fake_missing_roles: list[str] = field(default_factory=list)  # roles its page check does not find (a page change)
    screenshot: tuple[bytes, str] = (TINY_PNG, "image/png")  # what /screenshot answers: its body and Content-Type

    @property
    def endpoint(self) -> str:
        return f"http://{self.instance_id}.{FAKE_DOMAIN}"

    def log(self, line: str) -> None:
        self.log_lines.append(line)
        self.log_changed.set()
        self.log_changed = asyncio.Event()


class FakeRuntime:
    """Implements the runtime protocol in memory, with fault injection."""

    name = "fake"

    def __init__(self, *, ready_delay: float = 0.0, start_delay: float = 0.0, login_state: str = "logged_in") -> None:
        self.ready_delay = ready_delay  # how long a started instance answers ready=false
        self.start_delay = start_delay  # how long start() itself takes
        self.default_login_state = login_state
        self.containers: dict[str, FakeContainer] = {}
        self.volumes: dict[str, dict[str, Any]] = {}  # per instance: the stored session, like /data
        self.calls: list[tuple[str, str]] = []  # (method, instance id), for assertions
        self.generate_delay = 0.0
        self.numbered_images = False  # True: the n-th generation answers numbered_png(n), not TINY_PNG
        # While set and not yet fired, every generation holds after its delay: a test decides when the pool frees.
        self.generation_gate: asyncio.Event | None = None
        self.selectors_puts = 0  # PUT /selectors begun (not dry runs)
        self.held_selectors_puts: set[int] = set()  # which PUTs (1 = the first) wait while listed: pushes in flight
        self.selectors_removal_delay = 0.0  # how long DELETE /selectors takes (a delivery at start in flight)
        self.selectors_removals = {"begun": 0, "done": 0}
        self.generations: list[FakeGeneration] = []
        self.busy_rejections = 0  # /generate calls that found the instance busy (the gateway's lease was bypassed)
        self._engine_down_reason: str | None = None
        self._start_failures: dict[str | None, list[str]] = {}
        self._exit_on_start: set[str] = set()
        self._never_ready: set[str] = set()
        # The media type the fake instance gives a snapshot zip (a test sets another: the gateway must not pass it on).
        self.fake_snapshot_media_type = "application/zip"
        self.http_transport = httpx.MockTransport(self._handle)
        # Set to `kubernetes` or `remote_docker` to act as an engine that cannot reach this machine's loopback.
        self.loopback_problem: str | None = None

    def loopback_proxy_problem(self) -> str | None:
        return self.loopback_problem

    # Fault injection -----------------------------------------------------------------------------

    def engine_down(self, reason: str = "injected engine outage") -> None:
        self._engine_down_reason = reason

    def engine_up(self) -> None:
        self._engine_down_reason = None

    def fail_next_starts(self, count: int = 1, *, instance_id: str | None = None, reason: str = "injected start failure") -> None:
        """The next `count` starts (of one instance, or of any) raise RuntimeError_."""
        self._start_failures.setdefault(instance_id, []).extend([reason] * count)

    def exit_on_start(self, instance_id: str) -> None:
        """The instance's process dies right after its container starts (exit code 1)."""
        self._exit_on_start.add(instance_id)

    def never_ready(self, instance_id: str) -> None:
        self._never_ready.add(instance_id)

    def kill(self, instance_id: str, exit_code: int = 137) -> None:
        """The container dies, as if killed from outside."""
        container = self.containers[instance_id]
        container.phase, container.exit_code = "exited", exit_code
        container.log(f"killed, exit code {exit_code}")

    def vanish(self, instance_id: str) -> None:
        """The container disappears, as if removed from outside."""
        self.containers.pop(instance_id, None)

    def hang(self, instance_id: str, hang: bool = True) -> None:
        """The instance's HTTP server stops answering (its requests time out)."""
        self.containers[instance_id].hang_http = hang

    def script_generations(self, instance_id: str, *outcomes: FakeOutcome) -> None:
        """The instance's next generations do these, in order; then it succeeds again."""
        self.containers[instance_id].script.extend(outcomes)

    def refuse_model(self, instance_id: str, model: str) -> None:
        """The instance's account cannot use `model`: every generation with it answers model_unavailable."""
        self.containers[instance_id].unavailable_models.add(model)

    def offer_fake_model(self, instance_id: str, model: str, ratios: list[str], sizes: list[str], label: str | None = None) -> None:
        """The instance's page offers `model` (one the packaged catalogue may lack) with these run settings; its
        /status lists it beside the packaged models, and its /generate runs it."""
        self.containers[instance_id].fake_offered_models[model] = {"label": label or model, "ratios": ratios, "sizes": sizes}

    def refuse_selectors(self, instance_id: str) -> None:
        """The instance answers 500 to every selectors change (a push that fails on one instance only)."""
        self.containers[instance_id].refuses_selectors = True

    def fail_session_imports(self, instance_id: str, *statuses: int) -> None:
        """The next session imports answer these statuses (a busy or starting browser, a full volume)."""
        self.containers[instance_id].session_failures.extend(statuses)

    def script_screenshot(self, instance_id: str, body: bytes, content_type: str) -> None:
        """What the instance's /screenshot answers from now on (a compromised instance's page, for instance)."""
        self.containers[instance_id].screenshot = (body, content_type)

    def set_generate_delay(self, instance_id: str, delay: float | None) -> None:
        self.containers[instance_id].generate_delay = delay

    def set_login_state(self, instance_id: str, login_state: str) -> None:
        self.containers[instance_id].login_state = login_state

    def set_unreachable(self, instance_id: str, page_error: str) -> None:
        """Its page cannot load AI Studio (a dead proxy, DNS); the login state stays what it was."""
        container = self.containers[instance_id]
        container.reach, container.page_error = "unreachable", page_error

    def set_out_of_region(self, instance_id: str, page_error: str) -> None:
        """AI Studio sends its page to the "available regions" page: this address is outside Google's regions."""
        container = self.containers[instance_id]
        container.reach, container.page_error = "region_blocked", page_error

    def set_reachable(self, instance_id: str) -> None:
        container = self.containers[instance_id]
        container.reach, container.page_error = "reachable", None

    def sign_out_silently(self, instance_id: str, login_state: str = "needs_login") -> None:
        """The account is signed out, but the idle page has not been reloaded: /status still says the old state."""
        self.containers[instance_id].account_login_state = login_state

    def set_login_checked_at(self, instance_id: str, when: str | None) -> None:
        self.containers[instance_id].login_checked_at = when

    def set_session_expiry(self, instance_id: str, when: str | None) -> None:
        self.containers[instance_id].session_expires_at = when

    def fake_snapshot(self, instance_id: str, reason: str = "ui_changed", *, task_id: str | None = None) -> m.Snapshot:
        """A page snapshot on the fake instance, as a real one keeps after a ui_changed failure (fake files)."""
        container = self.containers[instance_id]
        now = datetime.now(UTC)
        stamp = f"{now:%Y%m%d-%H%M%S}-{(now.microsecond // 1000 + len(container.fake_snapshots)) % 1000:03d}"
        files = {name: len(data) for name, data in _fake_snapshot_files(reason).items()}
        snapshot = m.Snapshot(
            id=f"{stamp}-{reason}", taken_at=now.isoformat(), reason=reason, task_id=task_id,
            url=f"https://{FAKE_DOMAIN}/prompts/new_chat", error="injected ui_changed" if task_id else None,
            files=files, size_bytes=sum(files.values()),
        )
        container.fake_snapshots.insert(0, snapshot)
        return snapshot

    def fake_page_change(self, instance_id: str, *missing_roles: str) -> None:
        """The fake's page check (`/diagnose`) stops finding these expected roles, as after AI Studio changed its
        page; with none, it finds every role again."""
        self.containers[instance_id].fake_missing_roles = list(missing_roles)

    def plant(self, instance_id: str, *, token: str = "planted", running: bool = True) -> FakeContainer:
        """A labeled container the gateway did not start, e.g. left over from a deleted row."""
        container = FakeContainer(instance_id, "planted", token, {}, login_state=self.default_login_state)
        container.phase = "running" if running else "exited"
        self.containers[instance_id] = container
        return container

    def starts(self, instance_id: str | None = None) -> int:
        return sum(1 for method, iid in self.calls if method == "start" and instance_id in (None, iid))

    # Runtime protocol ----------------------------------------------------------------------------

    async def setup(self) -> None:
        self._check_engine()

    async def close(self) -> None:
        """Instances outlive the gateway: nothing is stopped."""

    async def start(self, spec: InstanceSpec) -> RuntimeState:
        self._check_engine()
        self.calls.append(("start", spec.instance_id))
        if self.start_delay:
            await asyncio.sleep(self.start_delay)
        self._check_engine()
        failure = self._pop_start_failure(spec.instance_id)
        if failure:
            raise RuntimeError_(failure)
        existing = self.containers.get(spec.instance_id)
        if existing is not None and existing.phase == "running":
            return self._state(existing)
        container = FakeContainer(
            spec.instance_id,
            spec.name,
            spec.token,
            spec.environ(),
            login_state=self.volumes.get(spec.instance_id, {}).get("login_state", self.default_login_state),
        )
        never = spec.instance_id in self._never_ready
        container.ready_at = float("inf") if never else time.monotonic() + self.ready_delay
        container.login_checked_at = datetime.now(UTC).isoformat()  # a real instance loads AI Studio at start
        container.log(f"instance {spec.name} starting")
        if spec.instance_id in self._exit_on_start:
            container.phase, container.exit_code = "exited", 1
            container.log("browser failed to launch, exit code 1")
        self.containers[spec.instance_id] = container
        self.volumes.setdefault(spec.instance_id, {})
        return self._state(container)

    async def stop(self, instance_id: str, timeout: float = 10.0) -> None:
        self._check_engine()
        self.calls.append(("stop", instance_id))
        container = self.containers.get(instance_id)
        if container is not None and container.phase == "running":
            container.phase, container.exit_code = "exited", 0
            container.log("stopped")

    async def remove(self, instance_id: str, *, remove_volume: bool) -> None:
        self._check_engine()
        self.calls.append(("remove", instance_id))
        container = self.containers.pop(instance_id, None)
        if container is not None:
            container.phase = "missing"
            container.log_changed.set()
        if remove_volume:
            self.volumes.pop(instance_id, None)

    async def inspect(self, instance_id: str) -> RuntimeState:
        self._check_engine()
        container = self.containers.get(instance_id)
        return self._state(container) if container else RuntimeState(instance_id, "missing")

    async def list_managed(self) -> dict[str, RuntimeState]:
        self._check_engine()
        return {iid: self._state(c) for iid, c in self.containers.items()}

    async def logs(self, instance_id: str, *, tail: int = 200, follow: bool = False) -> AsyncIterator[str]:
        self._check_engine()
        container = self.containers.get(instance_id)
        if container is None:
            return
        sent = max(0, len(container.log_lines) - tail)
        while True:
            changed = container.log_changed
            for line in container.log_lines[sent:]:
                yield line
            sent = len(container.log_lines)
            if not follow or container.phase != "running":
                return
            container.followers += 1  # tests wait for a reader before they write what it should see
            try:
                await changed.wait()
            finally:
                container.followers -= 1

    # Internals -----------------------------------------------------------------------------------

    def _check_engine(self) -> None:
        if self._engine_down_reason is not None:
            raise RuntimeUnavailable(self.name, self._engine_down_reason)

    def _pop_start_failure(self, instance_id: str) -> str | None:
        for key in (instance_id, None):
            pending = self._start_failures.get(key)
            if pending:
                return pending.pop(0)
        return None

    def _state(self, container: FakeContainer) -> RuntimeState:
        running = container.phase == "running"
        return RuntimeState(
            container.instance_id,
            container.phase,  # type: ignore[arg-type]
            handle=f"fake-{container.instance_id[:12]}",
            endpoint=container.endpoint if running else None,
            exit_code=container.exit_code,
        )

    # The fake instance's HTTP server -------------------------------------------------------------

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        instance_id = request.url.host.removesuffix(f".{FAKE_DOMAIN}")
        container = self.containers.get(instance_id)
        if container is None or container.phase != "running":
            raise httpx.ConnectError("connection refused", request=request)
        if container.hang_http:
            await asyncio.sleep(3600)
        path, method = request.url.path, request.method
        if path == "/healthz":
            return httpx.Response(200, json={"ok": True})
        if request.headers.get("authorization") != f"Bearer {container.token}":
            return httpx.Response(401, json={"detail": "missing or wrong token"})
        route = _ROUTES.get((method, path))
        if route is None and method == "GET" and path.startswith("/snapshots/"):
            route = FakeRuntime._fake_snapshot_zip
        if route is None:
            return httpx.Response(404, json={"detail": "not found"})
        return await route(self, container, request)

    async def _status(self, container: FakeContainer, _request: httpx.Request) -> httpx.Response:
        ready = time.monotonic() >= container.ready_at
        return _answer(m.Status(
            ready=ready,
            browser=BrowserState.UP if ready else BrowserState.STARTING,
            login_state=container.login_state if ready else LoginState.UNKNOWN,
            reach=container.reach if ready else Reach.UNKNOWN,
            page_error=container.page_error if ready else None,
            login_checked_at=container.login_checked_at,
            session_expires_at=container.session_expires_at,
            busy=container.busy,
            current_task=container.current_task,
            kept_chat=container.kept_chat[0] if container.kept_chat else None,
            version="fake",
            browser_mode="fake",
            page_url=f"https://{FAKE_DOMAIN}/prompts/new_chat" if ready else None,
            selectors_version=self._selectors_version(container),
            started_at=container.started_at,
            **self._saved_and_success(container),
            **(_fake_page_catalogue(container) if ready else {}),
        ))

    def _selectors_version(self, container: FakeContainer) -> str:
        return (self.volumes.get(container.instance_id, {}).get("selectors") or {}).get("version", "packaged")

    def _saved_and_success(self, container: FakeContainer) -> dict[str, str | None]:
        saved = self.volumes.get(container.instance_id, {}).get("session_saved_at")
        return {"session_saved_at": saved, "last_success_at": container.last_success_at}

    async def _check_login(self, container: FakeContainer, _request: httpx.Request) -> httpx.Response:
        """Like the real instance: reloads the page (when idle), which reveals the account's real state."""
        if container.busy:
            return httpx.Response(409, json={"detail": "this instance is running a task"})
        container.login_checks += 1
        if container.account_login_state is not None:
            container.login_state, container.account_login_state = container.account_login_state, None
        container.login_checked_at = datetime.now(UTC).isoformat()
        return _answer(m.LoginCheck(
            login_state=container.login_state, reach=container.reach, page_error=container.page_error,
            login_checked_at=container.login_checked_at, session_expires_at=container.session_expires_at,
            **self._saved_and_success(container),
        ))

    async def _get_session(self, container: FakeContainer, _request: httpx.Request) -> httpx.Response:
        stored = self.volumes.get(container.instance_id, {}).get("session", {"cookies": [], "origins": []})
        return httpx.Response(200, json=stored)

    async def _put_session(self, container: FakeContainer, request: httpx.Request) -> httpx.Response:
        if container.busy:
            return httpx.Response(409, json={"detail": "busy"})
        try:
            body = json.loads(request.content)
        except ValueError as exc:
            return httpx.Response(422, json={"detail": f"not JSON: {exc}"})
        cookies = body if isinstance(body, list) else body.get("cookies") if isinstance(body, dict) else None
        if not isinstance(cookies, list):
            return httpx.Response(422, json={"detail": "no cookie list found"})
        if container.session_failures:
            status = container.session_failures.pop(0)
            return _answer(m.ErrorAnswer(detail=f"injected HTTP {status}", retry_safe=True), status)
        state = {"cookies": cookies, "origins": body.get("origins", []) if isinstance(body, dict) else []}
        return self._adopt_session(container, state)

    def _adopt_session(self, container: FakeContainer, state: dict[str, Any]) -> httpx.Response:
        """Like the real instance: a login that does not sign in (no cookies, or a cookie valued "dead...") is
        refused and changes nothing; one that does replaces the working one, which is kept as the previous."""
        cookies = state["cookies"]
        if not cookies or any(str(c.get("value", "")).startswith("dead") for c in cookies if isinstance(c, dict)):
            detail = "the session was not imported: the session is not signed in: AI Studio sent the page to Google's sign-in"
            return _answer(m.ErrorAnswer(detail=detail), 422)
        container.login_state = "logged_in"
        volume = self.volumes.setdefault(container.instance_id, {})
        if "session" in volume:
            volume["previous_session"] = volume["session"]
        volume.update(session=state, login_state=container.login_state, session_saved_at=datetime.now(UTC).isoformat())
        return _answer(m.SessionImported(cookies=len(cookies), login_state=container.login_state))

    async def _restore_session(self, container: FakeContainer, _request: httpx.Request) -> httpx.Response:
        if container.busy:
            return _answer(m.ErrorAnswer(detail="busy"), 409)
        previous = self.volumes.get(container.instance_id, {}).get("previous_session")
        if previous is None:
            detail = "the session was not imported: there is no previous login on this instance's volume"
            return _answer(m.ErrorAnswer(detail=detail), 422)
        return self._adopt_session(container, previous)

    async def _screenshot(self, container: FakeContainer, _request: httpx.Request) -> httpx.Response:
        body, content_type = container.screenshot
        return httpx.Response(200, content=body, headers={"content-type": content_type})

    async def _put_selectors(self, container: FakeContainer, request: httpx.Request) -> httpx.Response:
        """Stored in the volume like the real instance's override file; a dry run only answers."""
        if container.refuses_selectors:
            return httpx.Response(500, json={"detail": "injected selectors failure"})
        try:
            document = json.loads(request.content)
        except ValueError as exc:
            return httpx.Response(400, json={"detail": f"not JSON: {exc}"})
        version = document.get("version") or "override-fake"
        if request.url.params.get("dry_run") == "true":
            return _answer(m.SelectorsInstalled(dry_run=True, roles=sorted(document.get("roles", {}))))
        self.selectors_puts += 1
        ordinal = self.selectors_puts
        while ordinal in self.held_selectors_puts:  # a push in flight until the test lets it land
            await asyncio.sleep(0.01)
        volume = self.volumes.setdefault(container.instance_id, {})
        revision = selectors_contract.read_revision(request.url.params.get(selectors_contract.REVISION_PARAM))
        if selectors_contract.is_stale(revision, volume.get("selectors_revision")):
            current = (volume.get("selectors") or {}).get("version", "packaged")
            return _answer(m.SelectorsInstalled(version=current, revision=volume["selectors_revision"], stale=True))
        volume["selectors"], volume["selectors_revision"] = document, revision
        return _answer(m.SelectorsInstalled(version=version, roles=sorted(document.get("roles", {})), revision=revision))

    async def _delete_selectors(self, container: FakeContainer, request: httpx.Request) -> httpx.Response:
        """Like the real instance: a removal not newer than the applied change is answered stale."""
        if container.refuses_selectors:
            return httpx.Response(500, json={"detail": "injected selectors failure"})
        self.selectors_removals["begun"] += 1
        await asyncio.sleep(self.selectors_removal_delay)
        volume = self.volumes.setdefault(container.instance_id, {})
        revision = selectors_contract.read_revision(request.url.params.get(selectors_contract.REVISION_PARAM))
        self.selectors_removals["done"] += 1
        if selectors_contract.is_stale(revision, volume.get("selectors_revision")):
            current = (volume.get("selectors") or {}).get("version", "packaged")
            return _answer(m.SelectorsRemoved(version=current, source="override", revision=volume["selectors_revision"],
                                              stale=True))
        removed = volume.pop("selectors", None) is not None
        volume["selectors_revision"] = revision
        return _answer(m.SelectorsRemoved(removed=removed, version="packaged", source="package", revision=revision))

    async def _diagnose(self, container: FakeContainer, _request: httpx.Request) -> httpx.Response:
        """A page check of a page that has every role (no browser here)."""
        override = self.volumes.get(container.instance_id, {}).get("selectors")
        candidate = m.CandidateCheck(selector="textarea", count=1, visible=True)
        roles = [m.RoleCheck(role="prompt_textarea", expected=True, matched="textarea", index=0, count=1, visible=True,
                             candidates=[candidate])]
        return _answer(m.PageCheck(
            checked_at=datetime.now(UTC).isoformat(), url=f"https://{FAKE_DOMAIN}/prompts/new_chat",
            login_state=container.login_state, browser=BrowserState.UP, busy=container.busy, roles=roles,
            missing_expected=list(container.fake_missing_roles),
            selectors_version=(override or {}).get("version", "packaged"), selectors_source="fake",
        ))

    async def _fake_snapshots(self, container: FakeContainer, _request: httpx.Request) -> httpx.Response:
        return _answer(m.SnapshotList(snapshots=container.fake_snapshots))

    async def _fake_take_snapshot(self, container: FakeContainer, request: httpx.Request) -> httpx.Response:
        reason = json.loads(request.content or b"{}").get("reason", "manual")
        if not re.fullmatch(m.SNAPSHOT_REASON_PATTERN, reason):
            return _answer(m.ErrorAnswer(detail="'reason' must be a short lower-case word"), 422)
        return _answer(self.fake_snapshot(container.instance_id, reason), 201)

    async def _fake_snapshot_zip(self, container: FakeContainer, request: httpx.Request) -> httpx.Response:
        """Like the real instance: 422 for an id of another shape, 404 for an unknown one, else a zip of fake files."""
        snapshot_id = request.url.path.removeprefix("/snapshots/")
        if not re.fullmatch(m.SNAPSHOT_ID_PATTERN, snapshot_id):
            return _answer(m.ErrorAnswer(detail=f"not a snapshot id: {snapshot_id[:80]!r}"), 422)
        snapshot = next((s for s in container.fake_snapshots if s.id == snapshot_id), None)
        if snapshot is None:
            return _answer(m.ErrorAnswer(detail=f"there is no snapshot {snapshot_id} on this instance"), 404)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in _fake_snapshot_files(snapshot.reason).items():
                archive.writestr(f"{snapshot_id}/{name}", data)
        headers = {"content-type": self.fake_snapshot_media_type, "content-disposition": "inline"}
        return httpx.Response(200, content=buffer.getvalue(), headers=headers)

    async def _navigate(self, container: FakeContainer, _request: httpx.Request) -> httpx.Response:
        if container.busy:
            return _answer(m.ErrorAnswer(detail="this instance is running a task"), 409)
        return _answer(m.Navigated(url=f"https://{FAKE_DOMAIN}/prompts/new_chat", login_state=container.login_state))

    async def _generate(self, container: FakeContainer, request: httpx.Request) -> httpx.Response:
        if container.busy:
            self.busy_rejections += 1
            return httpx.Response(409, json={"detail": "this instance is already running a task", "current_task": container.current_task})
        body = json.loads(request.content or b"{}")
        problem = _bad_generation(body)
        if problem is not None:  # as the real instance answers bad input
            return httpx.Response(422, json={"detail": problem, "error": {"code": "bad_input", "message": problem}})
        task_id = body.get("task_id")
        if body.get("model") in container.unavailable_models:
            outcome = FakeOutcome.error("model_unavailable", retry_safe=True)
        else:
            outcome = container.script.pop(0) if container.script else FakeOutcome.ok()
        if outcome.kind == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if outcome.kind == "http":
            return httpx.Response(outcome.status, json={"detail": f"injected HTTP {outcome.status}"})
        delay = next(d for d in (outcome.delay, container.generate_delay, self.generate_delay) if d is not None)
        record = FakeGeneration(
            container.instance_id, task_id, time.monotonic(), outcome.code or outcome.kind,
            prompt=body.get("prompt", ""), aspect_ratio=body.get("aspect_ratio", ""),
            references=list(body.get("reference_images_b64") or []),
            model=body.get("model"), image_size=body.get("image_size"), model_options=body.get("model_options"),
            keep_chat=body.get("keep_chat", False), continue_chat=body.get("continue_chat"),
            turn_prompt=body.get("turn_prompt"), turn_references=body.get("turn_references", 0),
        )
        kept, container.kept_chat = container.kept_chat, None  # any task leaves or continues the kept chat
        record.continued = body.get("continue_chat") is not None and kept == (body.get("continue_chat"), body.get("model"))
        self.generations.append(record)
        container.busy, container.current_task = True, task_id
        try:
            await self._generating(container, delay, request)
            if outcome.kind == "reset":
                raise httpx.ReadError("connection reset by peer", request=request)
        finally:
            container.busy, container.current_task = False, None
            record.ended = time.monotonic()
        timings = {"total_ms": int(delay * 1000)}
        if outcome.kind == "error":
            if outcome.code == "needs_login":
                container.login_state = "needs_login"  # as a real instance notices on its page
            if outcome.code == "ui_changed":
                self.fake_snapshot(container.instance_id, task_id=task_id)  # as a real instance copies its page
            error = m.TaskError(code=outcome.code, message=f"injected {outcome.code}", retry_safe=outcome.retry_safe)
            return _answer(m.GenerateAnswer(success=False, task_id=task_id, error=error, text=outcome.text, timings=timings))
        container.last_success_at = datetime.now(UTC).isoformat()
        png = numbered_png(len(self.generations)) if self.numbered_images else TINY_PNG
        image = base64.b64encode(outcome.image if outcome.image is not None else png).decode()
        if record.keep_chat and task_id:
            container.kept_chat = (task_id, body.get("model"))
        return _answer(m.GenerateAnswer(success=True, task_id=task_id, images_b64=[image], text="fake text", timings=timings,
                                        continued=record.continued))

    async def _generating(self, container: FakeContainer, delay: float, request: httpx.Request) -> None:
        """Sleeps through the generation; a container killed or removed meanwhile drops the connection."""
        deadline = time.monotonic() + delay
        while True:
            if self.containers.get(container.instance_id) is not container or container.phase != "running":
                raise httpx.ReadError("connection reset by peer (container gone)", request=request)
            remaining = deadline - time.monotonic()
            if remaining <= 0 and (self.generation_gate is None or self.generation_gate.is_set()):
                return
            await asyncio.sleep(min(remaining, 0.01) if remaining > 0 else 0.01)


def _answer(message: msgspec.Struct, status: int = 200) -> httpx.Response:
    """The fake answers with the contract's Structs, as the real instance does."""
    return httpx.Response(status, content=m.encode(message), headers={"content-type": "application/json"})


def _fake_snapshot_files(reason: str) -> dict[str, bytes]:
    """What a fake snapshot holds: the files a real one has, with made-up content."""
    return {
        "page.html": b"<html><body><p>fake page</p></body></html>",
        "screenshot.png": TINY_PNG,
        "pagecheck.json": b'{"missing_expected": ["run_button"]}',
        "meta.json": json.dumps({"reason": reason, "fake": True}).encode(),
    }


def _fake_page_catalogue(container: FakeContainer) -> dict[str, Any]:
    """A fake page's model picker: the packaged models (minus those its account may not use) and its fake extras."""
    packaged = load_catalogue().driven
    models = [m.OfferedModel(id=spec.id, label=spec.name, available=spec.id not in container.unavailable_models)
              for spec in packaged]
    models += [m.OfferedModel(id=model, label=extra["label"]) for model, extra in container.fake_offered_models.items()]
    options = {model: m.ModelOptions(ratios=list(extra["ratios"]), sizes=list(extra["sizes"]), label=extra["label"])
               for model, extra in container.fake_offered_models.items()}
    return {"offered_models": models, "offered_options": options, "offered_read_at": container.started_at}


def _bad_generation(body: object) -> str | None:
    """What the real instance refuses with 422 before it touches the page (docs/instance-api.md)."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "'prompt' must be a non-empty string"
    return None


_ROUTES = {
    ("GET", "/status"): FakeRuntime._status,
    ("POST", "/login/check"): FakeRuntime._check_login,
    ("GET", "/session"): FakeRuntime._get_session,
    ("PUT", "/session"): FakeRuntime._put_session,
    ("POST", "/session/restore"): FakeRuntime._restore_session,
    ("GET", "/screenshot"): FakeRuntime._screenshot,
    ("POST", "/navigate"): FakeRuntime._navigate,
    ("PUT", "/selectors"): FakeRuntime._put_selectors,
    ("DELETE", "/selectors"): FakeRuntime._delete_selectors,
    ("GET", "/diagnose"): FakeRuntime._diagnose,
    ("POST", "/generate"): FakeRuntime._generate,
    ("GET", "/snapshots"): FakeRuntime._fake_snapshots,
    ("POST", "/snapshots"): FakeRuntime._fake_take_snapshot,
}
