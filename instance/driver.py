"""One generation on the AI Studio page, step by step as AISTUDIO.md describes it.

Every step starts with one in-page sweep (`scripts/step.js`): it closes the dialogs the page may have opened since
the last step and reads the state the step needs, in one round trip. Waits run inside the page too.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Locator, Page
from playwright.async_api import TimeoutError as PlaywrightTimeout

from instance import page_scripts
from instance.browser import BrowserHost, is_regions_url, is_signin_url
from instance.errors import ErrorCode, GenerationError, UIChanged
from instance.images import ReferenceImage, reference_files, to_png
from instance.selectors import SelectorBook
from instance.settings import InstanceSettings

try:
    from fleet_contract.catalogue import load as load_catalogue
except ImportError:  # without the model catalogue the request's model id is the page's
    load_catalogue = None

log = logging.getLogger(__name__)

RATIO, SIZE = ("aspect_ratio_select", "aspect_ratio_option"), ("image_size_select", "image_size_option")
RUN_CONFIRM_S = 1.5  # how long a Run click may take to show the run as started
_NEW_CHAT_PATH = re.compile(r"^(?:/app)?(?:/u/\d+)?/prompts/(new_chat|new_image)$")

# The in-page scripts, from instance/scripts/*.js (what each does is written at the top of its file).
_STEP_JS = page_scripts.script("step")
_UPLOAD_JS = page_scripts.script("upload")
_RUN_ENABLED_JS = page_scripts.script("run_enabled")
_STARTED_JS = page_scripts.script("started")
_SHOWS_JS = page_scripts.script("shows")
_WAIT_JS = page_scripts.script("wait")
_FETCH_JS = page_scripts.script("fetch")


@dataclass
class GenerationRequest:
    prompt: str
    aspect_ratio: str
    references: list[ReferenceImage]
    task_id: str
    model: str = "gemini-nano-banana-2.1"
    image_size: str | None = None  # "1K", "2K", "4K" where the model offers it; None keeps the page's default
    keep_chat: bool = False  # leave the chat open afterwards for a turn that continues it
    continue_chat: str | None = None  # the task whose kept chat to continue, when the page still holds it
    turn_prompt: str | None = None  # what a continued chat is sent instead of `prompt` (which repeats the context)
    turn_references: int = 0  # the first references are the turn's own; the rest are in a continued chat already


@dataclass
class GenerationResult:
    success: bool
    images_png: list[bytes] = field(default_factory=list)
    text: str | None = None
    error: GenerationError | None = None
    timings: dict[str, int] = field(default_factory=dict)
    continued: bool = False  # the turn went into the kept chat (no new chat, no uploads)


class _AnswerWatch:
    """Watches the page's GenerateContent call: whether it was sent, how many images it carried, how it failed."""

    def __init__(self, page: Page, url_part: str) -> None:
        self.page = page
        self.url_part = url_part
        self.sent = False
        self.expected: int | None = None
        self.failure: tuple[int, str] | None = None  # (HTTP status, body text) of a failed call
        self.seen = asyncio.Event()
        self._reader: asyncio.Task | None = None
        page.on("request", self._on_request)
        page.on("response", self._on_response)

    def _ours(self, request) -> bool:
        return self.url_part in request.url and request.method == "POST"

    def _on_request(self, request) -> None:
        if self._ours(request):
            self.sent = True

    def _on_response(self, response) -> None:
        if self._ours(response.request) and self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._count(response))

    async def _count(self, response) -> None:
        try:
            body = await response.body()
        except PlaywrightError:
            return  # body gone (navigation): fall back to the settle window
        if response.ok:
            # Both AI Studio's ["image/png", "<b64>"] pairs and mime fields name each image's type once.
            self.expected = body.count(b'"image/')
        else:
            self.expected = 0
            self.failure = (response.status, body[:4096].decode("utf-8", "replace"))
        self.seen.set()

    def close(self) -> None:
        self.page.remove_listener("request", self._on_request)
        self.page.remove_listener("response", self._on_response)
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()


