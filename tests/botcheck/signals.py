"""Which automation tells a bot-check report shows: a pure function of the page's report and the headers."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

# chrome.runtime is read and reported but is no signal: desktop Chrome defines it on a page only for an
# extension that lists the page's origin as externally connectable.
# Reported but tolerated: a container has no GPU, so WebGL renders in software (SwiftShader) whatever the mode.
SOFT_SIGNALS = frozenset({"webgl_software"})

_NOTIFICATION_AS_QUERY = {"default": "prompt", "granted": "granted", "denied": "denied"}


def _chrome_major(user_agent: str) -> str | None:
    found = re.search(r"Chrom(?:e|ium)/(\d+)", user_agent or "")
    return found.group(1) if found else None


def _headless(text: Any) -> bool:
    return "headless" in str(text).lower()


def _brands_problem(ua_data: dict | None, major: str | None) -> str | None:
    if not ua_data or not ua_data.get("brands"):
        return "navigator.userAgentData or its brands are missing"
    brands = {b["brand"]: b["version"] for b in ua_data["brands"]}
    if any(_headless(name) for name in brands):
        return f"brands name a headless browser: {sorted(brands)}"
    real = [name for name in brands if name in ("Chromium", "Google Chrome")]
    if not real or any(brands[name] != major for name in real):
        return f"brands {brands} do not match the user agent's Chrome/{major}"
    if ua_data.get("mobile") or not ua_data.get("platform"):
        return f"not a desktop platform: {ua_data}"
    return None


def _high_entropy_problem(values: dict | None) -> str | None:
    if not values or "error" in values:
        return f"getHighEntropyValues failed: {values}"
    full = values.get("fullVersionList") or []
    if not full or any(_headless(b.get("brand")) for b in full):
        return f"fullVersionList is empty or headless: {full}"
    return None


def _header_problem(doc: dict[str, str], report: dict[str, str]) -> str | None:
    for name in ("sec-ch-ua", "sec-ch-ua-mobile", "sec-ch-ua-platform", "user-agent"):
        if name not in doc:
            return f"{name} header missing on the document request"
    if report.get("sec-ch-ua-mobile", doc["sec-ch-ua-mobile"]) != "?0":
        return f"sec-ch-ua-mobile says mobile: {doc['sec-ch-ua-mobile']}"
    if "sec-ch-ua-full-version-list" not in report:
        return "sec-ch-ua-full-version-list missing although the page asked for it (Accept-CH)"
    tells = [f"{k}: {v}" for k, v in (*doc.items(), *report.items()) if k.startswith("sec-ch-ua") or k == "user-agent"]
    headless = [t for t in tells if _headless(t)]
    return f"headers name a headless browser: {headless}" if headless else None


def _languages_problem(r: dict, doc: dict[str, str]) -> str | None:
    languages = r.get("languages") or []
    if len(languages) < 2:
        # desktop Chrome lists the base language after the regional one (en-US, en)
        return f"navigator.languages is {languages}"
    header = doc.get("accept-language", "")
    if not header:
        return "no Accept-Language header"
    first = header.split(",")[0].split(";")[0].strip()
    if first != r.get("language") or first != languages[0]:
        return f"Accept-Language {header!r} disagrees with navigator.language(s) {r.get('language')!r} {languages}"
    return None


def _outer_problem(r: dict) -> str | None:
    (ow, oh), (iw, ih) = r["outer"], r["inner"]
    if not ow or not oh:
        return f"outerWidth/outerHeight are {ow}x{oh}"
    if ow < iw or oh <= ih:
        # a desktop window has a tab strip and toolbar above its viewport
        return f"outer size {ow}x{oh} leaves no room for browser UI around the viewport {iw}x{ih}"
    return None


def ice_candidates(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(type, address) of each ICE candidate the page gathered: `candidate:f 1 udp prio ADDRESS port typ TYPE ...`."""
    found = []
    for line in (report.get("webrtc") or {}).get("candidates", []):
        parts = line.split()
        if len(parts) >= 8 and parts[6] == "typ":
            found.append((parts[7], parts[4]))
    return found


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False  # an mDNS name (<uuid>.local) hides the address


def _webrtc_problem(report: dict[str, Any]) -> str | None:
    # Only a relay (through a TURN server, as through the proxy) may carry an address; host, srflx and prflx
    # candidates name this machine or the address it reaches STUN from beside the proxy.
    leaks = [f"{kind} {address}" for kind, address in ice_candidates(report) if kind != "relay" and _is_address(address)]
    return f"WebRTC reveals addresses beside the proxy: {leaks}" if leaks else None


def evaluate(report: dict[str, Any]) -> dict[str, str]:
    """Fired signals, name -> why. `report` is the page's report plus `headers` {document, report}."""
    if "error" in report:
        return {"page_error": report["error"]}
    headers = report.get("headers", {})
    doc, rep = headers.get("document", {}), headers.get("report", {})
    major = _chrome_major(report.get("user_agent", ""))
    notification = report.get("notification_permission")
    gl = report.get("webgl") or {}
    renderer = f"{gl.get('unmasked_vendor')} {gl.get('unmasked_renderer')}"
    checks: dict[str, str | None] = {
        "webdriver": None if report.get("webdriver") is False and report.get("webdriver_getter_native")
        else f"navigator.webdriver={report.get('webdriver')!r}, native getter={report.get('webdriver_getter_native')}",
        "headless_user_agent": "Headless in the user agent" if _headless(report.get("user_agent"))
        or _headless(report.get("app_version")) else None,
        "ua_brands": _brands_problem(report.get("ua_data"), major),
        "ua_high_entropy": _high_entropy_problem(report.get("ua_high_entropy")),
        "sec_ch_ua_headers": _header_problem(doc, rep),
        "plugins": None if report.get("plugins") and report.get("mime_types")
        else f"plugins={report.get('plugins')}, mimeTypes={report.get('mime_types')}",
        "window_chrome": None if report.get("window_chrome") else "window.chrome is undefined",
        "notification_permission": None if _NOTIFICATION_AS_QUERY.get(notification) == report.get("notification_query")
        else f"Notification.permission={notification!r} but permissions.query says {report.get('notification_query')!r}",
        "outer_size": _outer_problem(report),
        "languages": _languages_problem(report, doc),
        "webrtc_leak": _webrtc_problem(report),
        "webgl_software": None if gl.get("available") and "swiftshader" not in renderer.lower()
        and "llvmpipe" not in renderer.lower() else f"WebGL: {gl}",
        "hardware": None if (report.get("hardware_concurrency") or 0) >= 2 and report.get("device_memory")
        else f"hardwareConcurrency={report.get('hardware_concurrency')}, deviceMemory={report.get('device_memory')}",
    }
    return {name: why for name, why in checks.items() if why}


def hard_signals(fired: dict[str, str]) -> dict[str, str]:
    """The signals a real-use browser must not show (WebGL in software is only reported)."""
    return {name: why for name, why in fired.items() if name not in SOFT_SIGNALS}
