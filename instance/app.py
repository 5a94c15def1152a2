"""The instance's HTTP face (docs/instance-api.md): thin handlers over the browser host and driver."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
from litestar import Litestar, Request, Response, WebSocket, delete, get, post, put, websocket
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from playwright.async_api import Error as PlaywrightError

from fleet_contract import messages as m
from fleet_contract.catalogue import ModelSpec
from fleet_contract.catalogue import load as load_catalogue
from fleet_contract.codes import OUT_OF_REACH
from fleet_contract.selectors import MAX_BYTES as SELECTORS_MAX_BYTES
from fleet_contract.selectors import REVISION_PARAM, is_stale, read_revision
from instance import __version__
from instance.browser import BrowserHost, SessionRejected, SessionUntested
from instance.driver import Driver, GenerationRequest, GenerationResult
from instance.errors import BadInput, ErrorCode, GenerationError
from instance.images import decode_reference
from instance.liveview import serve_liveview
from instance.offered import options_spec, read_page_catalogue
from instance.pagecheck import (
    OverrideInvalid,
    applied_revision,
    check_syntax,
    diagnose,
    parse_override,
    record_revision,
    with_version,
    write_atomically,
)
from instance.session_store import SessionFormatError, SessionStore, normalize_session
from instance.settings import InstanceSettings
from instance.snapshots import REASON_PATTERN, Occasion, SnapshotKeeper, SnapshotNotFound, is_snapshot_id

log = logging.getLogger("instance")


MAX_UNKNOWN_MODELS_READ = 5  # picker models the packaged catalogue lacks whose run settings are read, per reading


class InstanceState:
    """Everything the handlers share: settings, the browser host, the driver and the one-task gate."""

    def __init__(self, settings: InstanceSettings) -> None:
        self.settings = settings
        self.host = BrowserHost(settings, SessionStore(settings.storage_state_path))
        self.driver = Driver(self.host, settings)
        self.snapshots = SnapshotKeeper(
            self.host, settings.snapshots_dir, interval_s=settings.snapshot_interval, kept=settings.snapshots_kept,
            timeout_s=max(10.0, 2 * settings.element_timeout_s),
        )
        self.driver.on_ui_changed = self._snapshot_ui_changed
        self.busy = False
        self.current_task: str | None = None
        self.counters = {"tasks": 0, "succeeded": 0, "failed": 0}
        self.started_at = datetime.now(UTC)
        self.last_success_at: datetime | None = None
        self._tasks_since_save = 0
        self._last_save = time.monotonic()
        self._background: set[asyncio.Task] = set()
        self.selectors_lock = asyncio.Lock()  # one override change at a time
        # The page's model picker and run settings as last read (instance/offered.py): Status's offered_* fields.
        self.page_catalogue: dict[str, Any] = {"offered_models": None, "offered_options": {}, "offered_read_at": None}
        # Not ready until the start's read is done: the gateway must not send a task into the menus it opens.
        self.start_read_done = False

    async def read_page_catalogue(self) -> bool:
        """Read what the page offers this account, holding the task slot (menus open and close); False if busy."""
        host = self.host
        if host.browser_state != "up" or host.login_state != "logged_in" or not self.claim("page-catalogue"):
            return False
        try:
            await self.read_page_catalogue_held()
        finally:
            self.release(None)
        return True

    async def read_page_catalogue_held(self) -> None:
        """The read itself, by a caller that holds the task slot."""
        host = self.host
        if host.browser_state != "up" or host.login_state != "logged_in":
            return
        await host.wait_reset()
        url_model = parse_qs(urlsplit(host.page_url or "").query).get("model", [None])[0]
        timeout_s = self.settings.element_timeout_s
        read = await read_page_catalogue(host.page, host.selectors, url_model, timeout_s=timeout_s)
        options = {**self.page_catalogue["offered_options"], **read["offered_options"]}
        # A model the packaged catalogue lacks: its own new chat, to read the ratios and sizes it offers.
        catalogue = load_catalogue()
        unknown = [e["id"] for e in read["offered_models"] or () if e["available"] and catalogue.find(e["id"]) is None
                   and catalogue.find_retired(e["id"]) is None and e["id"] not in options][:MAX_UNKNOWN_MODELS_READ]
        for model_id in unknown:
            try:
                await host.page.goto(f"{self.settings.aistudio_url.rstrip('/')}/prompts/new_chat?model={model_id}",
                                     wait_until="domcontentloaded", timeout=self.settings.page_load_timeout_s * 1000)
                await host.page.locator(host.selectors.css_union("prompt_textarea")).first.wait_for(
                    timeout=self.settings.page_load_timeout_s * 1000)
                shown = await read_page_catalogue(host.page, host.selectors, model_id, timeout_s=timeout_s)
            except PlaywrightError as exc:
                log.warning("reading the run settings of %s failed: %s", model_id, str(exc).splitlines()[0])
                continue
            if model_id in shown["offered_options"]:
                options[model_id] = shown["offered_options"][model_id]
        if unknown:
            try:
                await host.load_home()  # back on the instance's own model
            except Exception as exc:  # noqa: BLE001 - /status says why; the next task loads its own page
                log.warning("back to the home page after reading the models failed: %s", exc)
        self.page_catalogue = {**read, "offered_options": options}
        log.info("the page offers %d model(s); run settings read for %s",
                 len(read["offered_models"] or ()), ", ".join(read["offered_options"]) or "none")

    async def _snapshot_ui_changed(self, request: GenerationRequest, error: GenerationError) -> None:
        occasion = Occasion("ui_changed", task_id=request.task_id, error=error.message, role=error.role)
        await self.snapshots.after_failure(occasion)

    def claim(self, task_id: str) -> bool:
        """Take the one task slot; no await between check and set, so two requests cannot both win."""
        if self.busy:
            return False
        self.busy, self.current_task = True, task_id
        return True

    def release(self, result: GenerationResult | None) -> None:
        self.busy, self.current_task = False, None
        if result is not None:
            if result.success:
                self.last_success_at = datetime.now(UTC)
            self.counters["tasks"] += 1
            self.counters["succeeded" if result.success else "failed"] += 1
            self._tasks_since_save += 1

    def session_save_due(self) -> bool:
        s = self.settings
        return self._tasks_since_save >= s.session_save_every_tasks or (
            time.monotonic() - self._last_save >= s.session_save_every_s
        )

    async def save_session(self) -> None:
        self._tasks_since_save, self._last_save = 0, time.monotonic()
        await self.host.save_session()

    def in_background(self, coro) -> None:
        """Run after the answer is sent; kept referenced until done so it is not garbage-collected."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


