"""The one Chromium of this instance: launch, login-state tracking, session reloads, crash restarts."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.async_api import Browser, BrowserContext, Page, Playwright, Response, async_playwright
from playwright.async_api import Error as PlaywrightError

from fleet_contract.codes import OUT_OF_REACH, LoginState, Reach
from instance.display import VirtualDisplay
from instance.proxy import BrowserProxy, browser_proxy
from instance.selectors import SelectorBook, load_selectors
from instance.session_store import (
    SessionStore, auth_cookies_expire_at, auth_cookies_expired, login_fingerprint, renews_login,
)
from instance.settings import InstanceSettings

log = logging.getLogger(__name__)

# Playwright passes a --disable-features list of its own, and Chromium keeps only the last such flag: ours
# repeats Playwright's (tests/instance/test_browser_flags.py checks it still covers the installed Playwright's).
PLAYWRIGHT_DISABLED_FEATURES = (
    "AvoidUnnecessaryBeforeUnloadCheckSync", "DestroyProfileOnBrowserClose", "HttpsUpgrades",
    "HttpsFirstBalancedModeAutoEnable", "LensOverlay", "MediaRouter", "PaintHolding", "ThirdPartyStoragePartitioning",
    "AvoidCorsURLLoaderRestartOnRedirect", "TcpPortRandomizationWin", "OptimizationHints", "NetworkTimeServiceQuerying",
    "AimEnabled", "PreconnectToSearch", "msForceBrowserSignIn", "msEdgeUpdateLaunchServicesPreferredVersion",
)
# The omnibox popups are WebUI pages that a headed Chromium preloads in a renderer of their own (about 100 MiB);
# nobody types in the address bar here.
# RenderDocument gives each navigation a new renderer widget, whose window rect arrives after the page's first scripts
# ran: the first page of a start saw outerWidth/outerHeight 0x0 in about half of the starts (headed and headless).
OWN_DISABLED_FEATURES = (
    "Translate", "AutofillServerCommunication", "BackForwardCache", "WebUIOmniboxPopup", "WebUIOmniboxAimPopup",
    "RenderDocument",
)
# WebRTC only through the proxy (no host or STUN-mapped candidate with this machine's address): chromium reads the
# first spelling, chromium-headless-shell the second; each ignores the other.
WEBRTC_POLICY = "disable_non_proxied_udp"
WEBRTC_ARGS = (f"--webrtc-ip-handling-policy={WEBRTC_POLICY}", f"--force-webrtc-ip-handling-policy={WEBRTC_POLICY}")

# Automation hygiene (AISTUDIO.md) plus flags that keep a headless browser quiet on a closed network.
CHROMIUM_ARGS = (
    "--disable-gpu",
    "--disable-blink-features=AutomationControlled",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--password-store=basic",
    "--renderer-process-limit=2",
    "--disable-features=" + ",".join(dict.fromkeys(PLAYWRIGHT_DISABLED_FEATURES + OWN_DISABLED_FEATURES)),
    "--in-process-gpu",  # one process fewer: each helper process costs tens of MiB
    # Playwright's profile is in /tmp, memory on a read-only container's tmpfs: a small HTTP cache, not ~80 MB.
    f"--disk-cache-size={32 * 1024 * 1024}",
    *WEBRTC_ARGS,
)
DEV_SHM = Path("/dev/shm")
DEV_SHM_MIN_BYTES = 256 * 1024 * 1024  # below it (Docker's default 64 MiB), renderers run out of shared memory
AVOID_DEV_SHM_ARG = "--disable-dev-shm-usage"  # shared memory in /tmp instead (on disk, or the tmp volume)
# Playwright fits a headed window to the viewport plus these (its Linux insets: frame, tab strip, toolbar); a window
# born at that size is never seen mid-resize by a page's first script (outer height below the viewport's otherwise).
HEADED_WINDOW_INSETS = (8, 85)
# Without Chromium's sandbox (no user namespaces here): no zygote either, which Chromium allows only then.
NO_SANDBOX_ARGS = ("--no-sandbox", "--no-zygote")

LOGIN_UNKNOWN, LOGGED_IN, NEEDS_LOGIN = LoginState.UNKNOWN, LoginState.LOGGED_IN, LoginState.NEEDS_LOGIN
SIGNIN_REFUSED = LoginState.SIGNIN_REFUSED  # Google's sign-in took this browser for automation
# Answers that can carry a renewed sign-in cookie (not images, scripts or styles).
RENEWING_RESOURCES = frozenset({"document", "xhr", "fetch"})


class SessionRejected(Exception):
    """The browser refused an imported session (a cookie it will not set, an origin it cannot open)."""


class SessionUntested(Exception):
    """An imported session could not be tried (AI Studio did not load): nothing was replaced; try again later."""


class PageUnreachable(PlaywrightError):
    """AI Studio's page did not load; the message is the browser's own error."""


def load_problem(exc: Exception | None, response: Any, url: str) -> str | None:
    """Why a load of AI Studio failed, in the browser's words (net::ERR_..., a timeout), or None if it loaded."""
    if exc is not None:
        return str(exc).splitlines()[0].removeprefix("Page.goto: ").strip() or type(exc).__name__
    if url.startswith("chrome-error://"):
        return f"the browser shows its error page ({url})"
    if response is not None and response.status >= 500:
        return f"HTTP {response.status} {response.status_text}".strip()
    return None


