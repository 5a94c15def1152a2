"""Google-style session cookies and the redirect to the sign-in page."""

from __future__ import annotations

from urllib.parse import quote

from litestar import Request
from litestar.response.base import ASGIResponse

from .state import SimState

COOKIE_NAMES = ("SID", "HSID", "SSID", "APISID", "SAPISID")
# The rotating cookie, __Secure-1PSIDTS on the real page (plain HTTP here: no __Secure- prefix is allowed).
ROTATING_COOKIE = "SIDTS"
ONE_YEAR = 365 * 24 * 3600
SIGNIN_PATH = "/ServiceLogin"


def current_account(request: Request, sim: SimState) -> str | None:
    return sim.session_account(request.cookies.get("SID"), request.cookies.get(ROTATING_COOKIE))


def rotating_cookie(account: str, value: str, max_age: int = ONE_YEAR) -> str:
    return f"{ROTATING_COOKIE}={value}; Path=/; Max-Age={max_age}; SameSite=Lax; HttpOnly"


def signin_url(continue_url: str) -> str:
    return f"{SIGNIN_PATH}?continue={quote(continue_url, safe='')}"


def redirect(location: str, status_code: int = 302, set_cookies: list[str] | None = None) -> ASGIResponse:
    # ASGIResponse takes a header list, so several Set-Cookie headers can be written unquoted (SID=a@b.c)
    headers = [("location", location), ("cache-control", "no-store")]
    headers += [("set-cookie", cookie) for cookie in set_cookies or []]
    return ASGIResponse(status_code=status_code, headers=headers, body=b"")


def session_cookies(account: str, max_age: int = ONE_YEAR) -> list[str]:
    # plain HTTP in tests: no Secure attribute and no __Secure- cookies
    return [f"{name}={account}; Path=/; Max-Age={max_age}; SameSite=Lax" for name in COOKIE_NAMES]


def safe_continue(url: str | None) -> str:
    # only relative paths or http(s) URLs; anything else goes to the new-chat page
    if url and (url.startswith("/") and not url.startswith("//") or url.startswith(("http://", "https://"))):
        return url
    return "/prompts/new_chat"
