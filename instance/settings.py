"""Instance settings: `INSTANCE_*` environment variables, read once at start and passed down."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pydantic import SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet_contract.regional import accept_languages_for, normalize_locale, normalize_timezone

CHROMIUM = "/usr/bin/chromium"
HEADLESS_SHELL = "/usr/bin/chromium-headless-shell"


class InstanceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INSTANCE_", extra="ignore")

    aistudio_url: str = "https://aistudio.google.com"
    model: str = "gemini-nano-banana-2.1"
    # Where "sign in" sends the page; {continue} is the new-chat URL, URL-encoded.
    signin_url: str = "https://accounts.google.com/ServiceLogin?continue={continue}"
    # Loopback unless told otherwise (the image says 0.0.0.0); beyond loopback an api_token is required.
    host: str = "127.0.0.1"
    port: int = 8000
    api_token: str | None = None
    data_dir: Path = Path("/data")
    # headed: Debian's chromium in a window on its own virtual display (Xvfb), which shows none of headless's
    # tells to Google's sign-in (the default); headless: the same browser with --headless=new; headless-shell:
    # Debian's old headless shell, the lightest, with the tells (tests/bench/bench_browser_modes.py).
    browser_mode: Literal["headed", "headless", "headless-shell"] = "headed"
    chromium_path: str | None = None  # unset: chromium-headless-shell in that mode, else chromium
    # Chromium's sandbox: auto uses it where user namespaces work (not as root, not under Docker's default
    # seccomp profile: the gateway passes gateway/runtime/instance-seccomp.json); on: required; off: --no-sandbox.
    sandbox: Literal["auto", "on", "off"] = "auto"
    # Chromium's shared memory: auto uses /dev/shm when it holds at least DEV_SHM_MIN_BYTES (Docker's --shm-size, a
    # Kubernetes memory emptyDir), else --disable-dev-shm-usage sends it to /tmp (Docker's 64 MiB default is too
    # small); use: always /dev/shm; avoid: always /tmp.
    dev_shm: Literal["auto", "use", "avoid"] = "auto"
    viewport_width: int = 1440
    viewport_height: int = 900
    # The screen the page sees (and the virtual display's size); a desktop screen is larger than the window.
    screen_width: int = 1920
    screen_height: int = 1080
    # The clock zone of the page and of the browser process (IANA name, set with the proxy to match its exit
    # country); unset: the process's own (UTC in the image).
    timezone: str | None = None
    # Intl's locale (BCP 47); the Accept-Language list below defaults from it.
    locale: str = "en-US"
    # Unset: from the locale, English first (the selectors use the page's English labels): ja-JP -> en-US,en,ja-JP,ja.
    accept_languages: str = ""
    selectors_file: Path | None = None  # overrides the packaged selectors; default <data_dir>/selectors.json

    max_prompt_chars: int = 10_000
    max_reference_images: int = 4
    max_reference_bytes: int = 8 * 1024 * 1024  # per image, decoded
    max_reference_pixels: int = 40_000_000  # per image, read from its header before any pixel is decoded
    max_body_bytes: int = 48 * 1024 * 1024
    max_session_bytes: int = 5 * 1024 * 1024

    # The browser's egress proxy (scheme://[user:password@]host:port; http, https, socks5, socks5h), for
    # Chromium alone; this service's own HTTP server never uses it.
    proxy: SecretStr | None = None
    # While AI Studio cannot be reached (login state `unreachable`), its page is tried again this often.
    unreachable_retry_s: float = 30.0

    page_load_timeout_s: float = 30.0
    page_load_attempts: int = 3
    element_timeout_s: float = 5.0
    generation_timeout_s: float = 120.0
    poll_interval_s: float = 0.03
    # Completion without a GenerateContent response seen: image counts unchanged for this long.
    settle_s: float = 0.5
    generate_content_url_part: str = "GenerateContent"

    # How often the browser's login cookies are compared with the saved copy (a renewal is saved within this).
    session_watch_interval_s: float = 2.0
    session_save_every_tasks: int = 10
    session_save_every_s: float = 1800.0
    browser_restart_delay_s: float = 1.0
    recycle_tab_every_tasks: int = 5
    # A chat kept open for a conversation's next turn (GenerateRequest.keep_chat) is reset after this long unused.
    keep_chat_s: float = 120.0
    # Page snapshots (instance/snapshots.py): after a ui_changed failure at most one per this many seconds;
    # the newest `snapshots_kept` stay under <data_dir>/snapshots.
    snapshot_interval: float = 300.0
    snapshots_kept: int = 10
    driver_node_options: str = "--max-semi-space-size=2 --max-old-space-size=96"
    log_level: str = "INFO"

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str | None) -> str | None:
        return normalize_timezone(value)

    @field_validator("locale")
    @classmethod
    def _valid_locale(cls, value: str) -> str:
        return normalize_locale(value) or "en-US"

    @model_validator(mode="after")
    def _languages_from_locale(self) -> InstanceSettings:
        if not self.accept_languages.strip():
            self.accept_languages = accept_languages_for(self.locale)
        return self

    @property
    def chromium_executable(self) -> str:
        if self.chromium_path:
            return self.chromium_path
        return HEADLESS_SHELL if self.browser_mode == "headless-shell" else CHROMIUM

    def exposure_problem(self) -> str | None:
        """Why this service must not start as configured: reachable beyond loopback with no token."""
        if self.api_token or is_loopback(self.host):
            return None
        return (f"refusing to listen on {self.host}:{self.port} without a token: anyone who reaches it could read "
                "the Google session; set INSTANCE_API_TOKEN, or INSTANCE_HOST=127.0.0.1")

    @property
    def new_chat_url(self) -> str:
        return f"{self.aistudio_url.rstrip('/')}/prompts/new_chat?model={self.model}"

    @property
    def signin_page_url(self) -> str:
        return self.signin_url.replace("{continue}", quote(self.new_chat_url, safe=""))

    @property
    def storage_state_path(self) -> Path:
        return self.data_dir / "storage_state.json"

    @property
    def snapshots_dir(self) -> Path:
        return self.data_dir / "snapshots"

    @property
    def selectors_override_path(self) -> Path:
        return self.selectors_file or self.data_dir / "selectors.json"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or the name localhost; a wildcard (0.0.0.0, ::) or any other name is not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[] ")).is_loopback
    except ValueError:
        return False
