"""Everything the simulator remembers: config, accounts, and what happened (for GET /_sim/record)."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .clock import SimClock, pacific_day
from .config import default_config, validate

ANONYMOUS = "anonymous"  # account name used when signin_required is false and there is no cookie


@dataclass
class Upload:
    name: str
    mime: str
    size: int
    sha256: str


@dataclass
class Generation:
    account: str
    prompt: str
    aspect_ratio: str
    model: str | None
    uploads: list[Upload]
    image_size: str | None = None
    chat_id: str | None = None
    temporary: bool = False  # a Temporary chat is not saved to the account's Drive
    history_turns: int = 0  # the chat's earlier turns the page sent along (user and model)
    history_images: list[str] = field(default_factory=list)  # sha256 of the images in them: what the model reads again
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    outcome: str | None = None  # None while in flight

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "prompt": self.prompt,
            "aspect_ratio": self.aspect_ratio,
            "model": self.model,
            "image_size": self.image_size,
            "temporary": self.temporary,
            "chat_id": self.chat_id,
            "history_turns": self.history_turns,
            "history_images": self.history_images,
            "uploads": [vars(upload) for upload in self.uploads],
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "outcome": self.outcome,
        }


@dataclass
class Usage:
    """One account's use of one model on one Pacific day."""

    day: str
    made: int = 0  # successful generations, what the allowance counts
    quota_answers: int = 0  # GenerateContent calls answered 429 RESOURCE_EXHAUSTED

    def to_json(self) -> dict[str, Any]:
        return {"made": self.made, "quota_answers": self.quota_answers, "day": self.day}


