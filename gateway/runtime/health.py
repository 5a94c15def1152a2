"""What the gateway last learned about its engine; the reconciler writes it, stats and /health read it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from gateway.db.types import utcnow

log = logging.getLogger(__name__)


@dataclass
class EngineHealth:
    engine: str
    ok: bool | None = None  # None: not checked yet
    reason: str = ""
    since: datetime = field(default_factory=utcnow)

    def mark_up(self) -> None:
        if self.ok is not True:
            if self.ok is False:
                log.warning("%s engine is back", self.engine)
            self.ok, self.reason, self.since = True, "", utcnow()

    def mark_down(self, reason: str) -> None:
        if self.ok is not False or reason != self.reason:
            log.error("%s engine unavailable: %s", self.engine, reason)
            self.ok, self.reason, self.since = False, reason, utcnow()
