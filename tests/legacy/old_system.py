"""An old-style `data/` directory, written the way the old multi-instance system wrote it: its instance index
(`browser_instances.json`, json.dump with ensure_ascii=False and indent=2) and one Playwright cookie list per
signed-in instance (`cookies/browser_<instance_id>_session.json`, what `context.cookies()` returns).

The standard fixture: three instances (one signed in, one whose Google cookies have expired, one that never
saved a cookie file, whose name the new system cannot take as is) and one stray cookie file of an instance
that was deleted from the index.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx

SIGN_IN_COOKIES = ("SID", "HSID", "SSID", "APISID", "SAPISID")


@dataclass(frozen=True)
class OldInstance:
    instance_id: str
    name: str
    account: str | None  # the simulator account its cookie file signs in as; None: no cookie file
    expired: bool = False


SIGNED_IN = OldInstance("a1b2c3d4", "账号-alpha", "acct-alpha")
EXPIRED = OldInstance("e5f6a7b8", "beta", "acct-beta", expired=True)
NO_COOKIES = OldInstance("c9d0e1f2", "gamma one", None)  # "gamma one": a space, so it becomes gamma-one
STRAY_ID = "deadbeef"  # a cookie file whose instance is no longer in the index
STANDARD = (SIGNED_IN, EXPIRED, NO_COOKIES)


def cookie_list(domain: str, account: str, *, expired: bool = False) -> list[dict]:
    """As `await context.cookies()` returns them: Google's sign-in cookies plus one that is not."""
    expires = time.time() + (-3 * 86400 if expired else 180 * 86400)
    cookies = [
        {"name": name, "value": account, "domain": domain, "path": "/", "expires": round(expires, 3),
         "httpOnly": True, "secure": False, "sameSite": "Lax"}
        for name in SIGN_IN_COOKIES
    ]
    cookies.append({"name": "NID", "value": "511=old-preferences", "domain": domain, "path": "/", "expires": -1,
                    "httpOnly": False, "secure": False, "sameSite": "Lax"})
    return cookies


def write_old_data(data_dir: Path, sim_url: str, instances: tuple[OldInstance, ...] = STANDARD, *, stray: bool = True) -> Path:
    """The old system's data/ directory under `data_dir`; returns it. Files world-readable, as its umask left them."""
    domain = httpx.URL(sim_url).host
    (data_dir / "cookies").mkdir(parents=True, exist_ok=True)
    (data_dir / "logs").mkdir(exist_ok=True)
    (data_dir / "logs" / "multi_instance_server_20240501.log").write_text("INFO server started\n")
    index = {
        "instances": [
            {"instance_id": old.instance_id, "name": old.name, "status": "stopped",
             "created_at": "2024-05-01T10:00:00.123456", "last_used": "2024-06-01T08:30:00.000001",
             "error_message": None, "is_busy": False}
            for old in instances
        ],
        "updated_at": "2024-06-01T08:30:00.000001",
    }
    (data_dir / "browser_instances.json").write_text(json.dumps(index, ensure_ascii=False, indent=2), encoding="utf-8")
    for old in instances:
        if old.account is not None:
            path = data_dir / "cookies" / f"browser_{old.instance_id}_session.json"
            path.write_text(json.dumps(cookie_list(domain, old.account, expired=old.expired), indent=2))
    if stray:
        path = data_dir / "cookies" / f"browser_{STRAY_ID}_session.json"
        path.write_text(json.dumps(cookie_list(domain, "acct-deleted")))
    for path in [data_dir, *data_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return data_dir


def zip_directory(data_dir: Path, *, prefix: str = "data/") -> bytes:
    """The directory zipped as an operator would (`zip -r data.zip data/`)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(data_dir.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(data_dir).as_posix())
    return out.getvalue()