class SimState:
    """Shared by all requests; a lock keeps it consistent even if a handler ever runs in a thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.config = default_config()
            self.account_config: dict[str, dict[str, Any]] = {}
            self.revoked: set[str] = set()
            self.generations: list[Generation] = []
            self.in_flight: dict[str, int] = {}
            self.max_concurrent: dict[str, int] = {}
            self.page_loads = 0
            self.page_loads_by_account: dict[str, int] = {}
            self.saved_chats: dict[str, set[str]] = {}  # account -> ids of chats autosaved to its Drive
            self.sidts: dict[str, str] = {}  # account -> its current rotating session cookie
            self.replaced: dict[str, tuple[str, float]] = {}  # account -> the value just replaced, and when
            self.renewals: dict[str, int] = {}  # account -> how many times it was renewed
            self.stale_refused: dict[str, int] = {}  # account -> visits refused for a stale value
            self.clock = SimClock()
            self.usage: dict[str, dict[str, Usage]] = {}  # account -> model -> its use on the latest day it was used
            self.quota_answers: dict[str, dict[str, int]] = {}  # account -> model -> quota answers on every day

    # --- config ---

    def update_config(self, patch: Any, account: str | None = None) -> None:
        clean = validate(patch)
        with self._lock:
            target = self.config if account is None else self.account_config.setdefault(account, {})
            target.update(clean)

    def effective_config(self, account: str | None) -> dict[str, Any]:
        with self._lock:
            return {**self.config, **self.account_config.get(account or "", {})}

    def config_snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"global": dict(self.config), "accounts": {k: dict(v) for k, v in self.account_config.items()}}

    def take_mode(self, account: str) -> str:
        """The mode of one generation, counting it against mode_times.

        The account's override is used (and counted) when it sets "mode"; otherwise the global one.
        """
        with self._lock:
            scope = self.account_config.get(account, {})
            if "mode" not in scope:
                scope = self.config
            mode = scope.get("mode", "ok")
            times = scope.get("mode_times")
            if mode == "ok" or times is None:
                return mode
            if times <= 0:
                scope.update(mode="ok", mode_times=None)
                return "ok"
            scope["mode_times"] = times - 1
            if times - 1 == 0:
                scope.update(mode="ok", mode_times=None)
            return mode

    # --- accounts ---

    def revoke(self, account: str) -> None:
        with self._lock:
            self.revoked.add(account)

    def sign_in(self, account: str) -> None:
        # a fresh sign-in makes a revoked account usable again
        with self._lock:
            self.revoked.discard(account)

    def is_revoked(self, account: str) -> bool:
        with self._lock:
            return account in self.revoked

    def session_account(self, sid: str | None, sidts: str | None = None) -> str | None:
        """The account a SID cookie stands for, or None when the visitor counts as logged out: revoked, or
        carrying an older value of the rotating cookie than the account's newest (when stale values are refused)."""
        if sid:
            if self.is_revoked(sid):
                return None
            if sidts is not None and self.effective_config(sid)["refuse_stale_cookie"]:
                with self._lock:
                    current = self.sidts.get(sid)
                    if current is not None and sidts != current and not self._in_grace(sid, sidts):
                        self.stale_refused[sid] = self.stale_refused.get(sid, 0) + 1
                        return None
            return sid
        return None if self.config["signin_required"] else ANONYMOUS

    def renew(self, account: str) -> str:
        """A new value of the account's rotating cookie; every older value is stale from now on (the one just
        replaced after a short grace, for requests already in flight)."""
        with self._lock:
            self.renewals[account] = self.renewals.get(account, 0) + 1
            value = f"{account}.{self.renewals[account]}.{secrets.token_hex(4)}"
            if account in self.sidts:
                self.replaced[account] = (self.sidts[account], time.monotonic())
            self.sidts[account] = value
            return value

    def _in_grace(self, account: str, value: str) -> bool:
        """Called under the lock."""
        replaced, at = self.replaced.get(account, ("", 0.0))
        grace = self._config_of(account)["stale_grace_ms"] / 1000
        return value == replaced and time.monotonic() - at < grace

    def _config_of(self, account: str) -> dict[str, Any]:
        """effective_config for callers already holding the lock."""
        return {**self.config, **self.account_config.get(account, {})}

    # --- clock and daily allowances ---

    def clock_snapshot(self) -> dict[str, str]:
        with self._lock:
            return self.clock.describe()

    def advance_clock(self, seconds: float) -> None:
        with self._lock:
            self.clock.advance(seconds)

    def set_clock(self, instant: datetime) -> None:
        with self._lock:
            self.clock.set(instant)

    def _today(self) -> str:
        return pacific_day(self.clock.now()).isoformat()

    def _usage_today(self, account: str, model: str) -> Usage:
        """Called under the lock; a use from an earlier (or later) day starts over, as the real allowance does."""
        today = self._today()
        usage = self.usage.setdefault(account, {}).get(model)
        if usage is None or usage.day != today:
            usage = self.usage[account][model] = Usage(today)
        return usage

    def spend_allowance(self, account: str, model: str) -> bool:
        """Count one successful generation, or False (nothing counted) when today's allowance is spent."""
        with self._lock:
            allowance = self._config_of(account)["allowances"].get(model)
            usage = self._usage_today(account, model)
            if allowance is not None and usage.made >= allowance:
                return False
            usage.made += 1
            return True

    def count_quota_answer(self, account: str, model: str) -> None:
        with self._lock:
            self._usage_today(account, model).quota_answers += 1
            by_model = self.quota_answers.setdefault(account, {})
            by_model[model] = by_model.get(model, 0) + 1

    def _usage_record(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Called under the lock: each account's use per model today (zeros for a model last used another day)."""
        today = self._today()
        return {
            account: {model: (use if use.day == today else Usage(today)).to_json() for model, use in models.items()}
            for account, models in self.usage.items()
        }

    # --- record ---

    def count_page_load(self, account: str) -> None:
        with self._lock:
            self.page_loads += 1
            self.page_loads_by_account[account] = self.page_loads_by_account.get(account, 0) + 1

    def start_generation(self, generation: Generation) -> None:
        with self._lock:
            self.generations.append(generation)
            if not generation.temporary:
                # autosave: every chat that ran a prompt becomes a saved prompt in the account's Drive
                chat = generation.chat_id or f"chat-{len(self.generations)}"
                self.saved_chats.setdefault(generation.account, set()).add(chat)
            count = self.in_flight.get(generation.account, 0) + 1
            self.in_flight[generation.account] = count
            self.max_concurrent[generation.account] = max(count, self.max_concurrent.get(generation.account, 0))

    def end_generation(self, generation: Generation, outcome: str) -> None:
        with self._lock:
            generation.ended_at = time.time()
            generation.outcome = outcome
            # a generation started before a reset no longer counts
            if any(g is generation for g in self.generations):
                self.in_flight[generation.account] -= 1

    def record(self) -> dict[str, Any]:
        with self._lock:
            return {
                "generations": [g.to_json() for g in self.generations],
                "max_concurrent_by_account": dict(self.max_concurrent),
                "in_flight_by_account": dict(self.in_flight),
                "page_loads": self.page_loads,
                "page_loads_by_account": dict(self.page_loads_by_account),
                "revoked": sorted(self.revoked),
                "saved_chats": sum(len(chats) for chats in self.saved_chats.values()),
                "saved_chats_by_account": {k: len(v) for k, v in self.saved_chats.items()},
                "cookie_renewals_by_account": dict(self.renewals),
                "current_cookie_by_account": dict(self.sidts),
                "stale_cookie_refused_by_account": dict(self.stale_refused),
                "usage_by_account": self._usage_record(),
                "quota_answers_by_account": {account: dict(models) for account, models in self.quota_answers.items()},
            }
