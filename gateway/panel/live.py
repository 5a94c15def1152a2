"""Live updates for open pages: one poller shared by every viewer, running only while someone watches.

Whoever changes the database (the reconciler, the dispatcher, another gateway replica), the poller sees it
within one interval. Each viewer costs one wait and one render per change, whatever the number of pages
open; a viewer that goes away leaves nothing behind, and with no viewer left the poller stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import msgspec

from gateway.services.history import TaskView
from gateway.services.views import InstanceView, StatsView

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolSnapshot:
    instances: list[InstanceView]
    stats: StatsView
    running_tasks: dict[str, TaskView]  # by instance id
    version: int = 0
    by_id: dict[str, InstanceView] = field(default_factory=dict, compare=False)

    def instance(self, instance_id: str) -> InstanceView | None:
        return self.by_id.get(instance_id)


PoolLoader = Callable[[], Awaitable[tuple[list[InstanceView], StatsView, dict[str, TaskView]]]]


class PoolWatcher:
    def __init__(self, load: PoolLoader, *, interval: float = 0.5) -> None:
        self._load = load
        self._interval = interval
        self._snapshot: PoolSnapshot | None = None
        self._digest: bytes | None = None
        self._version = 0
        self._changed = asyncio.Event()
        self._poke = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self.watchers = 0

    @property
    def polling(self) -> bool:
        return self._poller is not None and not self._poller.done()

    async def current(self) -> PoolSnapshot:
        """A snapshot now (read fresh unless the poller keeps one up to date)."""
        if self._snapshot is None or not self.polling:
            await self._refresh()
        assert self._snapshot is not None
        return self._snapshot

    def poke(self) -> None:
        """Something just changed through this gateway: read the pool now rather than at the next tick."""
        self._poke.set()

    async def watch(self, heartbeat: float) -> AsyncIterator[PoolSnapshot | None]:
        """The current snapshot at once, then every changed one; None after `heartbeat` seconds without change."""
        self.watchers += 1
        try:
            self._start_polling()
            snapshot = await self.current()
            seen = snapshot.version
            yield snapshot
            while True:
                changed = self._changed
                if self._version == seen:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), heartbeat)
                if self._version == seen:
                    yield None
                    continue
                assert self._snapshot is not None
                seen = self._snapshot.version
                yield self._snapshot
        finally:
            self.watchers -= 1
            if self.watchers == 0:
                self._stop_polling()

    async def close(self) -> None:
        self._stop_polling()

    def _start_polling(self) -> None:
        if not self.polling:
            self._poller = asyncio.create_task(self._poll(), name="panel-pool-watcher")

    def _stop_polling(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        self._snapshot = None  # stale from now on: the next viewer reads afresh
        # Fresh events, in case the next viewer comes on another event loop (tests, restarts).
        self._changed, self._poke = asyncio.Event(), asyncio.Event()

    async def _poll(self) -> None:
        while True:
            try:
                await self._refresh()
            except Exception as exc:  # the database hiccuped: viewers keep the last picture, the next tick retries
                log.warning("panel: cannot read the pool: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self._interval)
            self._poke.clear()

    async def _refresh(self) -> None:
        instances, stats, running = await self._load()
        digest = msgspec.json.encode((instances, stats, running))
        if digest == self._digest and self._snapshot is not None:
            return
        self._digest = digest
        self._version += 1
        by_id = {view.instance_id: view for view in instances}
        self._snapshot = PoolSnapshot(instances, stats, running, self._version, by_id)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
