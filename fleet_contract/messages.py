"""Every instance endpoint's request and answer, as msgspec Structs (docs/instance-api.md has the prose).

The instance answers with these, the gateway decodes with them, and the gateway's fake instance answers with
them too; `ROUTES` names the Struct of each route, and a test holds it against the instance's routes. Adding a
field to the status is a field here, the instance that fills it, and the gateway code that reads it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from fleet_contract.codes import BrowserState, LoginState, Reach


class _Message(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """Unknown keys are ignored on decode, so either side may be one release ahead."""


# ---- /status and the login check -----------------------------------------------------------------


class SessionHealth(_Message, kw_only=True):
    """When the login was last checked on the page, saved to the volume, and when its cookies expire (ISO 8601)."""

    login_checked_at: str | None = None
    session_saved_at: str | None = None
    session_expires_at: str | None = None
    last_success_at: str | None = None


class Counters(_Message, kw_only=True):
    tasks: int = 0
    succeeded: int = 0
    failed: int = 0
    browser_restarts: int = 0


class OfferedModel(_Message, kw_only=True):
    """One entry of the page's model picker, as this account sees it."""

    id: str
    label: str | None = None
    available: bool = True  # False: listed, but "not available to your account"


class ModelOptions(_Message, kw_only=True):
    """What the run settings offer for one model: aspect ratios (besides Auto) and output sizes (may be none)."""

    ratios: list[str] = []
    sizes: list[str] = []
    label: str | None = None


class PageCatalogue(_Message, kw_only=True):
    """The models the page offers to this account, and the run settings of those it looked at."""

    offered_models: list[OfferedModel] | None = None  # None: not read yet (or the page shows no picker)
    offered_options: dict[str, ModelOptions] = {}
    offered_read_at: str | None = None


class Status(SessionHealth, kw_only=True):
    """`GET /status`: what the instance is doing, its login, and whether its page reaches AI Studio."""

    ready: bool = False
    browser: BrowserState = BrowserState.STARTING
    login_state: LoginState = LoginState.UNKNOWN
    reach: Reach = Reach.UNKNOWN
    # Why the page cannot reach AI Studio (reach `unreachable`), in the browser's words.
    page_error: str | None = None
    browser_mode: str | None = None
    busy: bool = False
    current_task: str | None = None
    page_url: str | None = None
    kept_chat: str | None = None  # the task whose chat the page holds for its conversation's next turn
    counters: Counters = msgspec.field(default_factory=Counters)
    version: str | None = None
    selectors_version: str | None = None
    started_at: str | None = None
    # The page's model picker as this account sees it (PageCatalogue's fields; None: not read yet).
    offered_models: list[OfferedModel] | None = None
    offered_options: dict[str, ModelOptions] = {}
    offered_read_at: str | None = None


class LoginCheck(SessionHealth, kw_only=True):
    """`POST /login/check`: the login state after a reload of AI Studio while idle."""

    login_state: LoginState = LoginState.UNKNOWN
    reach: Reach = Reach.UNKNOWN
    page_error: str | None = None


# ---- /generate ---------------------------------------------------------------------------------------


class GenerateRequest(_Message, kw_only=True, omit_defaults=True):
    """`POST /generate`; the instance checks every field against the catalogue and answers 422 with why."""

    prompt: str
    aspect_ratio: str | None = None
    model: str | None = None
    image_size: str | None = None
    reference_images_b64: list[str] = []
    task_id: str | None = None
    # A model the packaged catalogue lacks, that the account's page offers: the options the page showed for it.
    model_options: ModelOptions | None = None
    # A conversation in one chat: keep this task's chat open afterwards (instead of a new chat), and continue the chat
    # an earlier task kept, sending `turn_prompt` alone (its images are in the chat); a page that no longer holds that
    # chat makes a new one with `prompt` and the references, so the request is complete either way.
    keep_chat: bool = False
    continue_chat: str | None = None
    turn_prompt: str | None = None
    turn_references: int = 0  # the first references are the turn's own (uploaded into a continued chat too)


class TaskError(_Message, kw_only=True):
    code: str  # an ErrorCode value; str, so a newer instance's code still decodes
    message: str
    retry_safe: bool = False
    role: str | None = None  # the selector role that missed (ui_changed)


class GenerateAnswer(_Message, kw_only=True):
    """A 200 whether the generation worked or not: `success` and `error` say which."""

    success: bool
    task_id: str | None = None
    images_b64: list[str] = []
    text: str | None = None
    error: TaskError | None = None
    timings: dict[str, Any] = {}
    continued: bool = False  # the turn went into the chat `continue_chat` named


# ---- sessions, navigation ------------------------------------------------------------------------------


class StorageState(_Message, kw_only=True):
    """`GET /session` and the body of `PUT /session` once normalized: Playwright's storage state."""

    cookies: list[dict[str, Any]] = []
    origins: list[dict[str, Any]] = []


class SessionImported(_Message, kw_only=True):
    ok: bool = True
    cookies: int = 0
    login_state: LoginState = LoginState.UNKNOWN


class NavigateRequest(_Message, kw_only=True, omit_defaults=True):
    target: str | None = None  # "signin" or "home"
    url: str | None = None


class Navigated(_Message, kw_only=True):
    ok: bool = True
    url: str | None = None
    login_state: LoginState = LoginState.UNKNOWN


# ---- selectors and the page check ------------------------------------------------------------------------