# ---- access ------------------------------------------------------------------------------------


def require_token(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Bearer token on every endpoint but /healthz; only a WebSocket may pass it as ?token= (a browser cannot
    set its headers), so a token in an HTTP URL, where logs and referrers keep it, is never accepted."""
    expected = connection.app.state.instance.settings.api_token
    if not expected or handler.opt.get("public"):
        return
    header = connection.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        given = header[7:]
    elif connection.scope["type"] == "websocket":
        given = connection.query_params.get("token", "")
    else:
        given = ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise NotAuthorizedException("a valid bearer token is required")


def same_origin(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """A WebSocket opened by a web page must come from this service's own origin (its Host); one without an
    Origin comes from no page (the gateway's relay) and may pass: another site's page may not drive the browser."""
    origin = connection.headers.get("origin")
    if origin is None:
        return
    if not _origin_matches_host(origin, connection.headers.get("host", "")):
        raise PermissionDeniedException(f"WebSocket from a foreign origin refused: {origin[:100]}")


def _origin_matches_host(origin: str, host: str) -> bool:
    """`http://name:port` against the Host header `name:port`, default ports filled in from the origin's scheme."""
    try:
        parts = urlsplit(origin)
        default = {"http": 80, "https": 443}.get(parts.scheme)
        if default is None or not parts.hostname or not host:
            return False
        server = urlsplit(f"//{host}")
        return (parts.hostname, parts.port or default) == (server.hostname, server.port or default)
    except ValueError:
        return False


def _state(request: Request | WebSocket) -> InstanceState:
    return request.app.state.instance


# ---- request parsing -----------------------------------------------------------------------------


async def _json_body(request: Request, limit: int) -> Any:
    raw = await request.body()
    if len(raw) > limit:
        raise BadInput(f"request body is larger than {limit} bytes", 413)
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"request body is not valid JSON: {exc}", 400) from None


def parse_generation(body: Any, settings: InstanceSettings, page_options: dict[str, Any] | None = None) -> GenerationRequest:
    if not isinstance(body, dict):
        raise BadInput("request body must be a JSON object")
    prompt = _prompt_text(body.get("prompt"), "prompt", settings)
    model = _model(body.get("model"), settings, body.get("model_options"), page_options or {})
    ratio = _aspect_ratio(body.get("aspect_ratio"), model)
    image_size = _image_size(body.get("image_size"), model)
    refs = body.get("reference_images_b64") or []
    if not isinstance(refs, list):
        raise BadInput("'reference_images_b64' must be a list of base64 strings")
    if refs and not model.references:
        raise BadInput(f"model {model.id} takes no reference images")
    if len(refs) > settings.max_reference_images:
        raise BadInput(f"at most {settings.max_reference_images} reference images are allowed")
    references = [decode_reference(r, i, settings.max_reference_bytes, settings.max_reference_pixels)
                  for i, r in enumerate(refs)]
    task_id = body.get("task_id")
    task_id = task_id if isinstance(task_id, str) and 0 < len(task_id) <= 64 else uuid.uuid4().hex
    return GenerationRequest(
        prompt=prompt, aspect_ratio=ratio, references=references, task_id=task_id, model=model.id, image_size=image_size,
        **_chat_fields(body, settings),
    )


def _prompt_text(value: Any, name: str, settings: InstanceSettings) -> str:
    """A prompt field: non-empty text within the prompt limit, else a 422 naming it."""
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"'{name}' must be a non-empty string")
    if len(value) > settings.max_prompt_chars:
        raise BadInput(f"'{name}' is longer than {settings.max_prompt_chars} characters")
    return value