# Google's refusal pages, in English and in Chinese (curly apostrophes are made straight before matching).
REFUSAL_TEXTS = ("this browser or app may not be secure", "couldn't sign you in", "此浏览器或应用可能不安全", "无法登录")
REFUSAL_POLL_S = 1.0  # the refusal can render after the e-mail step without a navigation


def is_refusal_text(text: str) -> bool:
    text = text.replace("\u2019", "'").lower()
    return any(phrase in text for phrase in REFUSAL_TEXTS)


def launch_options(settings: InstanceSettings, display: str | None, sandbox: bool = False) -> dict[str, Any]:
    """Keyword arguments for Playwright's chromium.launch in the configured browser mode."""
    args = [*CHROMIUM_ARGS, *(() if uses_dev_shm(settings.dev_shm) else (AVOID_DEV_SHM_ARG,)),
            *(() if sandbox else NO_SANDBOX_ARGS), f"--lang={settings.accept_languages.split(',')[0]}",
            f"--accept-lang={settings.accept_languages}"]
    if settings.browser_mode == "headed":
        args.append(headed_window_size_arg(settings))
    options: dict[str, Any] = {
        "executable_path": settings.chromium_executable,
        "headless": settings.browser_mode != "headed",
        "args": args,
        "chromium_sandbox": sandbox,  # False makes Playwright add --no-sandbox itself
    }
    if uses_dev_shm(settings.dev_shm):
        options["ignore_default_args"] = [AVOID_DEV_SHM_ARG]  # Playwright adds it to every launch by default
    if display is not None or settings.timezone:
        # TZ: the browser process's own clock zone agrees with the pages' (Date, Intl, logs, file times).
        options["env"] = {**os.environ, **({"DISPLAY": display} if display else {}),
                          **({"TZ": settings.timezone} if settings.timezone else {})}
    return options


def headed_window_size_arg(settings: InstanceSettings) -> str:
    """The window's size at birth: the viewport plus the browser's UI, as Playwright will set it anyway."""
    width, height = settings.viewport_width + HEADED_WINDOW_INSETS[0], settings.viewport_height + HEADED_WINDOW_INSETS[1]
    return f"--window-size={width},{height}"


def uses_dev_shm(mode: str, path: Path = DEV_SHM) -> bool:
    """Whether Chromium keeps its shared memory in /dev/shm (INSTANCE_DEV_SHM; auto: when it is large enough)."""
    if mode != "auto":
        return mode == "use"
    try:
        stat = os.statvfs(path)
    except OSError:
        return False
    return stat.f_blocks * stat.f_frsize >= DEV_SHM_MIN_BYTES


