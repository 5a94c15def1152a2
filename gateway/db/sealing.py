"""Secrets at rest: instance tokens, proxy URLs (their passwords), pending sessions, tasks' callback URLs and the
fleet's signing key are sealed with Fernet (AES-128-CBC + HMAC-SHA256) before they reach the database, and opened when read.

A sealed value is `fernet:<token>`; anything else is a plain value from before sealing (read as it is, sealed by
migration 0011 or `aistudio-fleet db reseal`). The keys come from GATEWAY_ENCRYPTION_KEY or
GATEWAY_ENCRYPTION_KEY_FILE (several: the first seals, all open, for rotation), else from a key made once in the
data folder, never from the database it protects. The engine carries its box on its dialect, so the column type
`SealedText` seals and opens in one place whatever statement (ORM or Core) reads or writes the column.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import TypeDecorator

if TYPE_CHECKING:
    from gateway.settings import SealingSettings

log = logging.getLogger(__name__)

PREFIX = "fernet:"
KEY_FILE = "encryption_key"  # in GATEWAY_DATA_DIR when no key is configured
CHECK_MARKER = "encryption_check"  # a fleet_markers row sealed with the fleet's key: a gateway with another key stops
CHECK_TEXT = "aistudio-fleet sealed secrets"
_DIALECT_ATTRIBUTE = "aistudio_fleet_secret_box"


class SecretKeyProblem(Exception):
    """The encryption key is missing, malformed or not the one the database's secrets were sealed with."""


def is_sealed(value: str | None) -> bool:
    return value is not None and value.startswith(PREFIX)


def new_key() -> str:
    return Fernet.generate_key().decode()


def valid_key(key: str) -> bool:
    try:
        Fernet(key.encode())
    except (ValueError, TypeError):
        return False
    return True


class SecretBox:
    """Seals with the first key, opens with any of them (MultiFernet): rotation keeps the old keys for reading."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise SecretKeyProblem("no encryption key")
        self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])
        # Proxy exits are compared in SQL (tasks per exit): a keyed hash, since a sealed value differs every time.
        self._exit_key = hmac.new(base64.urlsafe_b64decode(keys[0]), b"aistudio-fleet proxy exit", hashlib.sha256).digest()

    def seal(self, plain: str) -> str:
        return PREFIX + self._fernet.encrypt(plain.encode()).decode()

    def open(self, stored: str) -> str:
        """The plain value; a value from before sealing comes back as it is."""
        if not is_sealed(stored):
            return stored
        try:
            return self._fernet.decrypt(stored[len(PREFIX):].encode()).decode()
        except InvalidToken:
            raise SecretKeyProblem(
                "a secret in the database was sealed with another encryption key than GATEWAY_ENCRYPTION_KEY(_FILE) "
                "holds; configure that key (the old one may follow the new one, comma-separated)"
            ) from None

    def reseal(self, stored: str) -> str:
        """Sealed with the first key (a plain value sealed for the first time)."""
        if not is_sealed(stored):
            return self.seal(stored)
        try:
            return PREFIX + self._fernet.rotate(stored[len(PREFIX):].encode()).decode()
        except InvalidToken:
            self.open(stored)  # raises the reason
            raise

    def exit_of(self, proxy_url: str | None) -> str | None:
        """The proxy exit's keyed fingerprint: equal URLs, equal fingerprints; nothing of the URL readable."""
        if proxy_url is None:
            return None
        return hmac.new(self._exit_key, proxy_url.encode(), hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where the keys came from, for the log and for messages."""

    keys: tuple[str, ...]
    origin: str


def load_keys(configured: str, key_file: Path | None, data_dir: Path) -> KeySource:
    """GATEWAY_ENCRYPTION_KEY (comma-separated), else GATEWAY_ENCRYPTION_KEY_FILE (one a line), else the data
    folder's key, made on first use. Raises SecretKeyProblem with the reason."""
    if configured.strip():
        return KeySource(_checked(configured.split(","), "GATEWAY_ENCRYPTION_KEY"), "GATEWAY_ENCRYPTION_KEY")
    if key_file is not None:
        try:
            lines = key_file.read_text().splitlines()
        except OSError as exc:
            raise SecretKeyProblem(f"GATEWAY_ENCRYPTION_KEY_FILE: cannot read {key_file} ({exc.strerror or exc})") from None
        return KeySource(_checked(lines, f"GATEWAY_ENCRYPTION_KEY_FILE ({key_file})"), str(key_file))
    path = data_dir / KEY_FILE
    return KeySource(_checked(_made_once(path).splitlines(), str(path)), str(path))


def _checked(candidates: Sequence[str], where: str) -> tuple[str, ...]:
    keys = tuple(key.strip() for key in candidates if key.strip() and not key.strip().startswith("#"))
    if not keys:
        raise SecretKeyProblem(f"{where} holds no key")
    for position, key in enumerate(keys, 1):
        if not valid_key(key):
            raise SecretKeyProblem(
                f"{where}: key {position} is not a Fernet key (32 bytes in URL-safe base64, 44 characters; make one "
                "with `aistudio-fleet db new-key`)"
            )
    return keys


def _made_once(path: Path) -> str:
    """The key in `path`, made there by the first process that needs it. It appears whole or not at all (written
    aside, then linked in place), so a gateway starting at the same moment never reads half a key."""
    try:
        return path.read_text()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SecretKeyProblem(f"cannot read the encryption key {path} ({exc.strerror or exc})") from None
    key = new_key()
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(key + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.link(aside, path)  # fails if another process linked its key first
    except FileExistsError:
        return path.read_text()  # another process made it first: use theirs
    except OSError as exc:
        raise SecretKeyProblem(
            f"cannot keep an encryption key in {path} ({exc.strerror or exc}); set GATEWAY_ENCRYPTION_KEY or "
            "GATEWAY_ENCRYPTION_KEY_FILE"
        ) from None
    finally:
        aside.unlink(missing_ok=True)
    log.warning("made an encryption key for the database's secrets in %s: back it up apart from the database", path)
    return key


# The engine's box ------------------------------------------------------------------------------------------


def attach(engine: AsyncEngine, box: SecretBox) -> None:
    """Every SealedText column read or written through `engine` uses `box`."""
    setattr(engine.sync_engine.dialect, _DIALECT_ATTRIBUTE, box)


def box_of(dialect: Any) -> SecretBox:
    box = getattr(dialect, _DIALECT_ATTRIBUTE, None)
    if box is None:
        raise SecretKeyProblem("this database engine has no encryption key attached (gateway.db.sealing.attach)")
    return box


class SealedText(TypeDecorator[str]):
    """Text sealed on the way in and opened on the way out, with the engine's box."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        if value is None or is_sealed(value):
            return value
        return box_of(dialect).seal(value)

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        if value is None or not is_sealed(value):
            return value
        return box_of(dialect).open(value)


SIGNING_MARKER = "signing_key"  # gateway/signing.py keeps the fleet's signing key in this fleet_markers row on Postgres


def box_for(settings: SealingSettings) -> SecretBox:
    """The box of GATEWAY_ENCRYPTION_KEY, GATEWAY_ENCRYPTION_KEY_FILE or the data folder's key (made when missing)."""
    source = load_keys(settings.configured_keys, settings.encryption_key_file, Path(settings.data_dir))
    log.info("database secrets sealed with the key of %s (%d key(s) open them)", source.origin, len(source.keys))
    return SecretBox(source.keys)