def _chat_fields(body: dict[str, Any], settings: InstanceSettings) -> dict[str, Any]:
    """keep_chat, continue_chat, turn_prompt and turn_references: a conversation's turns in one chat (GenerateRequest)."""
    keep = body.get("keep_chat", False)
    if not isinstance(keep, bool):
        raise BadInput("'keep_chat' must be true or false")
    continue_chat = body.get("continue_chat")
    if continue_chat is not None and not (isinstance(continue_chat, str) and 0 < len(continue_chat) <= 64):
        raise BadInput("'continue_chat' must be the task id (at most 64 characters) whose kept chat to continue")
    turn_prompt = body.get("turn_prompt")
    if turn_prompt is not None:
        turn_prompt = _prompt_text(turn_prompt, "turn_prompt", settings)
    own = body.get("turn_references", 0)
    given = len(body.get("reference_images_b64") or [])
    if isinstance(own, bool) or not isinstance(own, int) or not 0 <= own <= given:
        raise BadInput(f"'turn_references' must be a whole number from 0 to the {given} reference image(s) given")
    return {"keep_chat": keep, "continue_chat": continue_chat, "turn_prompt": turn_prompt, "turn_references": own}


def _model(value: Any, settings: InstanceSettings, model_options: Any = None,
           page_options: dict[str, Any] | None = None) -> ModelSpec:
    """The requested model (an earlier name resolves to its id; a shut-down one is refused naming its
    successor); none asked for: the instance's own. A model the packaged catalogue lacks is accepted with the
    options the gateway sends (`model_options`, what an account's page showed) or this page's own."""
    catalogue = load_catalogue()
    name = value if value not in (None, "") else settings.model
    if not isinstance(name, str):
        raise BadInput("'model' must be a string")
    spec = catalogue.find(name)
    choices = ", ".join(m.id for m in catalogue.driven)
    if spec is None and (retired := catalogue.find_retired(name)) is not None:
        raise BadInput(f"model {name[:80]!r} was shut down on {retired.retired_on}; use {retired.successor}")
    if spec is None:
        shown = options_spec(name, model_options) or options_spec(name, (page_options or {}).get(name))
        if shown is None:
            raise BadInput(f"unknown model {name[:80]!r}; use one of {choices}")
        return ModelSpec(id=name, name=shown["label"] or name, page="chat", aliases=(),
                         aspect_ratios=tuple(shown["ratios"]), image_sizes=tuple(shown["sizes"]), references=True,
                         driven=True)
    if not spec.driven:
        raise BadInput(f"model {spec.id!r} is on a page this instance cannot drive yet; use one of {choices}")
    sent = options_spec(spec.id, model_options)
    if sent is not None:  # the fleet's catalogue (an operator's edit) says what this model offers now
        return ModelSpec(id=spec.id, name=spec.name, page=spec.page, aliases=spec.aliases,
                         aspect_ratios=tuple(sent["ratios"]), image_sizes=tuple(sent["sizes"]),
                         references=spec.references, driven=True)
    return spec


