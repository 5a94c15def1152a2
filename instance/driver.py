"""One generation on the AI Studio page, step by step as AISTUDIO.md describes it."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass, field

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Locator, Page
from playwright.async_api import TimeoutError as PlaywrightTimeout

from instance.browser import BrowserHost, is_signin_url
from instance.errors import ErrorCode, GenerationError, UIChanged
from instance.images import ReferenceImage, to_png
from instance.selectors import SelectorBook
from instance.settings import InstanceSettings

log = logging.getLogger(__name__)

# Waits inside the page, checking every `interval` ms, until the model turn is complete, an error shows, or
# `budget` ms pass. Complete: no spinner, images loaded, and either as many images as the GenerateContent
# response carried (`expected`, when it was seen) or the same counts for `settle` ms. One round trip.
_WAIT_JS = """
async ([sel, turnsBefore, interval, budget, expected, settle]) => {
  const all = (s) => (s ? Array.from(document.querySelectorAll(s)) : []);
  const textsOf = (s) => all(s).map((e) => e.textContent.trim()).filter(Boolean);
  const snapshot = () => {
    const turns = all(sel.model_turn).slice(turnsBefore);
    let images = 0, pending = 0;
    const texts = [];
    for (const turn of turns) {
      for (const img of turn.querySelectorAll(sel.generated_image)) {
        if (img.complete && (img.currentSrc || img.src)) images++; else pending++;
      }
      // Text candidates may nest (a chunk inside a turn-content): take the first candidate that matches.
      for (const candidate of sel.model_text) {
        const found = Array.from(turn.querySelectorAll(candidate));
        if (!found.length) continue;
        for (const t of found) { const s = t.textContent.trim(); if (s) texts.push(s); }
        break;
      }
    }
    return {url: location.href, busy: all(sel.busy).length > 0, turns: turns.length, images, pending,
            text: texts.join("\\n"), callouts: textsOf(sel.callouts), toasts: textsOf(sel.toasts)};
  };
  const started = performance.now();
  let previous = null, since = 0;
  for (;;) {
    const state = snapshot();
    const now = performance.now();
    const settled = state.turns > 0 && !state.busy && state.pending === 0;
    const key = JSON.stringify([state.turns, state.images, state.text]);
    if (state.callouts.length || state.toasts.length) return {...state, done: false};
    if (settled && expected !== null && state.images >= expected) return {...state, done: true};
    if (!settled || key !== previous) { previous = settled ? key : null; since = now; }
    else if (now - since >= settle) return {...state, done: true};
    if (now - started > budget) return {...state, done: false};
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}
"""

# Reads generated images' bytes inside the page: blob: URLs only resolve there.
_FETCH_JS = """
async ([sel, turnsBefore]) => {
  const turns = Array.from(document.querySelectorAll(sel.model_turn)).slice(turnsBefore);
  const out = [];
  for (const turn of turns) {
    for (const img of turn.querySelectorAll(sel.generated_image)) {
      const src = img.currentSrc || img.src;
      if (src.startsWith("data:")) { out.push(src.slice(src.indexOf(",") + 1)); continue; }
      const blob = await (await fetch(src, {credentials: "include"})).blob();
      const url = await new Promise((resolve, reject) => {
        const reader = new FileReader();
        reader.onload = () => resolve(reader.result);
        reader.onerror = () => reject(reader.error);
        reader.readAsDataURL(blob);
      });
      out.push(url.slice(url.indexOf(",") + 1));
    }
  }
  return out;
}
"""


@dataclass
class GenerationRequest:
    prompt: str
    aspect_ratio: str
    references: list[ReferenceImage]
    task_id: str
    model: str = "gemini-2.5-flash-image"
    image_size: str | None = None  # "1K", "2K", "4K" where the model offers it; None keeps the page's default


@dataclass
class GenerationResult:
    success: bool
    images_png: list[bytes] = field(default_factory=list)
    text: str | None = None
    error: GenerationError | None = None
    timings: dict[str, int] = field(default_factory=dict)


class _AnswerWatch:
    """Counts the images in the page's GenerateContent response, so completion needs no settle window."""

    def __init__(self, page: Page, url_part: str) -> None:
        self.page = page
        self.url_part = url_part
        self.expected: int | None = None
        self.seen = asyncio.Event()
        self._reader: asyncio.Task | None = None
        page.on("response", self._on_response)

    def _on_response(self, response) -> None:
        if self.url_part in response.url and response.request.method == "POST" and self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._count(response))

    async def _count(self, response) -> None:
        try:
            body = await response.body()
        except PlaywrightError:
            return  # body gone (navigation): fall back to the settle window
        # Both AI Studio's ["image/png", "<b64>"] pairs and mime fields name each image's type once.
        self.expected = body.count(b'"image/') if response.ok else 0
        self.seen.set()

    def close(self) -> None:
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