class SelectorsReloaded(_Message, kw_only=True):
    version: str
    source: str


class SelectorsInstalled(_Message, kw_only=True):
    ok: bool = True
    dry_run: bool = False
    version: str | None = None
    source: str | None = None
    roles: list[str] = []
    # The override revision in force after this call (fleet_contract.selectors.REVISION_PARAM); `stale`: the call
    # carried a revision not newer than it, and nothing changed (an older delivery that crossed a newer one).
    revision: int | None = None
    stale: bool = False


class SelectorsRemoved(_Message, kw_only=True):
    ok: bool = True
    removed: bool = False
    version: str
    source: str
    revision: int | None = None
    stale: bool = False


class CandidateCheck(_Message, kw_only=True):
    selector: str
    count: int = 0
    visible: bool = False
    error: str | None = None


class RoleCheck(_Message, kw_only=True):
    role: str
    expected: bool = False
    matched: str | None = None
    index: int | None = None
    count: int = 0
    visible: bool = False
    candidates: list[CandidateCheck] = []


class PageCheck(PageCatalogue, kw_only=True):
    """`GET /diagnose`: each selector role against the live page, read-only."""

    checked_at: str
    url: str | None = None
    login_state: LoginState = LoginState.UNKNOWN
    browser: BrowserState = BrowserState.STARTING
    busy: bool = False
    model: str | None = None
    model_source: str | None = None
    selectors_version: str | None = None
    selectors_source: str | None = None
    roles: list[RoleCheck] = []
    missing_expected: list[str] = []
    error: str | None = None


# ---- page snapshots ----------------------------------------------------------------------------------


class SnapshotRequest(_Message, kw_only=True, omit_defaults=True):
    """`POST /snapshots`: take one now; `reason` is a short lower-case word (`manual`, `canary`)."""

    reason: str = "manual"


class Snapshot(_Message, kw_only=True):
    """One page snapshot: when and why it was taken, the page it shows, and its files' sizes in bytes."""

    id: str  # `20261128-070000-123-ui_changed`: SNAPSHOT_ID_PATTERN
    taken_at: str
    reason: str
    task_id: str | None = None
    url: str | None = None
    error: str | None = None  # the failure's message (ui_changed)
    role: str | None = None  # the selector role that missed
    selectors_version: str | None = None
    files: dict[str, int] = {}  # page.html, screenshot.png, pagecheck.json, meta.json
    size_bytes: int = 0


class SnapshotList(_Message, kw_only=True):
    """`GET /snapshots`: newest first."""

    snapshots: list[Snapshot] = []


# A snapshot id's only shape, checked by both sides before it goes into a path.
SNAPSHOT_ID_PATTERN = r"^[0-9]{8}-[0-9]{6}-[0-9]{3}-[a-z][a-z0-9_]{0,31}$"
SNAPSHOT_REASON_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"


# ---- the live view (WebSocket messages) ---------------------------------------------------------------


class LiveFrame(_Message, kw_only=True, tag_field="type", tag="frame"):
    data: str  # base64 JPEG of the viewport
    width: int | None = None
    height: int | None = None


class LiveInput(_Message, kw_only=True):
    """Input in: `type` mouse (x, y, button, event), key (key, event) or text (text)."""

    type: str
    x: float | None = None
    y: float | None = None
    button: str | None = None
    event: str | None = None
    key: str | None = None
    text: str | None = None


# ---- every other answer --------------------------------------------------------------------------------


class Healthz(_Message, kw_only=True):
    ok: bool = True


class ErrorAnswer(_Message, kw_only=True, omit_defaults=True):
    """Any 4xx or 5xx: `detail` for a person; `retry_safe` on a 503 that ran nothing."""

    detail: str
    retry_safe: bool | None = None
    current_task: str | None = None
    error: TaskError | None = None


class Binary(_Message, kw_only=True):
    """Marks a route that answers raw bytes (the screenshot) rather than JSON."""

    media_type: str


# Method and path → (request body, answer). None: no body. The test holds this against the instance's routes.
ROUTES: dict[tuple[str, str], tuple[type | None, Any]] = {
    ("GET", "/healthz"): (None, Healthz),
    ("GET", "/status"): (None, Status),
    ("POST", "/login/check"): (None, LoginCheck),
    ("POST", "/generate"): (GenerateRequest, GenerateAnswer),
    ("GET", "/session"): (None, StorageState),
    ("PUT", "/session"): (object, SessionImported),  # a storage state, a cookie list or an extension's export
    ("POST", "/session/restore"): (None, SessionImported),  # the login the last import replaced
    ("POST", "/navigate"): (NavigateRequest, Navigated),
    ("GET", "/screenshot"): (None, Binary(media_type="image/png")),
    ("POST", "/selectors/reload"): (None, SelectorsReloaded),
    ("GET", "/diagnose"): (None, PageCheck),
    ("PUT", "/selectors"): (object, SelectorsInstalled),  # selectors.json's shape: fleet_contract.selectors
    ("DELETE", "/selectors"): (None, SelectorsRemoved),
    ("WEBSOCKET", "/liveview"): (LiveInput, LiveFrame),
    ("GET", "/snapshots"): (None, SnapshotList),
    ("POST", "/snapshots"): (SnapshotRequest, Snapshot),
    ("GET", "/snapshots/{snapshot_id:str}"): (None, Binary(media_type="application/zip")),
}


def encode(message: msgspec.Struct) -> bytes:
    return msgspec.json.encode(message)