def _aspect_ratio(value: Any, model: ModelSpec) -> str:
    ratio = value or "Auto"
    if not isinstance(ratio, str) or ratio not in model.ratio_choices:
        shown = ratio[:40] if isinstance(ratio, str) else ratio
        raise BadInput(f"model {model.id} has no aspect_ratio {shown!r}; use one of {', '.join(model.ratio_choices)}")
    return ratio


def _image_size(value: Any, model: ModelSpec) -> str | None:
    if value in (None, ""):
        return None  # the page's default size
    if not isinstance(value, str):
        raise BadInput("'image_size' must be a string")
    size = model.size(value)
    if size is None:
        offered = ", ".join(model.image_sizes) or "none (the page offers no size choice for it)"
        raise BadInput(f"model {model.id} has no image_size {value[:16]!r}; offered: {offered}")
    return size


def _result_body(task_id: str, result: GenerationResult) -> m.GenerateAnswer:
    return m.GenerateAnswer(
        success=result.success,
        task_id=task_id,
        images_b64=[base64.b64encode(png).decode("ascii") for png in result.images_png],
        text=result.text,
        error=result.error.to_message() if result.error else None,
        timings=result.timings,
        continued=result.continued,
    )


def _error(status: int, detail: str, **extra: Any) -> Response:
    return Response(m.ErrorAnswer(detail=detail, **extra), status_code=status)


# ---- handlers ------------------------------------------------------------------------------------


@get("/healthz", opt={"public": True}, sync_to_thread=False)
def healthz() -> m.Healthz:
    return m.Healthz()


@get("/status")
async def status(request: Request) -> m.Status:
    st = _state(request)
    host = st.host
    return m.Status(
        ready=host.ready and host.browser_state == "up" and st.start_read_done,
        browser=host.browser_state,
        login_state=host.login_state,
        reach=host.reach,
        page_error=host.page_error,
        browser_mode=st.settings.browser_mode,
        busy=st.busy,
        current_task=st.current_task,
        page_url=host.page_url,
        kept_chat=host.kept_chat[0] if host.kept_chat else None,
        counters=m.Counters(**st.counters, browser_restarts=host.restarts),
        version=__version__,
        selectors_version=host.selectors.version,
        started_at=st.started_at.isoformat(),
        **_session_health(st),
        **_offered_fields(st),
    )


def _offered_fields(st: InstanceState) -> dict[str, Any]:
    catalogue = st.page_catalogue
    return {
        "offered_models": None if catalogue["offered_models"] is None
        else [m.OfferedModel(**entry) for entry in catalogue["offered_models"]],
        "offered_options": {model: m.ModelOptions(**options) for model, options in catalogue["offered_options"].items()},
        "offered_read_at": catalogue["offered_read_at"],
    }