def user_namespaces_work() -> bool:
    """Whether this process may create the user, PID and network namespaces Chromium's sandbox is built on
    (Docker's default seccomp profile refuses them; gateway/runtime/instance-seccomp.json permits them)."""
    # unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET) in a throwaway process: 0 where it is allowed.
    probe = "import ctypes, sys; sys.exit(ctypes.CDLL(None).unshare(0x10000000 | 0x20000000 | 0x40000000))"
    try:
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def choose_sandbox(setting: str) -> tuple[bool, str]:
    """Chromium's sandbox on or off, and why: `on` insists, `off` never, `auto` uses it where it can work."""
    if setting == "off":
        return False, "INSTANCE_SANDBOX=off"
    if setting == "on":
        return True, "INSTANCE_SANDBOX=on"
    if os.geteuid() == 0:
        return False, "running as root, where Chromium refuses its sandbox"
    if not user_namespaces_work():
        return False, "no user namespaces here (Docker's default seccomp profile refuses them)"
    return True, "user namespaces available"


def desktop_user_agent(version: str) -> str:
    """What desktop Chrome on Linux sends: the reduced user agent, no "Headless"."""
    major = version.split(".")[0]
    return f"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{major}.0.0.0 Safari/537.36"


def client_hints_override(user_agent: str, version: str, accept_languages: str) -> dict[str, Any]:
    """CDP Emulation.setUserAgentOverride: the headless shell's client hints name HeadlessChrome otherwise."""
    major = version.split(".")[0]
    brands = [("Not:A-Brand", "8"), ("Chromium", major)]
    return {
        "userAgent": user_agent,
        "acceptLanguage": accept_languages,
        "platform": "Linux x86_64",
        "userAgentMetadata": {
            "brands": [{"brand": b, "version": v} for b, v in brands],
            "fullVersionList": [{"brand": b, "version": version if b == "Chromium" else f"{v}.0.0.0"}
                                for b, v in brands],
            "fullVersion": version, "platform": "Linux", "platformVersion": "", "architecture": "x86",
            "model": "", "mobile": False, "bitness": "64", "wow64": False,
        },
    }


def is_regions_url(url: str) -> bool:
    """ai.google.dev/.../available-regions: where AI Studio sends an address outside its regions."""
    return "available-regions" in urlsplit(url).path


def is_signin_url(url: str) -> bool:
    """Google's sign-in lives on accounts.google.com, or under /ServiceLogin or /signin paths."""
    parts = urlsplit(url)
    path = parts.path.lower()
    return parts.hostname == "accounts.google.com" or "/servicelogin" in path or "/signin" in path