class _Clock:
    """Named phases of one task, in milliseconds."""

    def __init__(self) -> None:
        self.start = self._mark = time.monotonic()
        self.phases: dict[str, int] = {}

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.phases[name] = self.phases.get(name, 0) + round((now - self._mark) * 1000)
        self._mark = now

    def done(self) -> dict[str, int]:
        return {"total_ms": round((time.monotonic() - self.start) * 1000), **self.phases}


def _shows(text: str | None, value: str) -> bool:
    """Whether a select's text names `value` ("16:9", or "16:9 landscape" on a page that adds words)."""
    return text is not None and (text == value or text.split(" ")[0] == value)


def _name_pattern(name: str) -> str:
    # The id as a whole word: "gemini-3.1-flash-image" must not match "gemini-3.1-flash-image-lite".
    return r"(?<![\w.-])" + re.escape(name) + r"(?![\w.-])"


class Driver:
    """Runs one generation at a time on the host's page. Callers guarantee the one-at-a-time."""

    def __init__(self, host: BrowserHost, settings: InstanceSettings) -> None:
        self.host = host
        self.settings = settings
        self._submitted = False
        self._warned_no_temporary = False
        # Called with a ui_changed failure before the page is reset, so it can copy the page as it was.
        self.on_ui_changed: Callable[[GenerationRequest, GenerationError], Awaitable[object]] | None = None
        self._kept_expiry: asyncio.TimerHandle | None = None

    @property
    def book(self) -> SelectorBook:
        return self.host.selectors

    async def run(self, request: GenerationRequest) -> GenerationResult:
        clock = _Clock()
        self._submitted = False
        self._cancel_kept_expiry()
        held = self._take_kept_chat()
        continued = request.continue_chat is not None and held == (request.continue_chat, request.model)
        kept = False
        try:
            with reference_files(request.references[:request.turn_references] if continued else request.references) as files:
                # another conversation's kept chat is left by a new load, whatever its URL looks like
                images, text = await self._generate(request, files, clock, continued, reload=held is not None)
            kept = request.keep_chat
            return GenerationResult(success=True, images_png=images, text=text or None, timings=clock.done(),
                                    continued=continued)
        except GenerationError as exc:
            result = GenerationResult(success=False, error=exc, text=exc.text, timings=clock.done())
            if exc.code == ErrorCode.UI_CHANGED and self.on_ui_changed is not None:
                await self.on_ui_changed(request, exc)
            return result
        except PlaywrightError as exc:
            # The browser or page went away under us (crash, closed context): infrastructure, not the prompt.
            log.error("task %s: browser failure: %s", request.task_id, exc)
            err = GenerationError(
                ErrorCode.INTERNAL_ERROR, f"browser failure: {exc}".splitlines()[0], retry_safe=not self._submitted
            )
            return GenerationResult(success=False, error=err, timings=clock.done())
        finally:
            self._keep_or_reset(request, kept)

    def _take_kept_chat(self) -> tuple[str, str] | None:
        """The chat the page holds for a conversation, (task id, model): continued by this task or left by it."""
        held = self.host.kept_chat
        self.host.drop_kept_chat()
        return held

    def _keep_or_reset(self, request: GenerationRequest, kept: bool) -> None:
        if not kept:
            self.host.schedule_reset()
            return
        self.host.keep_chat(request.task_id, request.model)
        # unused for a while, the kept chat is reset off the next task's critical path
        self._kept_expiry = asyncio.get_running_loop().call_later(self.settings.keep_chat_s, self._expire_kept, request.task_id)

    def _expire_kept(self, task_id: str) -> None:
        self._kept_expiry = None
        if self.host.kept_chat is not None and self.host.kept_chat[0] == task_id:
            self.host.drop_kept_chat()
            self.host.schedule_reset()

    def _cancel_kept_expiry(self) -> None:
        if self._kept_expiry is not None:
            self._kept_expiry.cancel()
            self._kept_expiry = None

    async def _generate(self, request: GenerationRequest, files: list[Path], clock: _Clock,
                        continued: bool = False, reload: bool = False) -> tuple[list[bytes], str]:
        page = self.host.page if continued else await self._open_chat(request.model, fresh=reload)
        prompt_box = await self._find(page, "prompt_textarea", self.settings.page_load_timeout_s)
        clock.lap("page_ms")
        state = await self._step(page, temporary=True)
        self._raise_for_load_messages(state["messages"])
        self._note_temporary(state["temporary"])
        await self._ensure_model(page, request.model, state["model"])
        if state["model"] is not None and not self._model_matches(state["model"], request.model):
            state = await self._step(page)  # another model can offer other ratios and sizes
        await self._ensure_choice(page, RATIO, request.aspect_ratio, state["ratio"])
        if request.image_size:
            await self._ensure_choice(page, SIZE, request.image_size, state["size"])
        clock.lap("prepare_ms")
        for file in files:
            await self._upload(page, file)
        clock.lap("upload_ms")
        await self._fill_prompt(prompt_box, request.turn_prompt if continued and request.turn_prompt else request.prompt)
        state = await self._step(page, mark_seen=True)
        self._check_before_run(request, state)
        answer = _AnswerWatch(page, self.settings.generate_content_url_part)
        try:
            await self._click_run(page, prompt_box, answer, state["turns"])
            result = await self._wait_for_answer(page, state["model_turns"], answer)
        finally:
            answer.close()
        clock.lap("generate_ms")
        if result["notices"]:
            log.info("task %s: notices beside the answer: %s", request.task_id, result["notices"])
        if result["images"] == 0:
            raise GenerationError(
                ErrorCode.BLOCKED, "the model answered without an image", retry_safe=False, text=result["text"] or None
            )
        encoded = await page.evaluate(_FETCH_JS, [self._poll_selectors(), state["model_turns"]])
        images = [to_png(base64.b64decode(b)) for b in encoded]
        clock.lap("fetch_ms")
        return images, result["text"]

    # ---- the page for a model ----------------------------------------------------------------------

    def _chat_url(self, model: str) -> str:
        """The new-chat URL of `model`: the catalogue knows its page kind and URL id, when it lists it."""
        spec = load_catalogue().find(model) if load_catalogue is not None else None
        url_id = spec.id if spec is not None else model
        imagen = spec.page == "imagen" if spec is not None else model.startswith("imagen")
        page = "new_image" if imagen else "new_chat"
        return f"{self.settings.aistudio_url.rstrip('/')}/prompts/{page}?model={url_id}"

    def _is_new_chat(self, url: str, wanted: str) -> bool:
        """`url` is a new chat of the wanted URL's kind and model, in either URL form (`/app/prompts/...`)."""
        have, want = urlsplit(url), urlsplit(wanted)
        have_path, want_path = _NEW_CHAT_PATH.match(have.path), _NEW_CHAT_PATH.match(want.path)
        if have.netloc != want.netloc or have_path is None or want_path is None:
            return False
        model = parse_qs(have.query).get("model", [None])[0]
        # A page that dropped ?model= is checked on the page itself.
        return have_path.group(1) == want_path.group(1) and model in (None, parse_qs(want.query)["model"][0])

    async def _open_chat(self, model: str, fresh: bool = False) -> Page:
        """The new-chat page of `model`, loaded and signed in; otherwise a retry-safe error. `fresh`: a chat another
        conversation kept was open, so the page is loaded again even if its URL looks like a new chat."""
        await self.host.wait_reset()
        page = self.host.page
        url = self._chat_url(model)
        if fresh or not self._is_new_chat(page.url, url):
            if url == self.settings.new_chat_url:
                await self.host.load_home()
            else:
                await page.goto(url, wait_until="domcontentloaded", timeout=self.settings.page_load_timeout_s * 1000)
            page = self.host.page
        self._raise_for_url(page.url)
        if self.host.login_state == "needs_login":
            raise GenerationError(ErrorCode.NEEDS_LOGIN, "the Google session is signed out", retry_safe=True)
        return page

    def _raise_for_url(self, url: str, *, submitted: bool = False) -> None:
        if is_signin_url(url):
            message = "signed out during the task" if submitted else "the Google session is signed out"
            raise GenerationError(ErrorCode.NEEDS_LOGIN, message, retry_safe=not submitted)
        if is_regions_url(url):
            self.host.region_blocked(url)
            message = f"AI Studio sent the page to {url}: not served in this region"
            raise GenerationError(ErrorCode.REGION_BLOCKED, message, retry_safe=True)

    async def _raise_if_signed_out(self, page: Page) -> None:
        """A role missing because AI Studio shows only its "Sign in" link is a sign-out, not a changed page."""
        link = self.book.css_union("signin_link")
        if link and await page.locator(link).count():
            self.host.signed_out("AI Studio shows only a sign-in link")
            message = "signed out during the task" if self._submitted else "the Google session is signed out"
            raise GenerationError(ErrorCode.NEEDS_LOGIN, message, retry_safe=not self._submitted)

    def _raise_for_load_messages(self, messages: list[str]) -> None:
        """What a freshly loaded page says about the account before anything is sent."""
        for message in messages:
            kind = self.book.classify(message)
            if kind == "region_blocked":
                raise GenerationError(ErrorCode.REGION_BLOCKED, message, retry_safe=True)
            if kind == "model_unavailable":
                raise GenerationError(ErrorCode.MODEL_UNAVAILABLE, message, retry_safe=True)

    def _note_temporary(self, temporary: bool | None) -> None:
        if temporary is None and not self._warned_no_temporary:
            self._warned_no_temporary = True
            log.warning("no Temporary chat toggle on the page: each task will be saved to the account's Drive")

    # ---- finding things --------------------------------------------------------------------------

    async def _find(self, page: Page, role: str, timeout_s: float | None = None, state: str = "visible") -> Locator:
        """The first candidate of `role` that is on the page, waiting for any of them to appear."""
        candidates = self.book.candidates(role)
        if not candidates:
            raise UIChanged(role, retry_safe=not self._submitted)
        timeout_ms = (timeout_s if timeout_s is not None else self.settings.element_timeout_s) * 1000
        try:
            await page.locator(self.book.css_union(role)).first.wait_for(state=state, timeout=timeout_ms)
        except PlaywrightTimeout:
            self._raise_for_url(page.url)
            await self._raise_if_signed_out(page)
            raise UIChanged(role, retry_safe=not self._submitted) from None
        for selector in candidates:
            loc = page.locator(selector).first
            if await loc.count():
                return loc
        raise UIChanged(role, retry_safe=not self._submitted)

    async def _present(self, page: Page, role: str) -> Locator | None:
        """A visible element of `role` right now, without waiting."""
        if not await page.locator(self.book.css_union(role)).count():
            return None  # the usual case, answered in one round trip
        for selector in self.book.candidates(role):
            loc = page.locator(selector).first
            if await loc.count() and await loc.is_visible():
                return loc
        return None

    def _dialog_selectors(self) -> dict:
        book = self.book
        return {
            "dismiss": [*book.candidates("dismiss_dialog"), *book.candidates("copyright_dialog_accept")],
            "dialog": book.css_union("dialog"),
            "checkbox": book.css_union("consent_checkbox"),
            "names": [n.lower() for n in book.names_of("dialog_dismiss")],
            "consent": [n.lower() for n in book.names_of("consent_continue")],
        }

    def _state_selectors(self) -> dict:
        book = self.book
        return {
            "model_name": list(book.candidates("model_name")),
            "ratio_select": list(book.candidates(RATIO[0])),
            "size_select": list(book.candidates(SIZE[0])),
            "select_value": book.css_union("select_value"),
            "temporary": list(book.candidates("temporary_chat_toggle")),
            "messages": ", ".join(filter(None, [book.css_union("error_callout"), book.css_union("warning_callout")])),
            "toasts": book.css_union("toast"),
            "prompt_box": book.css_union("prompt_box"),
            "upload_chip": book.css_union("upload_chip"),
            "upload_media": book.css_union("upload_media"),
            "token_count": list(book.candidates("token_count")),
            "run_button": book.css_union("run_button"),
            "chat_turn": book.css_union("chat_turn"),
            "model_turn": book.css_union("model_turn"),
            "busy": book.css_union("busy_indicator"),
        }

    async def _step(self, page: Page, *, temporary: bool = False, mark_seen: bool = False) -> dict:
        """Dismiss what covers the page and read its state: one round trip before each step."""
        options = {"temporary": temporary, "markSeen": mark_seen}
        state = await page.evaluate(_STEP_JS, [self._dialog_selectors(), self._state_selectors(), options])
        if state["dismissed"]:
            log.info("dismissed %d dialog(s)", state["dismissed"])
        return state

    def _ms(self, seconds: float) -> int:
        return round(seconds * 1000)

    # ---- model, ratio, size ----------------------------------------------------------------------

    def _model_names(self, model: str) -> list[str]:
        """What the page may call `model`: its id, and the catalogue's display name and aliases."""
        spec = load_catalogue().find(model) if load_catalogue is not None else None
        return [model] if spec is None else [spec.id, spec.name, *spec.aliases]

    def _model_matches(self, shown: str, model: str) -> bool:
        return any(re.search(_name_pattern(name), shown, re.IGNORECASE) for name in self._model_names(model))

    async def _ensure_model(self, page: Page, model: str, shown: str | None) -> None:
        """The page must have `model` selected: the URL usually does it, the model picker otherwise."""
        if shown is None:
            return  # the page names no model (older markup): the URL chose it
        if self._model_matches(shown, model):
            return
        log.info("the page shows model %r, not %s: choosing it in the model picker", shown, model)
        trigger = await self._present(page, "model_selector")
        if trigger is None:
            raise UIChanged("model_selector")
        await trigger.click(timeout=self._ms(self.settings.element_timeout_s))
        options = page.locator(self.book.css_union("model_option"))
        try:
            await options.first.wait_for(timeout=self._ms(self.settings.element_timeout_s))
        except PlaywrightTimeout:
            raise UIChanged("model_option") from None
        option = options.filter(has_text=re.compile(_name_pattern(model), re.IGNORECASE)).first
        if not await option.count():
            await page.keyboard.press("Escape")
            raise GenerationError(
                ErrorCode.UI_CHANGED, f"the model picker lists no {model}", retry_safe=True, role="model_option"
            )
        if await option.get_attribute("aria-disabled") == "true" or await option.is_disabled():
            await page.keyboard.press("Escape")
            raise GenerationError(
                ErrorCode.MODEL_UNAVAILABLE, f"the model picker offers {model} but not to this account", retry_safe=True
            )
        await option.click(timeout=self._ms(self.settings.element_timeout_s))
        patterns = [_name_pattern(name) for name in self._model_names(model)]
        if not await self._wait_shows(page, "model", patterns):
            raise UIChanged("model_name")

    async def _ensure_choice(self, page: Page, roles: tuple[str, str], value: str, shown: str | None) -> None:
        """Choose `value` in a run-settings select, and wait until the select shows it."""
        select_role, option_role = roles
        if _shows(shown, value) or (shown is None and value == "Auto"):
            return  # already chosen; or no ratio control and the page's default asked for
        select = await self._present(page, select_role)
        if select is None:
            # The run-settings panel may be collapsed; open it and look again.
            toggle = await self._present(page, "run_settings_toggle")
            if toggle is not None:
                await toggle.click()
            select = await self._find(page, select_role)
        await select.click()
        # The value as a whole word of the option's text ("1:9" never picks "21:9"), in one locator: no extra
        # round trip to ask whether an exact match exists.
        whole = re.compile(rf"(?<![\w:]){re.escape(value)}(?![\w:])", re.IGNORECASE)
        option = page.locator(self.book.css_union(option_role)).filter(has_text=whole)
        try:
            await option.first.click(timeout=self._ms(self.settings.element_timeout_s))
        except PlaywrightTimeout:
            raise UIChanged(option_role) from None
        if not await self._wait_shows(page, "ratio_select" if roles == RATIO else "size_select", value):
            raise UIChanged(select_role)

    async def _wait_shows(self, page: Page, which: str, value) -> bool:
        args = [self._state_selectors(), which, value, self._ms(self.settings.poll_interval_s),
                self._ms(self.settings.element_timeout_s)]
        return await page.evaluate(_SHOWS_JS, args)

    def _check_before_run(self, request: GenerationRequest, state: dict) -> None:
        """Never run with another model, ratio or size than asked for: the page may have changed them."""
        if state["model"] is not None and not self._model_matches(state["model"], request.model):
            raise GenerationError(
                ErrorCode.UI_CHANGED, f"the page shows model {state['model']!r}, not {request.model}",
                retry_safe=True, role="model_name",
            )
        ratio = request.aspect_ratio
        if not (_shows(state["ratio"], ratio) or (state["ratio"] is None and ratio == "Auto")):
            raise UIChanged(RATIO[0])
        if request.image_size and not _shows(state["size"], request.image_size):
            raise UIChanged(SIZE[0])

    # ---- uploads ---------------------------------------------------------------------------------

    async def _upload(self, page: Page, file: Path) -> None:
        before = (await self._step(page))["upload"]
        add = await self._find(page, "add_media_button")
        await add.click()
        item = await self._present(page, "upload_menu_item")
        if item is not None:
            # The menu item opens a native file chooser; answer it with bytes from memory.
            try:
                async with page.expect_file_chooser(timeout=self._ms(self.settings.element_timeout_s)) as chooser:
                    await item.click()
                await (await chooser.value).set_files(file)
            except PlaywrightTimeout:
                await (await self._find(page, "file_input", state="attached")).set_input_files(file)
        else:
            await (await self._find(page, "file_input", state="attached")).set_input_files(file)
        await self._wait_uploaded(page, before)
        await page.keyboard.press("Escape")

    async def _wait_uploaded(self, page: Page, before: dict) -> None:
        args = [self._dialog_selectors(), self._state_selectors(), before, self._ms(self.settings.poll_interval_s),
                self._ms(self.settings.element_timeout_s * 2)]
        done = await page.evaluate(_UPLOAD_JS, args)
        if done["signal"] is not None:
            return
        if not done["run_enabled"]:
            raise UIChanged("upload_chip")
        # Every sign of a finished upload missed, yet Run takes the prompt: the page changed how it shows uploads.
        log.warning("no upload signal (chip, media, blob image, token count) showed; Run is enabled: going on")

    async def _fill_prompt(self, box: Locator, prompt: str) -> None:
        await box.fill(prompt)
        # A textarea's value has "\n" line ends whatever was typed into it.
        wanted = prompt.replace("\r\n", "\n").replace("\r", "\n")
        if (await box.input_value()).replace("\r\n", "\n") != wanted:
            raise UIChanged("prompt_textarea")

    # ---- run -------------------------------------------------------------------------------------

    async def _click_run(self, page: Page, prompt_box: Locator, answer: _AnswerWatch, turns_before: int) -> None:
        """Click Run until the run shows as started: a click, then a JS click, a forced click, Ctrl+Enter."""
        run = await self._find(page, "run_button")
        interval = self._ms(self.settings.poll_interval_s)
        timeout_ms = self._ms(self.settings.element_timeout_s)
        enabled_args = [self._dialog_selectors(), self._state_selectors(), interval, timeout_ms]
        if not await page.evaluate(_RUN_ENABLED_JS, enabled_args):
            raise UIChanged("run_button")
        first_click_ms = self._ms(min(self.settings.element_timeout_s, 1.0))
        attempts = (
            ("click", lambda: run.click(timeout=first_click_ms)),
            ("js click", lambda: run.evaluate("button => button.click()")),
            ("forced click", lambda: run.click(force=True, timeout=first_click_ms)),
            ("ctrl+enter", lambda: prompt_box.press("Control+Enter")),
        )
        # A run shows at once (a new turn, the spinner); wait a little longer before clicking again, as a second
        # click on a running Run stops it.
        confirm_ms = self._ms(min(self.settings.element_timeout_s, RUN_CONFIRM_S))
        for name, attempt in attempts:
            budget_ms = confirm_ms
            try:
                await attempt()
            except PlaywrightError as exc:
                log.info("run by %s failed: %s", name, str(exc).splitlines()[0])
                budget_ms = 0  # nothing was clicked: one look is enough
            started_args = [self._state_selectors(), turns_before, interval, budget_ms]
            if answer.sent or await page.evaluate(_STARTED_JS, started_args) or answer.sent:
                self._submitted = True
                if name != "click":
                    log.warning("Run started only by %s", name)
                return
            await self._step(page)  # a dialog may have come up in between
        self._submitted = answer.sent
        raise UIChanged("run_button", retry_safe=not answer.sent)

    def _poll_selectors(self) -> dict:
        book = self.book
        return {
            "model_turn": book.css_union("model_turn"),
            "generated_image": book.css_union("generated_image"),
            "model_text": list(book.candidates("model_text")),
            "thought": book.css_union("thought_chunk"),
            "busy": book.css_union("busy_indicator"),
            "callouts": book.css_union("error_callout"),
            "warnings": book.css_union("warning_callout"),
            "toasts": book.css_union("toast"),
            "texts": [[kind, [n.lower() for n in needles]] for kind, needles in book.texts.items()],
        }

    async def _wait_for_answer(self, page: Page, turns_before: int, answer: _AnswerWatch) -> dict:
        """Until the model turn is complete or an error shows; re-checks at once when the response lands."""
        deadline = time.monotonic() + self.settings.generation_timeout_s
        while time.monotonic() < deadline:
            if answer.failure is not None:
                self._raise_for_failed_call(*answer.failure)
            budget_ms = min(2000, max(0, round((deadline - time.monotonic()) * 1000)))
            check = asyncio.ensure_future(self._check_answer(page, turns_before, answer.expected, budget_ms))
            waits = {check}
            if answer.expected is None:
                waits.add(asyncio.ensure_future(answer.seen.wait()))
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if check not in done:
                continue  # the response just arrived: check again knowing how many images it carried
            state = check.result()
            if state is None:
                continue
            self._raise_for_page_error(state)
            if state["done"]:
                return state
        raise GenerationError(
            ErrorCode.TIMEOUT,
            f"no answer within {self.settings.generation_timeout_s:.0f} s",
            retry_safe=False,
        )

    async def _check_answer(self, page: Page, turns_before: int, expected: int | None, budget_ms: int) -> dict | None:
        args = [
            self._dialog_selectors(),
            self._poll_selectors(),
            turns_before,
            self._ms(self.settings.poll_interval_s),
            budget_ms,
            expected,
            self._ms(self.settings.settle_s),
        ]
        try:
            return await page.evaluate(_WAIT_JS, args)
        except PlaywrightError as exc:
            if "Execution context was destroyed" in str(exc) or "navigation" in str(exc).lower():
                await asyncio.sleep(self.settings.poll_interval_s)
                return None  # the page is navigating (e.g. to sign-in); look again
            raise

    def _raise_for_failed_call(self, status: int, body: str) -> None:
        """A failed GenerateContent call, by what its body says, else by its HTTP status."""
        kind = self.book.classify(body)
        if status == 401:
            raise GenerationError(ErrorCode.NEEDS_LOGIN, "signed out during the task", retry_safe=False)
        if kind is not None:
            self._raise_for_kind(kind, f"GenerateContent failed with HTTP {status}: {body[:200]}")
        if status == 429:
            raise GenerationError(ErrorCode.RATE_LIMITED, "GenerateContent failed with HTTP 429", retry_safe=True)
        raise GenerationError(ErrorCode.INTERNAL_ERROR, f"GenerateContent failed with HTTP {status}", retry_safe=False)

    def _raise_for_kind(self, kind: str, message: str) -> None:
        if kind == "quota_exhausted":
            raise GenerationError(ErrorCode.QUOTA_EXHAUSTED, message, retry_safe=True)
        if kind == "rate_limited":
            raise GenerationError(ErrorCode.RATE_LIMITED, message, retry_safe=True)
        if kind == "region_blocked":
            raise GenerationError(ErrorCode.REGION_BLOCKED, message, retry_safe=True)
        if kind == "model_unavailable":
            raise GenerationError(ErrorCode.MODEL_UNAVAILABLE, message, retry_safe=True)
        raise GenerationError(ErrorCode.INTERNAL_ERROR, message, retry_safe=False)

    def _raise_for_page_error(self, state: dict) -> None:
        self._raise_for_url(state["url"], submitted=True)
        # A new error callout fails the task even when unknown; a warning or toast only when it names a failure.
        for message in state["callouts"] + state["warnings"]:
            self._raise_for_kind(self.book.classify(message) or "internal_error", message)