class Driver:
    """Runs one generation at a time on the host's page. Callers guarantee the one-at-a-time."""

    def __init__(self, host: BrowserHost, settings: InstanceSettings) -> None:
        self.host = host
        self.settings = settings
        self._submitted = False

    @property
    def book(self) -> SelectorBook:
        return self.host.selectors

    async def run(self, request: GenerationRequest) -> GenerationResult:
        clock = _Clock()
        self._submitted = False
        try:
            images, text = await self._generate(request, clock)
            return GenerationResult(success=True, images_png=images, text=text or None, timings=clock.done())
        except GenerationError as exc:
            return GenerationResult(success=False, error=exc, text=exc.text, timings=clock.done())
        except PlaywrightError as exc:
            # The browser or page went away under us (crash, closed context): infrastructure, not the prompt.
            log.error("task %s: browser failure: %s", request.task_id, exc)
            err = GenerationError(
                ErrorCode.INTERNAL_ERROR, f"browser failure: {exc}".splitlines()[0], retry_safe=not self._submitted
            )
            return GenerationResult(success=False, error=err, timings=clock.done())
        finally:
            self.host.schedule_reset()

    async def _generate(self, request: GenerationRequest, clock: _Clock) -> tuple[list[bytes], str]:
        page = await self._fresh_page()
        prompt_box = await self._find(page, "prompt_textarea", self.settings.page_load_timeout_s)
        clock.lap("page_ms")
        await self._dismiss_dialogs(page)
        if request.aspect_ratio != "Auto":
            await self._choose_aspect_ratio(page, request.aspect_ratio)
        clock.lap("prepare_ms")
        for image in request.references:
            await self._upload(page, image)
        clock.lap("upload_ms")
        turns_before = await page.locator(self.book.css_union("model_turn")).count()
        await self._fill_prompt(prompt_box, request.prompt)
        answer = _AnswerWatch(page, self.settings.generate_content_url_part)
        try:
            await self._click_run(page)
            state = await self._wait_for_answer(page, turns_before, answer)
        finally:
            answer.close()
        clock.lap("generate_ms")
        if state["images"] == 0:
            raise GenerationError(
                ErrorCode.BLOCKED, "the model answered without an image", retry_safe=False, text=state["text"] or None
            )
        encoded = await page.evaluate(_FETCH_JS, [self._poll_selectors(), turns_before])
        images = [to_png(base64.b64decode(b)) for b in encoded]
        clock.lap("fetch_ms")
        return images, state["text"]

    # ---- steps -----------------------------------------------------------------------------------

    async def _fresh_page(self) -> Page:
        """The new-chat page, loaded and signed in; otherwise a retry-safe error."""
        await self.host.wait_reset()
        page = self.host.page
        if not page.url.startswith(self.settings.new_chat_url):
            await self.host.load_home()
            page = self.host.page
        if is_signin_url(page.url) or self.host.login_state == "needs_login":
            raise GenerationError(ErrorCode.NEEDS_LOGIN, "the Google session is signed out", retry_safe=True)
        return page

    async def _find(self, page: Page, role: str, timeout_s: float | None = None, state: str = "visible") -> Locator:
        """The first candidate of `role` that is on the page, waiting for any of them to appear."""
        candidates = self.book.candidates(role)
        if not candidates:
            raise UIChanged(role, retry_safe=not self._submitted)
        timeout_ms = (timeout_s if timeout_s is not None else self.settings.element_timeout_s) * 1000
        try:
            await page.locator(self.book.css_union(role)).first.wait_for(state=state, timeout=timeout_ms)
        except PlaywrightTimeout:
            if is_signin_url(page.url):
                raise GenerationError(ErrorCode.NEEDS_LOGIN, "the Google session is signed out", retry_safe=True)
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

    async def _dismiss_dialogs(self, page: Page) -> None:
        # A dialog can reveal another; a few rounds cover the known stacks.
        for _ in range(4):
            button = await self._present(page, "dismiss_dialog")
            if button is None:
                return
            await button.click(timeout=self.settings.element_timeout_s * 1000)

    async def _choose_aspect_ratio(self, page: Page, ratio: str) -> None:
        select = await self._present(page, "aspect_ratio_select")
        if select is None:
            # The run-settings panel may be collapsed; open it and look again.
            toggle = await self._present(page, "run_settings_toggle")
            if toggle is not None:
                await toggle.click()
            select = await self._find(page, "aspect_ratio_select")
        await select.click()
        option = page.locator(self.book.css_union("aspect_ratio_option")).filter(has_text=ratio)
        exact = option.get_by_text(ratio, exact=True)
        target = exact if await exact.count() else option
        try:
            await target.first.click(timeout=self.settings.element_timeout_s * 1000)
        except PlaywrightTimeout:
            raise UIChanged("aspect_ratio_option") from None

    async def _upload(self, page: Page, image: ReferenceImage) -> None:
        chips = page.locator(self.book.css_union("upload_chip"))
        before = await chips.count()
        files = {"name": image.name, "mimeType": image.mime, "buffer": image.data}
        add = await self._find(page, "add_media_button")
        await add.click()
        item = await self._present(page, "upload_menu_item")
        if item is not None:
            # The menu item opens a native file chooser; answer it with bytes from memory.
            try:
                async with page.expect_file_chooser(timeout=self.settings.element_timeout_s * 1000) as chooser:
                    await item.click()
                await (await chooser.value).set_files(files)
            except PlaywrightTimeout:
                await (await self._find(page, "file_input", state="attached")).set_input_files(files)
        else:
            await (await self._find(page, "file_input", state="attached")).set_input_files(files)
        await self._wait_for_chip(page, chips, before)
        await page.keyboard.press("Escape")

    async def _wait_for_chip(self, page: Page, chips: Locator, before: int) -> None:
        deadline = time.monotonic() + self.settings.element_timeout_s * 2
        while time.monotonic() < deadline:
            agree = await self._present(page, "copyright_dialog_accept")
            if agree is not None:
                await agree.click()
            if await chips.count() > before:
                agree = await self._present(page, "copyright_dialog_accept")
                if agree is not None:
                    await agree.click()
                return
            await asyncio.sleep(self.settings.poll_interval_s / 2)
        raise UIChanged("upload_chip")

    async def _fill_prompt(self, box: Locator, prompt: str) -> None:
        await box.fill(prompt)
        if await box.input_value() != prompt:
            raise UIChanged("prompt_textarea")

    async def _click_run(self, page: Page) -> None:
        run = await self._find(page, "run_button")
        try:
            await run.click(timeout=self.settings.element_timeout_s * 1000)  # waits until enabled
        except PlaywrightTimeout:
            raise UIChanged("run_button") from None
        self._submitted = True

    def _poll_selectors(self) -> dict[str, str]:
        book = self.book
        return {
            "model_turn": book.css_union("model_turn"),
            "generated_image": book.css_union("generated_image"),
            "model_text": list(book.candidates("model_text")),
            "busy": book.css_union("busy_indicator"),
            "callouts": book.css_union("error_callout"),
            "toasts": book.css_union("toast"),
        }

    async def _wait_for_answer(self, page: Page, turns_before: int, answer: "_AnswerWatch") -> dict:
        """Until the model turn is complete or an error shows; re-checks at once when the response lands."""
        deadline = time.monotonic() + self.settings.generation_timeout_s
        while time.monotonic() < deadline:
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
            self._poll_selectors(),
            turns_before,
            round(self.settings.poll_interval_s * 1000),
            budget_ms,
            expected,
            round(self.settings.settle_s * 1000),
        ]
        try:
            return await page.evaluate(_WAIT_JS, args)
        except PlaywrightError as exc:
            if "Execution context was destroyed" in str(exc) or "navigation" in str(exc).lower():
                await asyncio.sleep(self.settings.poll_interval_s)
                return None  # the page is navigating (e.g. to sign-in); look again
            raise

    def _raise_for_page_error(self, state: dict) -> None:
        if is_signin_url(state["url"]):
            raise GenerationError(ErrorCode.NEEDS_LOGIN, "signed out during the task", retry_safe=False)
        # An unknown error callout fails the task; an unknown toast may be a mere notice.
        messages = [(m, True) for m in state["callouts"]] + [(m, False) for m in state["toasts"]]
        for message, is_callout in messages:
            kind = self.book.classify(message)
            if kind == "quota_exhausted":
                raise GenerationError(ErrorCode.QUOTA_EXHAUSTED, message, retry_safe=True)
            if kind == "rate_limited":
                raise GenerationError(ErrorCode.RATE_LIMITED, message, retry_safe=True)
            if kind == "region_blocked":
                raise GenerationError(ErrorCode.INTERNAL_ERROR, f"region blocked: {message}", retry_safe=True)
            if kind == "internal_error" or (kind is None and is_callout):
                raise GenerationError(ErrorCode.INTERNAL_ERROR, message, retry_safe=False)