class BrowserHost:
    """Owns Playwright, the browser, its one context and its one page. Replaced wholesale on crash."""

    def __init__(self, settings: InstanceSettings, store: SessionStore) -> None:
        self.settings = settings
        self.store = store
        self.selectors: SelectorBook = load_selectors(settings.selectors_override_path)
        self.browser_state = "starting"
        self.login_state = LOGIN_UNKNOWN
        # Whether AI Studio loads at all (network error, proxy, DNS, timeout, error page): apart from the login.
        self.reach = Reach.UNKNOWN
        self.ready = False
        self.restarts = 0
        self.sandbox = False  # Chromium's own sandbox, decided at start (choose_sandbox)
        self.page_generation = 0  # bumps whenever `page` is a new object (live views re-attach)
        self.page_changed = asyncio.Event()
        self._pw: Playwright | None = None
        self._browser: Browser | None = None
        self._context: BrowserContext | None = None
        self._page: Page | None = None
        self._closing = False
        self._restart_task: asyncio.Task | None = None
        self._reset_task: asyncio.Task | None = None
        self._save_lock = asyncio.Lock()
        self._user_agent: str | None = None
        self._tasks_on_page = 0
        # The chat a task asked to keep open for its conversation's next turn: (task id, model); any new document
        # in the page drops it (a reset, a login check, a navigation, a replaced page).
        self.kept_chat: tuple[str, str] | None = None
        self._display = (VirtualDisplay(settings.screen_width, settings.screen_height, timezone=settings.timezone)
                         if settings.browser_mode == "headed" else None)
        self._refusal_task: asyncio.Task | None = None
        self.session_expires_at: float | None = None  # epoch seconds: the first Google auth cookie to expire
        self.login_checked_at: datetime | None = None  # the last load of AI Studio that told the login state
        self._proxy: BrowserProxy | None = None
        self._page_error: str | None = None
        self._landing_task: asyncio.Task | None = None
        self._saved_fingerprint: frozenset = frozenset()  # the login cookies as last written to the volume
        self._response_checks: set[asyncio.Task] = set()

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        # Playwright's Node.js driver inherits this; a small young generation keeps its idle heap small.
        os.environ.setdefault("NODE_OPTIONS", self.settings.driver_node_options)
        self._pw = await async_playwright().start()
        self.sandbox, why = await asyncio.to_thread(choose_sandbox, self.settings.sandbox)
        log.info("Chromium's sandbox %s: %s", "on" if self.sandbox else "off", why)
        self._proxy = browser_proxy(self.settings.proxy.get_secret_value() if self.settings.proxy else None)
        if self._proxy is not None:
            await self._proxy.start()
        try:
            await self._launch()
        except Exception as exc:  # a Chromium that dies at launch (seen under load): tried again, as after a crash
            log.error("browser launch failed: %s; trying again", str(exc).splitlines()[0])
            self.browser_state = "down"
            await self._restart()

    async def close(self) -> None:
        self._closing = True
        for task in (self._restart_task, self._reset_task, self._refusal_task, self._landing_task):
            if task:
                task.cancel()
        if self._context is not None and self.browser_state == "up":
            await self.save_session()
        if self._browser is not None:
            try:
                await self._browser.close()
            except PlaywrightError:
                pass
        if self._pw is not None:
            await self._pw.stop()
        if self._proxy is not None:
            await self._proxy.close()
        if self._display is not None:
            await self._display.stop()

    async def _launch(self) -> None:
        self.browser_state, self.ready = "starting", False
        started = time.monotonic()
        display = await self._display.start() if self._display is not None else None
        self._browser = await self._pw.chromium.launch(
            **launch_options(self.settings, display, self.sandbox), proxy=self._proxy_option())
        self._browser.on("disconnected", self._on_disconnected)
        # Headless Chromium announces itself in its user agent; a headed one needs no override.
        self._user_agent = None if display else desktop_user_agent(self._browser.version)
        await self._open_context(self.store.load())
        self.browser_state = "up"
        log.info("browser up in %.0f ms (Chromium %s)", (time.monotonic() - started) * 1000, self._browser.version)
        try:
            await self.load_home()
        except PageUnreachable:
            pass  # the browser is up; the login state says `unreachable` and the app retries the page

    def _proxy_option(self) -> dict[str, Any] | None:
        """Playwright's launch `proxy` (the browser's alone), or None to go direct."""
        return self._proxy.launch_option() if self._proxy is not None else None

    async def _open_context(self, state: dict[str, Any]) -> None:
        self._context = await self._new_context(state)
        self.login_state = NEEDS_LOGIN if auth_cookies_expired(state) else LOGIN_UNKNOWN
        self.session_expires_at = auth_cookies_expire_at(state)
        self._saved_fingerprint = login_fingerprint(state.get("cookies", []))
        await self._new_page()

    async def _new_context(self, state: dict[str, Any]) -> BrowserContext:
        # No script hides navigator.webdriver: --disable-blink-features=AutomationControlled makes it a native
        # false, as in desktop Chrome, where a patched getter would itself be a tell.
        context = await self._browser.new_context(
            viewport={"width": self.settings.viewport_width, "height": self.settings.viewport_height},
            screen={"width": self.settings.screen_width, "height": self.settings.screen_height},
            storage_state=state,
            user_agent=self._user_agent,
            timezone_id=self.settings.timezone,
        )
        context.on("response", self._on_response)
        return context

    def _on_response(self, response: Response) -> None:
        """A page or call answer from Google or AI Studio may renew a login cookie: looked at off the event."""
        if response.request.resource_type in RENEWING_RESOURCES and self._from_google(response.url):
            task = asyncio.get_running_loop().create_task(self._save_if_renewed(response))
            self._response_checks.add(task)
            task.add_done_callback(self._response_checks.discard)

    def _from_google(self, url: str) -> bool:
        host = urlsplit(url).hostname or ""
        return self._on_aistudio(url) or host == "google.com" or host.endswith(".google.com")

    async def _save_if_renewed(self, response: Response) -> None:
        """A renewal is written at once (not at the next cookie look): a crash a moment later keeps it."""
        try:
            if response.frame.page.context is not self._context:
                return  # a trial context's renewals are saved when it is adopted
            header = await response.header_value("set-cookie")
        except PlaywrightError:
            return  # the page or context went away meanwhile
        if header and renews_login(header):
            await self.save_session()

    async def _new_page(self) -> None:
        self._wire_page(await self._page_in(self._context))

    async def _page_in(self, context: BrowserContext) -> Page:
        page = await context.new_page()
        # Playwright's context `locale` would cut navigator.languages to that one tag (a tell, and English would not
        # come first): the locale (Intl) and the Accept-Language list are set on the page, before its first load.
        cdp = await context.new_cdp_session(page)
        await cdp.send("Emulation.setLocaleOverride", {"locale": self.settings.locale})
        if self._user_agent is None:  # headed: the browser's own user agent and client hints stay
            await cdp.send("Emulation.setUserAgentOverride",
                           {"userAgent": "", "acceptLanguage": self.settings.accept_languages})
        else:  # headless: the headless shell's client hints name HeadlessChrome otherwise
            await cdp.send("Emulation.setUserAgentOverride", client_hints_override(
                self._user_agent, self._browser.version, self.settings.accept_languages))
        return page

    def _wire_page(self, page: Page) -> None:
        page.on("framenavigated", self._on_navigated)
        page.on("domcontentloaded", lambda _page: self.drop_kept_chat())
        page.on("crash", lambda _page: asyncio.get_running_loop().create_task(self._replace_crashed_page()))
        self._set_page(page)

    def _set_page(self, page: Page) -> None:
        self.kept_chat = None
        self._page = page
        self.page_generation += 1
        self.page_changed.set()
        self.page_changed = asyncio.Event()

    def _on_disconnected(self, _browser: Browser) -> None:
        if self._closing:
            return
        log.error("browser disconnected; restarting it")
        self.browser_state, self.ready = "down", False
        if self._restart_task is None or self._restart_task.done():
            self._restart_task = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        delay = self.settings.browser_restart_delay_s
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                self.restarts += 1
                await self._launch()
                return
            except Exception as exc:  # any launch failure: try again, slower
                log.error("browser restart failed: %s", exc)
                self.browser_state = "down"
                delay = min(delay * 2, 30.0)

    async def _replace_crashed_page(self) -> None:
        log.error("page crashed; opening a new one")
        try:
            await self._page.close()
        except PlaywrightError:
            pass
        await self._new_page()
        await self.load_home()

    # ---- the page --------------------------------------------------------------------------------

    @property
    def page(self) -> Page:
        if self._page is None or self.browser_state != "up":
            raise PlaywrightError("browser is not running")
        return self._page

    @property
    def page_url(self) -> str | None:
        return self._page.url if self._page is not None else None

    async def load_home(self) -> None:
        """Open the new-chat page, retrying a few times; records login state from where it lands, or
        reach `unreachable` with the browser's error (raised as PageUnreachable) when it never loads."""
        problem = "not loaded"
        for attempt in range(1, self.settings.page_load_attempts + 1):
            response, error = None, None
            try:
                response = await self.page.goto(
                    self.settings.new_chat_url,
                    wait_until="domcontentloaded",
                    timeout=self.settings.page_load_timeout_s * 1000,
                )
            except PlaywrightError as exc:
                if self.browser_state != "up":
                    raise  # the browser itself went away: its restart handles that
                error = exc
            problem = load_problem(error, response, self.page.url)
            if problem is None:
                await self.read_landing()
                self.login_checked_at = datetime.now(UTC)
                self.ready = True  # only now: an import may not land while the first landing is being read
                return
            log.warning("loading %s failed (attempt %d): %s", self.settings.new_chat_url, attempt, problem)
        self.ready = True  # the browser is up even if AI Studio is not reachable; /status says why
        self._unreachable(problem)
        raise PageUnreachable(problem)

    @property
    def page_error(self) -> str | None:
        """The browser's error while AI Studio cannot be reached, else None."""
        return self._page_error if self.reach in OUT_OF_REACH else None

    def _unreachable(self, problem: str) -> None:
        if self.reach != Reach.UNREACHABLE:
            log.warning("AI Studio unreachable: %s (login state stays %s)", problem, self.login_state)
        self.reach, self._page_error = Reach.UNREACHABLE, problem

    def _reachable(self) -> None:
        """A load worked: the landing page then says the login state."""
        if self.reach in OUT_OF_REACH:
            log.info("AI Studio reachable again")
        self.reach, self._page_error = Reach.REACHABLE, None

    def region_blocked(self, url: str) -> None:
        """AI Studio sent the page to its "available regions" page: the address this browser comes from (its
        proxy's exit) is outside Google's regions. Out of the pool until a later load works."""
        if self.reach != Reach.REGION_BLOCKED:
            log.warning("AI Studio is not served to this browser's address (%s)", url)
        self.reach = Reach.REGION_BLOCKED
        self._page_error = f"AI Studio sent the page to {url}: not served where this browser's address is"

    def signed_out(self, why: str) -> None:
        if self.login_state != NEEDS_LOGIN:
            log.warning("signed out: %s (login state %s -> %s)", why, self.login_state, NEEDS_LOGIN)
        self.login_state = NEEDS_LOGIN

    async def read_landing(self) -> None:
        """What a loaded page says: the region page, Google's sign-in (by its URL), or AI Studio, signed in only
        when its prompt box shows and no bare "Sign in" link does (the real page may open signed out without
        redirecting)."""
        page = self.page
        url = page.url
        if is_regions_url(url):
            self.region_blocked(url)
            return
        self._reachable()
        if not self._is_aistudio_page(url):
            self._update_login_state(url)
            return
        only_link = await self.shows_signin_link(page)
        if page is not self._page:
            return  # an import replaced the page meanwhile: its own check said what it shows
        if only_link:
            self.signed_out("AI Studio shows only a sign-in link")
        else:
            self._update_login_state(url)

    async def shows_signin_link(self, page: Page) -> bool:
        """Waits (up to the element timeout) for the prompt box or the sign-in link; True when only the link shows."""
        prompt, link = self.selectors.css_union("prompt_textarea"), self.selectors.css_union("signin_link")
        if not link:
            return False
        try:
            await page.locator(f"{prompt}, {link}" if prompt else link).first.wait_for(
                state="attached", timeout=self.settings.element_timeout_s * 1000)
            return await page.locator(link).count() > 0 and (not prompt or await page.locator(prompt).count() == 0)
        except PlaywrightError:
            return False  # neither showed in time, or the page navigated: the URL's word stands

    def _on_aistudio(self, url: str) -> bool:
        return urlsplit(url).netloc == urlsplit(self.settings.aistudio_url).netloc

    def _is_aistudio_page(self, url: str) -> bool:
        """AI Studio's own page (not Google's sign-in, which may share its host, as in the simulator)."""
        return self._on_aistudio(url) and not is_signin_url(url)

    def _on_navigated(self, frame) -> None:
        if frame.parent_frame is None and frame.page is self._page:  # a replaced page's last moves say nothing
            if self._is_aistudio_page(frame.url) and self.login_state != LOGGED_IN:
                self._landing_check_soon()  # signed in only once the page shows it (not by its URL alone)
            else:
                self._update_login_state(frame.url)
            self._watch_for_refusal(frame.url)

    def _landing_check_soon(self) -> None:
        """The newest navigation's check; one still waiting on an older page is dropped."""
        if self._landing_task is not None and not self._landing_task.done():
            self._landing_task.cancel()
        self._landing_task = asyncio.get_running_loop().create_task(self._landing_check())

    async def _landing_check(self) -> None:
        await asyncio.sleep(0)  # after the navigation's own handlers
        try:
            await self.read_landing()
        except PlaywrightError as exc:
            log.debug("landing check skipped: %s", exc)

    def _update_login_state(self, url: str) -> None:
        if not url.startswith("http"):
            return
        if is_signin_url(url):
            new_state = NEEDS_LOGIN
        elif urlsplit(url).netloc == urlsplit(self.settings.aistudio_url).netloc:
            new_state = LOGGED_IN
        else:
            return
        if new_state != self.login_state:
            log.info("login state %s -> %s", self.login_state, new_state)
            previous, self.login_state = self.login_state, new_state
            if previous in (NEEDS_LOGIN, SIGNIN_REFUSED) and new_state == LOGGED_IN:
                # A person just signed in through the live view: keep that login.
                asyncio.get_running_loop().create_task(self.save_session())

    def _watch_for_refusal(self, url: str) -> None:
        """While the page is on Google's sign-in, look for its refusal text (one watcher at a time)."""
        if is_signin_url(url) and (self._refusal_task is None or self._refusal_task.done()):
            self._refusal_task = asyncio.get_running_loop().create_task(self._refusal_watch(self._page))

    async def _refusal_watch(self, page: Page) -> None:
        while not self._closing and page is self._page and is_signin_url(page.url):
            try:
                text = await page.evaluate("() => document.body ? document.body.innerText : ''")
            except PlaywrightError:  # a navigation replaced the document: look again at the next one
                text = ""
            if is_refusal_text(text):
                if self.login_state != SIGNIN_REFUSED:
                    log.warning("Google refused to sign this browser in (%s)", urlsplit(page.url).path)
                    self.login_state = SIGNIN_REFUSED
            elif self.login_state == SIGNIN_REFUSED:
                self.login_state = NEEDS_LOGIN  # back on an ordinary sign-in step: a person may try again
            await asyncio.sleep(REFUSAL_POLL_S)

    def keep_chat(self, task_id: str, model: str) -> None:
        """Leave the page on this task's chat (no reset) for a follow-up turn that continues it."""
        self.kept_chat = (task_id, model)

    def drop_kept_chat(self) -> None:
        self.kept_chat = None

    def schedule_reset(self) -> None:
        """Go back to a fresh new chat after a task, off the request's critical path."""
        self._reset_task = asyncio.get_running_loop().create_task(self._reset())

    async def _reset(self) -> None:
        # A new tab now and then: Playwright keeps every request of a page (uploads included) until it closes.
        self._tasks_on_page += 1
        try:
            if self._tasks_on_page >= self.settings.recycle_tab_every_tasks:
                self._tasks_on_page = 0
                old = self._page
                await self._new_page()
                await old.close()
            await self.load_home()
        except PlaywrightError as exc:
            log.warning("page reset failed: %s", exc)

    async def wait_reset(self) -> None:
        if self._reset_task is not None and not self._reset_task.done():
            await asyncio.shield(self._reset_task)

    # ---- login state -----------------------------------------------------------------------------

    async def save_session(self) -> None:
        async with self._save_lock:
            try:
                state = await self._context.storage_state()
            except PlaywrightError as exc:
                log.warning("could not read storage state: %s", exc)
                return
            await asyncio.to_thread(self.store.save, state)
            self._saved_fingerprint = login_fingerprint(state.get("cookies", []))
            self.session_expires_at = auth_cookies_expire_at(state)
            log.info("session saved (%d cookies)", len(state.get("cookies", [])))

    async def watch_login_cookies(self) -> None:
        """Google renews its sign-in cookies while a page is open, and a stale copy may be refused: a changed
        login cookie is written to the volume within one interval (a SIGKILL then loses at most that)."""
        while not self._closing:
            await asyncio.sleep(self.settings.session_watch_interval_s)
            if self.browser_state != "up" or self._context is None or self.login_state != LOGGED_IN:
                continue  # a signed-out jar is not a login worth writing over the stored one
            try:
                cookies = await self._context.cookies()
            except PlaywrightError:
                continue  # the context is being replaced (an import, a restart)
            if login_fingerprint(cookies) != self._saved_fingerprint:
                log.info("a login cookie was renewed; saving the session")
                await self.save_session()

    async def export_session(self) -> dict[str, Any]:
        return await self._context.storage_state()

    async def replace_session(self, state: dict[str, Any]) -> None:
        """An imported login, tried first in a context of its own: it replaces the working one only once AI Studio
        loads signed in there. The login it replaces is kept on the volume (`restore_previous` brings it back).
        SessionRejected, SessionUntested and OSError leave the old login, its page and its file as they were."""
        trial, page = await self._trial(state)
        try:
            if self.login_state == LOGGED_IN:
                await self.save_session()  # the login kept as the previous one is its newest renewal
            fresh = await trial.storage_state()  # the page load may have renewed a cookie: keep the newest
            await asyncio.to_thread(self.store.save, fresh, keep_previous=True)
        except BaseException:
            await _close_quietly(trial)
            raise
        old = self._context
        self._context = trial
        self._wire_page(page)
        self.session_expires_at = auth_cookies_expire_at(fresh)
        self._saved_fingerprint = login_fingerprint(fresh.get("cookies", []))
        self.login_state, self.reach, self._page_error = LOGGED_IN, Reach.REACHABLE, None
        self.login_checked_at = datetime.now(UTC)
        await _close_quietly(old)

    async def restore_previous(self) -> None:
        """The login an import replaced, back (tried like any import); the one it replaces becomes the previous."""
        previous = await asyncio.to_thread(self.store.load_previous)
        if previous is None:
            raise SessionRejected("there is no previous login on this instance's volume")
        await self.replace_session(previous)

    async def _trial(self, state: dict[str, Any]) -> tuple[BrowserContext, Page]:
        """A context with `state`, on AI Studio's new-chat page, signed in; else it is closed and the reason raised."""
        try:
            trial = await self._new_context(state)
        except PlaywrightError as exc:
            if self.browser_state != "up" or not self._browser.is_connected():
                raise  # the browser itself went away: not the import's fault
            raise SessionRejected(await self._rejection_reason(state, exc)) from None
        try:
            page = await self._page_in(trial)
            verdict = await self._try_home(page)
        except BaseException:
            await _close_quietly(trial)
            raise
        if verdict is not None:
            await _close_quietly(trial)
            raise verdict
        return trial, page

    async def _try_home(self, page: Page) -> Exception | None:
        """None when AI Studio loads signed in on `page`; else why not (rejected) or that it could not tell."""
        try:
            response = await page.goto(self.settings.new_chat_url, wait_until="domcontentloaded",
                                       timeout=self.settings.page_load_timeout_s * 1000)
            problem = load_problem(None, response, page.url)
        except PlaywrightError as exc:
            if self.browser_state != "up":
                raise
            problem = load_problem(exc, None, page.url)
        if problem is not None:
            return SessionUntested(f"AI Studio did not load, so the session could not be tried: {problem}")
        if is_regions_url(page.url):
            return SessionUntested(f"AI Studio is not served where this browser's address is ({page.url})")
        if is_signin_url(page.url):
            return SessionRejected("the session is not signed in: AI Studio sent the page to Google's sign-in")
        if not self._on_aistudio(page.url):
            return SessionRejected(f"the session is not signed in: AI Studio sent the page to {page.url}")
        if await self.shows_signin_link(page):
            return SessionRejected("the session is not signed in: AI Studio shows only a sign-in link")
        return None

    async def _rejection_reason(self, state: dict[str, Any], exc: PlaywrightError) -> str:
        """The browser's words, and which cookie it refused (tried one at a time in a throwaway context)."""
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        detail = lines[0] if lines else str(exc).splitlines()[0]
        probe = await self._browser.new_context()
        try:
            for index, cookie in enumerate(state.get("cookies", [])):
                try:
                    await probe.add_cookies([cookie])
                except PlaywrightError:
                    return f"the browser refused cookie #{index} ({cookie['name']} for {cookie['domain']}): {detail}"
        finally:
            await probe.close()
        return f"the browser refused the session: {detail}"

    def reload_selectors(self) -> SelectorBook:
        self.selectors = load_selectors(self.settings.selectors_override_path)
        return self.selectors


async def _close_quietly(context: BrowserContext | None) -> None:
    if context is None:
        return
    try:
        await context.close()
    except PlaywrightError:
        pass