def _session_health(st: InstanceState) -> dict[str, str | None]:
    """When the login was last checked on the page, last saved to the volume, and when its cookies expire."""
    host = st.host
    return {
        "login_checked_at": _iso(host.login_checked_at),
        "session_saved_at": _iso(host.store.saved_at()),
        "session_expires_at": _iso(host.session_expires_at),
        "last_success_at": _iso(st.last_success_at),
    }


def _iso(when: datetime | float | None) -> str | None:
    if when is None:
        return None
    if isinstance(when, (int, float)):
        when = datetime.fromtimestamp(when, UTC)
    return when.isoformat()


@post("/login/check", status_code=200)
async def check_login(request: Request) -> Response:
    """Reload AI Studio while idle, so a signed-out idle instance is noticed now, not at its next task."""
    st = _state(request)
    if not st.claim("login-check"):
        return _error(409, "this instance is running a task", current_task=st.current_task)
    try:
        await st.host.wait_reset()
        await st.host.load_home()
    finally:
        st.release(None)
    host = st.host
    return Response(m.LoginCheck(login_state=host.login_state, reach=host.reach, page_error=host.page_error, **_session_health(st)))


@post("/generate")
async def generate(request: Request) -> Response:
    st = _state(request)
    body = await _json_body(request, st.settings.max_body_bytes)
    # In a thread: decoding reference images takes milliseconds to seconds, and /status must answer meanwhile.
    gen = await asyncio.to_thread(parse_generation, body, st.settings, st.page_catalogue["offered_options"])
    if not st.claim(gen.task_id):
        return _error(409, "this instance is already running a task", current_task=st.current_task)
    result: GenerationResult | None = None
    try:
        if not await _wait_browser(st.host, st.settings.page_load_timeout_s):
            return _error(503, "the browser is not running", retry_safe=True)
        log.info(
            "task %s: start (%s, ratio %s, size %s, %d reference(s))",
            gen.task_id, gen.model, gen.aspect_ratio, gen.image_size or "default", len(gen.references),
        )
        result = await st.driver.run(gen)
    finally:
        st.release(result)
    outcome = "ok" if result.success else result.error.code
    log.info("task %s: %s in %d ms", gen.task_id, outcome, result.timings.get("total_ms", 0))
    if st.session_save_due():
        st.in_background(st.save_session())
    return Response(_result_body(gen.task_id, result), status_code=200)


class BrowserNotUp(Exception):
    """The browser is starting or restarting and did not come up within the page-load timeout."""


async def _host_up(st: InstanceState) -> BrowserHost:
    """The host, once its browser is up (a call right after start waits for it); else 503, retry-safe."""
    deadline = time.monotonic() + st.settings.page_load_timeout_s
    if not await _wait_browser(st.host, st.settings.page_load_timeout_s):
        raise BrowserNotUp(f"the browser is not running (it is {st.host.browser_state})")
    while not st.start_read_done:  # the start's read of the page's models holds the page a moment longer
        if time.monotonic() > deadline:
            raise BrowserNotUp("the browser is still reading the models its page offers")
        await asyncio.sleep(0.1)
    return st.host


