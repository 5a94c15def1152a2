"""The wait queue: tasks that found no free instance wait here, first in first out, and are handed a lease.

One pump hands out leases in queue order (a task whose model no free instance can use lets the ones behind it
through). It runs when woken (an instance was freed here, or in another
gateway via Postgres NOTIFY) and, while anyone waits, every `poll_interval` anyway: instances also become
free by starting, signing in, or the end of a cooldown, which nobody announces.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.db.outage import database_unreachable
from gateway.dispatcher.ledger import Lease

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Waiter:
    task_id: uuid.UUID
    exclude: frozenset[uuid.UUID]  # instances this task already tried
    model: str
    future: asyncio.Future[Lease] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    since: float = field(default_factory=time.monotonic)


class WaitQueue:
    def __init__(
        self,
        acquire: Callable[[Waiter], Awaitable[Lease | None]],
        release_unused: Callable[[Lease], Awaitable[None]],
        *,
        poll_interval: float,
    ) -> None:
        self._acquire = acquire
        self._release_unused = release_unused
        self._poll_interval = poll_interval
        self._waiters: deque[Waiter] = deque()
        self._signal = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._waiters)

    def start(self) -> None:
        if self._pump is None:
            self._pump = asyncio.create_task(self._run(), name="dispatch-queue")

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None

    def wake(self) -> None:
        self._signal.set()

    def enqueue(self, waiter: Waiter, *, front: bool = False) -> None:
        """A retry goes first: it was admitted before everyone now waiting."""
        if front:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        self.wake()

    def remove(self, waiter: Waiter) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass  # the pump took it out when it handed over the lease

    async def _run(self) -> None:
        while True:
            try:
                if self._waiters:
                    await asyncio.wait_for(self._signal.wait(), self._poll_interval)
                else:
                    await self._signal.wait()
            except TimeoutError:
                pass
            self._signal.clear()
            try:
                await self._serve()
            except Exception as exc:  # the database may be down for a moment; waiters keep their own deadlines
                if database_unreachable(exc):
                    log.warning("handing out leases waits for the database: %s", str(exc).splitlines()[0][:200])
                else:
                    log.exception("handing out leases failed")
                await asyncio.sleep(self._poll_interval)

    async def _serve(self) -> None:
        missed: set[str] = set()  # models for which nothing is free, whoever asks
        for waiter in list(self._waiters):
            if waiter.future.done():
                self.remove(waiter)
                continue
            if waiter.model in missed:
                continue  # nothing for this model even without exclusions: it would find the same
            lease = await self._acquire(waiter)
            if lease is None:
                if not waiter.exclude:
                    missed.add(waiter.model)
                # Only its own excluded instances, or ones that cannot use its model, may be free:
                # someone behind may take them.
                continue
            self.remove(waiter)
            if waiter.future.done():
                await self._release_unused(lease)  # it gave up while we were leasing
            else:
                waiter.future.set_result(lease)
