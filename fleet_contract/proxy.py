"""Egress proxy URLs for the instances' browsers: the grammar both sides accept, and the masked form shown back.

Pure functions: the gateway checks and masks what operators give it, the instance parses INSTANCE_PROXY with
the same rules (its SOCKS5 relay stays in the instance).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SCHEMES = ("http", "https", "socks5", "socks5h")
MAX_LENGTH = 2048


class ProxyURLError(ValueError):
    """Why a proxy URL is refused; `reason` is a message key suffix (proxy_invalid_<reason>)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid proxy URL ({reason.replace('_', ' ')})")
        self.reason = reason


@dataclass(frozen=True)
class ProxyURL:
    scheme: str
    host: str
    port: int
    username: str | None
    password: str | None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def credentials(self) -> tuple[str, str]:
        """User name and password as the proxy expects them (percent-escapes undone); empty when there is none."""
        return unquote(self.username or ""), unquote(self.password or "")

    @property
    def browser_scheme(self) -> str:
        """Chromium's scheme: its socks5 already resolves names at the proxy, so socks5h is the same."""
        return "socks5" if self.scheme == "socks5h" else self.scheme

    @property
    def on_loopback(self) -> bool:
        """Names this machine's own loopback (127.0.0.0/8, ::1, localhost): elsewhere, e.g. in a container, it is not this one."""
        host = self.host.lower().rstrip(".")
        if host == "localhost" or host.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def masked(self) -> str:
        """The form shown back: never the password, at most the username's first character."""
        if self.username is None:
            return f"{self.scheme}://{self.address}"
        hint = self.username[:1]
        return f"{self.scheme}://{hint}***:***@{self.address}"


def parse_proxy(value: str) -> ProxyURL:
    """scheme://[user[:password]@]host:port with scheme http, https, socks5 or socks5h; nothing else."""
    if not isinstance(value, str) or not value.strip():
        raise ProxyURLError("empty")
    value = value.strip()
    if len(value) > MAX_LENGTH or any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise ProxyURLError("malformed")
    scheme, sep, _ = value.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ProxyURLError("scheme")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ProxyURLError("port") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyURLError("malformed")
    if not parts.hostname:
        raise ProxyURLError("host")
    if port is None or port == 0:
        raise ProxyURLError("port")
    return ProxyURL(
        scheme=parts.scheme.lower(),
        host=parts.hostname,
        port=port,
        username=parts.username if parts.username else None,
        password=parts.password if parts.username else None,
    )


def with_address(value: str, host: str, port: int) -> str:
    """The same proxy URL (scheme, credentials as written) pointed at another host and port."""
    parts = urlsplit(value.strip())
    userinfo, at, _ = parts.netloc.rpartition("@")
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{userinfo}{at}{shown}:{port}"


def normalize_proxy(value: str | None) -> str | None:
    """The URL to store: None for none ("" or null clears); raises ProxyURLError for a bad one."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    parse_proxy(value)
    return value.strip()


def mask_proxy(value: str | None) -> str | None:
    """The masked form of a stored URL; a stored URL that no longer parses is not shown at all."""
    if not value:
        return None
    try:
        return parse_proxy(value).masked
    except ProxyURLError:
        return "***"