async def _wait_browser(host: BrowserHost, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while host.browser_state != "up" or not host.ready:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


@get("/session")
async def export_session(request: Request) -> m.StorageState:
    return m.StorageState(**await (await _host_up(_state(request))).export_session())


@put("/session")
async def import_session(request: Request) -> Response:
    st = _state(request)
    payload = await _json_body(request, st.settings.max_session_bytes)
    try:
        state = normalize_session(payload)
    except SessionFormatError as exc:
        raise BadInput(f"unreadable session: {exc}") from None
    await _host_up(st)
    if not st.claim("session-import"):
        return _error(409, "this instance is running a task; import the session when it is idle")
    return await _replace_login(st, lambda: st.host.replace_session(state), len(state["cookies"]))


@post("/session/restore", status_code=200)
async def restore_session(request: Request) -> Response:
    """Back to the login the last import replaced (kept on the volume), tried like any import."""
    st = _state(request)
    await _host_up(st)
    if not st.claim("session-restore"):
        return _error(409, "this instance is running a task; restore the login when it is idle")
    return await _replace_login(st, st.host.restore_previous, None)


async def _read_after_import(st: InstanceState) -> None:
    """A new login: what its page offers this account, read in the import's own slot (never fails the import)."""
    try:
        await st.read_page_catalogue_held()
    except Exception as exc:  # noqa: BLE001 - /diagnose reads it again
        log.warning("reading the page's models after the import failed: %s", exc)


async def _replace_login(st: InstanceState, replace: Any, cookies: int | None) -> Response:
    """Runs an import or a restore in the claimed task slot; every refusal leaves the working login as it was."""
    try:
        await replace()
        await _read_after_import(st)
    except SessionRejected as exc:
        raise BadInput(f"the session was not imported: {exc}") from None
    except SessionUntested as exc:
        return _error(503, f"the session was not imported: {exc}", retry_safe=True)
    except OSError as exc:
        # /data is full or read-only: the file is written atomically, so the stored login is the old one, whole.
        return _error(507, f"the session could not be stored on the instance's volume: {exc.strerror or exc}")
    finally:
        st.release(None)
    count = cookies if cookies is not None else len((await st.host.export_session())["cookies"])
    return Response(m.SessionImported(cookies=count, login_state=st.host.login_state))


@post("/navigate")
async def navigate(request: Request) -> Response:
    st = _state(request)
    body = await _json_body(request, 64 * 1024)
    if not isinstance(body, dict):
        raise BadInput("request body must be a JSON object")
    target = body.get("target")
    url = {"signin": st.settings.signin_page_url, "home": st.settings.new_chat_url}.get(target) or body.get("url")
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        raise BadInput("give 'target' ('signin' or 'home') or an http(s) 'url'")
    if st.busy:
        return _error(409, "this instance is running a task")
    await _host_up(st)
    await st.host.wait_reset()  # the page reset after a task would race this navigation
    await st.host.page.goto(url, wait_until="domcontentloaded", timeout=st.settings.page_load_timeout_s * 1000)
    return Response(m.Navigated(url=st.host.page.url, login_state=st.host.login_state))


@get("/screenshot")
async def screenshot(request: Request, format: str = "png") -> Response:
    kind = "jpeg" if format in ("jpeg", "jpg") else "png"
    data = await (await _host_up(_state(request))).page.screenshot(type=kind, **({"quality": 70} if kind == "jpeg" else {}))
    return Response(data, media_type=f"image/{kind}")


@post("/selectors/reload")
async def reload_selectors(request: Request) -> m.SelectorsReloaded:
    book = _state(request).host.reload_selectors()
    return m.SelectorsReloaded(version=book.version, source=book.source)


@get("/diagnose")
async def page_check(request: Request) -> m.PageCheck:
    """Which selector candidates match the page now; read-only, so it answers beside a running task."""
    st = _state(request)
    host = await _host_up(st)
    await st.read_page_catalogue()  # while idle only: it opens the picker and the run-settings selects
    report = await diagnose(host, busy=st.busy, timeout_s=st.settings.element_timeout_s)
    return msgspec.convert({**report, **st.page_catalogue}, m.PageCheck)


def _change_revision(request: Request) -> int | None:
    """The change's revision (?revision=N); a malformed one is refused before anything is read or written."""
    try:
        return read_revision(request.query_params.get(REVISION_PARAM))
    except ValueError:
        raise BadInput(f"'{REVISION_PARAM}' must be a positive integer", 400) from None


@put("/selectors")
async def install_selectors(request: Request, dry_run: bool = False) -> Response:
    """Validate an override (shape, known roles, selector syntax in the browser), write it, reload it; a change
    whose revision is not newer than the applied one is answered `stale` and changes nothing."""
    st = _state(request)
    revision = _change_revision(request)
    raw = await request.body()
    if len(raw) > SELECTORS_MAX_BYTES:
        raise BadInput(f"the override is larger than {SELECTORS_MAX_BYTES} bytes", 413)
    try:
        document = parse_override(raw)
        await check_syntax(await _host_up(st), document, st.settings.element_timeout_s)
    except OverrideInvalid as exc:
        raise BadInput(str(exc), exc.status_code) from None
    if dry_run:
        return Response(m.SelectorsInstalled(dry_run=True, roles=sorted(document.get("roles", {}))))
    async with st.selectors_lock:
        path = st.settings.selectors_override_path
        applied = await asyncio.to_thread(applied_revision, path)
        if is_stale(revision, applied):
            book = st.host.selectors
            log.info("selectors override revision %s ignored: revision %s is in force", revision, applied)
            return Response(m.SelectorsInstalled(version=book.version, source=book.source, revision=applied, stale=True))
        await asyncio.to_thread(write_atomically, path, with_version(document))
        await asyncio.to_thread(record_revision, path, revision)
        book = st.host.reload_selectors()
    log.info("selectors override installed: version %s, roles %s", book.version, ", ".join(document.get("roles", {})))
    return Response(m.SelectorsInstalled(version=book.version, source=book.source, roles=sorted(document.get("roles", {})),
                                         revision=revision))


@delete("/selectors", status_code=200)
async def remove_selectors(request: Request) -> m.SelectorsRemoved:
    """Back to the packaged selectors; idempotent (`removed` says whether there was an override); a removal whose
    revision is not newer than the applied change is answered `stale` and changes nothing."""
    st = _state(request)
    revision = _change_revision(request)
    async with st.selectors_lock:
        path = st.settings.selectors_override_path
        applied = await asyncio.to_thread(applied_revision, path)
        if is_stale(revision, applied):
            book = st.host.selectors
            return m.SelectorsRemoved(version=book.version, source=book.source, revision=applied, stale=True)
        removed = path.is_file()
        path.unlink(missing_ok=True)
        await asyncio.to_thread(record_revision, path, revision)
        book = st.host.reload_selectors()
    return m.SelectorsRemoved(removed=removed, version=book.version, source=book.source, revision=revision)


@get("/snapshots")
async def list_snapshots(request: Request) -> m.SnapshotList:
    keeper = _state(request).snapshots
    return msgspec.convert({"snapshots": await asyncio.to_thread(keeper.list)}, m.SnapshotList)


@post("/snapshots")
async def take_snapshot(request: Request) -> Response:
    """A snapshot now, whatever the interval (the operator or the canary asked); read-only on the page."""
    st = _state(request)
    body = await _json_body(request, 4096) if await request.body() else {}
    reason = body.get("reason", "manual") if isinstance(body, dict) else None
    if not isinstance(reason, str) or not REASON_PATTERN.fullmatch(reason):
        raise BadInput("'reason' must be a short lower-case word: a-z, 0-9 and _, at most 32 characters")
    await _host_up(st)
    if not st.busy:
        await st.host.wait_reset()  # the page as it settled after the last task, not half-way through its reset
    try:
        taken = await st.snapshots.take(Occasion(reason))
    except OSError as exc:
        return _error(507, f"the snapshot could not be stored on the instance's volume: {exc.strerror or exc}")
    except TimeoutError:
        return _error(503, "the page did not answer in time for a snapshot", retry_safe=True)
    return Response(msgspec.convert(taken, m.Snapshot), status_code=201)


@get("/snapshots/{snapshot_id:str}")
async def download_snapshot(request: Request, snapshot_id: FromPath[str]) -> Response:
    if not is_snapshot_id(snapshot_id):
        raise BadInput(f"not a snapshot id: {snapshot_id[:80]!r} (expected like 20261128-070000-123-ui_changed)")
    try:
        data = await asyncio.to_thread(_state(request).snapshots.zip, snapshot_id)
    except SnapshotNotFound:
        return _error(404, f"there is no snapshot {snapshot_id} on this instance")
    headers = {"Content-Disposition": f'attachment; filename="snapshot-{snapshot_id}.zip"', "X-Content-Type-Options": "nosniff"}
    return Response(data, media_type="application/zip", headers=headers)


@websocket("/liveview", guards=[same_origin])
async def liveview(socket: WebSocket) -> None:
    await serve_liveview(socket, _state(socket).host)


# ---- errors --------------------------------------------------------------------------------------


def _bad_input(_: Request, exc: BadInput) -> Response:
    return _error(exc.status_code, exc.message, error=m.TaskError(code=ErrorCode.BAD_INPUT, message=exc.message))


def _browser_not_up(_: Request, exc: BrowserNotUp) -> Response:
    return _error(503, str(exc), retry_safe=True)


def _browser_failure(_: Request, exc: PlaywrightError) -> Response:
    return _error(503, f"browser failure: {str(exc).splitlines()[0]}", retry_safe=True)


def _unexpected(_: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return _error(exc.status_code, exc.detail)
    log.exception("unexpected error")
    return _error(HTTP_500_INTERNAL_SERVER_ERROR, "internal error in the instance service")


# ---- wiring --------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _lifespan(app: Litestar) -> AsyncIterator[None]:
    st: InstanceState = app.state.instance
    starter = asyncio.create_task(_start_browser(st))
    saver = asyncio.create_task(_periodic_save(st))
    retrier = asyncio.create_task(_retry_unreachable(st))
    watcher = asyncio.create_task(st.host.watch_login_cookies())
    try:
        yield
    finally:
        for task in (starter, saver, retrier, watcher, *st._background):
            task.cancel()
        await asyncio.gather(starter, saver, retrier, watcher, return_exceptions=True)
        await st.host.close()


async def _start_browser(st: InstanceState) -> None:
    """Runs beside the server so /healthz answers while Chromium starts; then reads what the page offers."""
    try:
        await st.host.start()
    except Exception as exc:
        log.error("browser start failed: %s", exc)
        st.start_read_done = True
        return
    try:
        await st.read_page_catalogue()
    except Exception as exc:  # never fatal: /diagnose reads it again
        log.warning("reading the page's models at start failed: %s", exc)
    finally:
        st.start_read_done = True


async def _periodic_save(st: InstanceState) -> None:
    while True:
        await asyncio.sleep(min(60.0, st.settings.session_save_every_s))
        if st.host.browser_state == "up" and not st.busy and st.session_save_due():
            await st.save_session()


async def _retry_unreachable(st: InstanceState) -> None:
    """While AI Studio cannot be reached or is not served to this address, load it again now and then (holding
    the task slot, as a task would)."""
    while True:
        await asyncio.sleep(st.settings.unreachable_retry_s)
        host = st.host
        if host.reach not in OUT_OF_REACH or host.browser_state != "up" or not st.claim("reachability-check"):
            continue
        try:
            await host.load_home()
        except PlaywrightError:
            pass  # still unreachable: /status keeps saying why
        finally:
            st.release(None)


def create_app(settings: InstanceSettings | None = None) -> Litestar:
    settings = settings or InstanceSettings()
    return Litestar(
        route_handlers=[
            healthz,
            status,
            generate,
            export_session,
            import_session,
            navigate,
            screenshot,
            reload_selectors,
            page_check,
            install_selectors,
            remove_selectors,
            restore_session,
            liveview,
            check_login,
            list_snapshots,
            take_snapshot,
            download_snapshot,
        ],
        guards=[require_token],
        lifespan=[_lifespan],
        exception_handlers={BadInput: _bad_input, BrowserNotUp: _browser_not_up, PlaywrightError: _browser_failure, Exception: _unexpected},
        request_max_body_size=settings.max_body_bytes,
        state=State({"instance": InstanceState(settings)}),
        openapi_config=None,
    )
