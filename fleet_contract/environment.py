"""The instance's environment: every `INSTANCE_*` variable the gateway sets, spelled once.

The gateway's runtimes build one `InstanceEnvironment` and hand `to_environ()` to the engine; the instance
reads the same names through its settings (a test holds the two together).
"""

from __future__ import annotations

import msgspec

PREFIX = "INSTANCE_"
PORT = 8000  # the instance's HTTP port inside its container or pod
DATA_DIR = "/data"  # its volume: the login, the selectors override


class InstanceEnvironment(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """What one instance is started with; None: the instance's own default."""

    api_token: str
    aistudio_url: str | None = None
    signin_url: str | None = None  # {continue}: the new-chat URL, URL-encoded
    browser_mode: str | None = None  # headed, headless, headless-shell
    proxy: str | None = None  # the browser's egress proxy, for Chromium alone
    timezone: str | None = None  # IANA name (Asia/Tokyo): the page's and the browser process's clock zone
    locale: str | None = None  # BCP 47 tag (ja-JP): Intl's locale; Accept-Language defaults from it
    host: str | None = None
    port: int | None = None
    data_dir: str | None = None
    chromium_path: str | None = None
    log_level: str | None = None

    def to_environ(self) -> dict[str, str]:
        return {variable(name): str(value) for name, value in msgspec.structs.asdict(self).items() if value is not None}


def variable(field: str) -> str:
    """The variable of one field: `api_token` → `INSTANCE_API_TOKEN`."""
    if field not in InstanceEnvironment.__struct_fields__:
        raise KeyError(field)
    return PREFIX + field.upper()
