"""The gateway's signing key: made once and kept in the data folder (or configured), for the panel's cookies
and CSRF tokens and the signed image URLs. A neutral module, so that the API and the panel both use it and
neither imports the other."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from gateway.settings import ListenerSettings

log = logging.getLogger(__name__)

SECRET_FILE = "secret_key"


def load_secret(settings: ListenerSettings) -> str:
    """The key that signs the panel's cookies: configured, else made once and kept in the data folder, so
    sessions and CSRF tokens survive a restart (a fresh key would leave open pages with dead tokens)."""
    if settings.secret_key is not None and settings.secret_key.get_secret_value():
        return settings.secret_key.get_secret_value()
    path = Path(settings.data_dir) / SECRET_FILE
    try:
        return path.read_text().strip() or _write_secret(path)
    except FileNotFoundError:
        return _write_secret(path)
    except OSError as exc:
        log.warning("cannot read %s (%s); panel sessions end when the gateway restarts", path, exc)
        return secrets.token_hex(32)


def _write_secret(path: Path) -> str:
    secret = secrets.token_hex(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secret)
    except FileExistsError:
        return path.read_text().strip()  # another process wrote it first
    except OSError as exc:
        log.warning("cannot keep the panel key in %s (%s); panel sessions end when the gateway restarts", path, exc)
    return secret
