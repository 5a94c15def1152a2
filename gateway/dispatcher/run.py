"""A run of one task: its waits for an instance, its attempts, its retries, and how it ends.

The dispatcher admits a task and makes a `TaskRun` for it; the run holds the request, the record of what it
has been through (`Progress`) and builds its `TaskResult`. What runs share (the ledger, the instance client,
the wait queue, instances to avoid, the settings a run reads) comes from the dispatcher as a `RunContext`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from gateway.accounts.calendar import next_reset
from gateway.accounts.policy import BlockKind
from gateway.db.models import EventKind, TaskStatus, new_event
from gateway.db.outage import database_unreachable
from gateway.db.types import utcnow
from gateway.dispatcher import outcomes
from gateway.dispatcher.durable import TaskMeta
from gateway.dispatcher.images import content_hashes, encode_all
from gateway.dispatcher.inputs import GenerationRequest
from gateway.dispatcher.ledger import Lease, Ledger, PoolSnapshot, Release, TaskEnd
from gateway.dispatcher.metrics import DispatchMetrics
from gateway.dispatcher.outcomes import Attempt
from gateway.dispatcher.queue import ModelSpent, Waiter, WaitQueue
from gateway.dispatcher.results import ResultStore
from gateway.dispatcher.task_result import Delivery, TaskResult, webhook_payload
from gateway.errors import Exhausted, Unavailable
from gateway.instance_client import InstanceCallError, InstanceClient

log = logging.getLogger(__name__)

ClientWatch = Callable[[], Awaitable[None]]
MAX_BOUNCES = 3  # busy (409) answers a task may meet; they run nothing, so they are not attempts


@dataclass(frozen=True)
class RunLimits:
    """The settings a run reads, taken from the dispatcher's once."""

    generation_timeout: float
    max_attempts: int
    queue_wait_timeout: float  # how long a task whose client waits may wait for an instance
    task_wait_timeout: float  # how long an asynchronous task may
    store_sync_results: bool

    def wait_limit(self, mode: str) -> float:
        return self.queue_wait_timeout if mode == "sync" else self.task_wait_timeout

    def keeps(self, mode: str) -> bool:
        return mode == "async" or self.store_sync_results


class Avoidance:
    """Instances a task just found unreachable or signed out, skipped until the reconciler has had a look."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._until: dict[uuid.UUID, float] = {}

    def add(self, instance_id: uuid.UUID) -> None:
        self._until[instance_id] = time.monotonic() + self._seconds

    def current(self) -> frozenset[uuid.UUID]:
        if not self._until:
            return frozenset()
        now = time.monotonic()
        for instance_id in [i for i, until in self._until.items() if until <= now]:
            del self._until[instance_id]
        return frozenset(self._until)


class Pace:
    """How long a successful attempt takes, as a running average: the base of Retry-After estimates."""

    def __init__(self, seconds: float = 20.0) -> None:
        self.typical = seconds

    def ran(self, seconds: float) -> None:
        self.typical = 0.8 * self.typical + 0.2 * seconds


@dataclass(frozen=True)
class RunContext:
    """What the dispatcher lends each of its runs."""

    ledger: Ledger
    client: InstanceClient
    metrics: DispatchMetrics
    results: ResultStore
    queue: WaitQueue
    avoid: Avoidance
    pace: Pace
    limits: RunLimits
    settling: dict[uuid.UUID, asyncio.Task[None]]  # ends being written just after their answer, by task
    suspect_locally: Callable[[uuid.UUID], None]  # asks this process's reconciler to probe an instance now
    closing: Callable[[], bool]
    wait_headers: Callable[[], dict[str, str]]  # Retry-After for a client whose wait ran out


@dataclass
class Progress:
    """What a task has been through so far, in this process: its attempts and their timings."""

    began: float = field(default_factory=time.monotonic)
    queued_s: float = 0.0
    run_s: float = 0.0
    attempts: int = 0
    bounces: int = 0
    tried: set[uuid.UUID] = field(default_factory=set)
    tries: list[dict[str, Any]] = field(default_factory=list)
    last: Attempt | None = None
    last_lease: Lease | None = None

    def record(self, lease: Lease, attempt: Attempt, seconds: float) -> None:
        self.run_s += seconds
        self.tried.add(lease.instance_id)
        self.last, self.last_lease = attempt, lease
        if attempt.bounced:
            self.bounces += 1
        elif attempt.spends_retry:  # a refusal, a spent allowance or a rate limit ran nothing there
            self.attempts += 1
        self.tries.append({"instance": lease.name, "outcome": attempt.error_code or "succeeded", "ms": _ms(seconds)})

    def timings(self) -> dict[str, Any]:
        return {
            "queued_ms": _ms(self.queued_s),
            "run_ms": _ms(self.run_s),
            "total_ms": _ms(time.monotonic() - self.began),
            "tries": self.tries,
            **({"instance": self.last.timings} if self.last and self.last.timings else {}),
        }

    def end(self, status: TaskStatus, code: str | None, message: str | None, images: int = 0, path: str | None = None) -> TaskEnd:
        return TaskEnd(status, code, message, images, path, self.timings())


class _WaitEnded(Exception):
    """The task stopped waiting for an instance; `code` says why."""

    def __init__(self, code: str, spent: PoolSnapshot | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.spent = spent  # its model is spent everywhere until spent.back_at


def exhausted(snapshot: PoolSnapshot, model: str, metrics: DispatchMetrics) -> Exhausted:
    """429 for a model no account may be asked for before `back_at`, with Retry-After pointing at it."""
    assert snapshot.back_at is not None
    metrics.rejected.labels("model_exhausted").inc()
    seconds = max(1, math.ceil((snapshot.back_at - (snapshot.now or utcnow())).total_seconds()))
    until = snapshot.back_at.isoformat(timespec="seconds").replace("+00:00", "Z")
    return Exhausted("model_exhausted", model=model, until=until, headers={"Retry-After": str(seconds)})


class TaskRun:
    """One admitted task, from its first wait or lease to its end."""

    def __init__(
        self,
        context: RunContext,
        task_id: uuid.UUID,
        mode: str,
        request: GenerationRequest,
        meta: TaskMeta,
        *,
        request_path: str | None = None,
        created_at: datetime | None = None,
    ) -> None:
        self._context = context
        self.task_id = task_id
        self.mode = mode
        self.request = request
        self.meta = meta
        self.request_path = request_path  # its inputs kept as a file: the next gateway resumes it while it waits
        self.progress = Progress()
        self.created_at = created_at or utcnow()
        self.waiting = False
        self.disowned = False  # another gateway took it over (this one was thought dead): leave its row alone
        self.retry_at: datetime | None = None  # set when it ends for a model spent everywhere

    # The run ----------------------------------------------------------------------------------------

    async def drive(self, lease: Lease | None, waiter: Waiter | None = None, client_left: ClientWatch | None = None) -> TaskResult:
        """Attempts on instances, waiting for one whenever it holds no lease, until the task ends."""
        context = self._context
        try:
            while True:
                if lease is None:
                    self.waiting = True
                    lease = await self._wait(waiter or self.enqueue(), client_left)
                    self.waiting, waiter = False, None
                end = await self.attempt(lease)
                lease = None
                if end is not None:
                    context.metrics.tasks.labels(end.error_code or "succeeded").inc()
                    return self.result(end)
        except _WaitEnded as ended:
            return await self._end_waiting(ended.code, ended.spent)
        except asyncio.CancelledError:
            if self.disowned or (context.closing() and self.waiting and self.request_path is not None):
                raise  # still queued, its inputs kept: another gateway resumes it (or already has)
            end = self.progress.end(TaskStatus.FAILED, outcomes.SHUTDOWN, "the gateway stopped while the task was under way")
            await asyncio.shield(context.ledger.end_task(self.task_id, end, attempts=self.progress.attempts, webhook=self.webhook(end)))
            raise

    def enqueue(self, *, by_age: bool = False) -> Waiter:
        """In the wait queue; a retry goes first, as it has waited already. `by_age`: a task admitted earlier
        (resumed or taken over) goes among the waiting tasks by its admission time."""
        waiter = Waiter(self.task_id, frozenset(self.progress.tried), self.request.model, created_at=self.created_at,
                        after_task=self.request.after_task)
        self._context.queue.enqueue(waiter, front=bool(self.progress.tried), by_age=by_age)
        return waiter

    def webhook(self, end: TaskEnd) -> Delivery | None:
        """An asynchronous task's webhook, written with its end (None without a callback URL: no payload is built)."""
        url = self.meta.callback_url
        return Delivery(self.task_id, url, webhook_payload(self.result(end))) if url else None

    def result(self, end: TaskEnd) -> TaskResult:
        attempt = self.progress.last
        lease = self.progress.last_lease
        return TaskResult(
            task_id=self.task_id,
            status=end.status,
            mode=self.mode,
            images_b64=attempt.images_b64 if attempt and attempt.success else [],
            text=attempt.text if attempt else None,
            error_code=end.error_code,
            error_message=end.error_message,
            instance_id=lease.instance_id if lease else None,
            instance_name=lease.name if lease else None,
            attempts=self.progress.attempts,
            timings=end.timings,
            created_at=self.created_at,
            finished_at=utcnow(),
            model=self.request.model,
            image_size=self.request.image_size,
            output_format=self.request.output_format,
            image_hashes=list(end.image_hashes or []),
            retry_at=self.retry_at,
        )

    # Waiting for an instance ------------------------------------------------------------------------

    async def _wait(self, waiter: Waiter, client_left: ClientWatch | None) -> Lease:
        context = self._context
        gone = asyncio.ensure_future(client_left()) if client_left is not None else None
        began = time.monotonic()
        try:
            await asyncio.wait(
                [waiter.future, *([gone] if gone else [])],
                timeout=context.limits.wait_limit(self.mode),
                return_when=asyncio.FIRST_COMPLETED,
            )
        except BaseException:
            await self._abandon(waiter)
            raise
        finally:
            if gone is not None:
                gone.cancel()
            waited = time.monotonic() - began
            self.progress.queued_s += waited
            context.metrics.wait_seconds.observe(waited)
        lease = _taken(waiter)
        if lease is not None:
            return lease
        spent = _spent(waiter)
        if spent is not None:
            raise _WaitEnded(outcomes.EXHAUSTED, spent.snapshot)
        await self._abandon(waiter)
        left = gone is not None and gone.done() and not gone.cancelled() and gone.exception() is None
        raise _WaitEnded(outcomes.CLIENT_GONE if left else outcomes.QUEUE_TIMEOUT)

    async def _abandon(self, waiter: Waiter) -> None:
        self._context.queue.remove(waiter)
        lease = _taken(waiter)
        if lease is not None:
            await asyncio.shield(self._context.ledger.release_unused(lease))
        else:
            waiter.future.cancel()  # done now, so the pump never hands it a lease

    async def _end_waiting(self, code: str, spent: PoolSnapshot | None = None) -> TaskResult:
        """The task stopped waiting. A retry that found no instance ends with what the last attempt said;
        a first wait that ran out is a 503 for a waiting client and a failed task otherwise; a model spent
        everywhere is a 429 for a waiting client (Retry-After: the reset) and a failed task otherwise."""
        context, progress = self._context, self.progress
        last = progress.last
        if spent is not None:
            self.retry_at = spent.back_at
        if last is not None and code in (outcomes.QUEUE_TIMEOUT, outcomes.EXHAUSTED):
            end = progress.end(TaskStatus.FAILED, last.error_code, last.error_message)
        elif spent is not None:
            until = spent.back_at.isoformat(timespec="seconds") if spent.back_at else "?"
            end = progress.end(TaskStatus.FAILED, code, f"no account may be asked for {self.request.model} before {until}")
        elif code == outcomes.CLIENT_GONE:
            end = progress.end(TaskStatus.FAILED, code, "the client disconnected while the task waited for an instance")
        else:
            end = progress.end(TaskStatus.FAILED, code, f"no instance was free within {context.limits.wait_limit(self.mode):g} s")
        await context.ledger.end_task(self.task_id, end, attempts=progress.attempts, webhook=self.webhook(end))
        context.metrics.tasks.labels(end.error_code or "failed").inc()
        if spent is not None and last is None and self.mode == "sync":
            raise exhausted(spent, self.request.model, context.metrics)
        if code == outcomes.QUEUE_TIMEOUT and last is None and self.mode == "sync":
            context.metrics.rejected.labels("queue_timeout").inc()
            raise Unavailable("queue_timeout", waited=int(progress.queued_s), headers=context.wait_headers())
        if code == outcomes.CLIENT_GONE:
            context.metrics.rejected.labels("client_disconnected").inc()
        return self.result(end)

    # One attempt ------------------------------------------------------------------------------------

    async def attempt(self, lease: Lease) -> TaskEnd | None:
        """One attempt on a leased instance; the lease is released whatever happens. Returns how the task
        ended, or None when it goes on to another instance."""
        context, progress = self._context, self.progress
        began = time.monotonic()
        context.metrics.running.inc()
        try:
            attempt = await self._output(await self._call(lease))
        except BaseException as exc:
            # Cancelled (gateway stopping) or a bug: the instance may still be generating; free it all the same.
            stopping = isinstance(exc, asyncio.CancelledError)
            code, why = (outcomes.SHUTDOWN, "the gateway stopped during the generation") if stopping else ("internal_error", repr(exc))
            progress.record(lease, Attempt(False, error_code=code), time.monotonic() - began)
            end = progress.end(TaskStatus.FAILED, code, why)
            release = Release(False, self.request.model, counts=False)
            await asyncio.shield(context.ledger.finish_attempt(lease, release, end, attempts=progress.attempts, webhook=self.webhook(end)))
            raise
        finally:
            context.metrics.running.dec()
        seconds = time.monotonic() - began
        progress.record(lease, attempt, seconds)
        context.metrics.run_seconds.observe(seconds)
        context.metrics.attempts.labels(attempt.error_code or "succeeded").inc()
        if attempt.success:
            context.pace.ran(seconds)
        if attempt.suspect:
            context.avoid.add(lease.instance_id)
        if await self.goes_on(attempt):
            await self.settle(lease, attempt, None)  # released before the task looks elsewhere
            context.metrics.retries.labels(attempt.error_code or "unknown").inc()
            log.info("task %s: %s on %s; trying another instance", self.task_id, attempt.error_code, lease.name)
            return None
        end = self.final(attempt)
        # The answer does not wait for the bookkeeping: the result file, the release and the row are written
        # just after. Reads here wait for it (`task`, `settled`), and so does a newcomer that found no instance.
        self._settle_later(lease, attempt, end)
        return end

    async def _call(self, lease: Lease) -> Attempt:
        payload = self.request.instance_payload(str(lease.task_id))
        try:
            body = await self._context.client.generate(lease.address, payload, timeout=self._context.limits.generation_timeout)
        except InstanceCallError as exc:  # no answer, a refusal, or a body off the contract
            return outcomes.from_error(exc)
        return outcomes.from_answer(body)

    async def _output(self, attempt: Attempt) -> Attempt:
        """The images in the format the client asked for (the page gives PNG)."""
        if not attempt.success:
            return attempt
        try:
            attempt.images_b64 = await encode_all(attempt.images_b64, self.request.output_format, self.request.output_quality)
        except (OSError, ValueError) as exc:  # not an image after all: the contract was broken
            return Attempt(False, error_code=outcomes.BAD_ANSWER, error_message=f"cannot re-encode its image: {exc}"[:500])
        return attempt

    async def goes_on(self, attempt: Attempt) -> bool:
        """Whether the task tries another instance after this attempt."""
        progress = self.progress
        if attempt.success or not attempt.retry:
            return False
        if attempt.bounced and progress.bounces > MAX_BOUNCES:
            return False
        if attempt.spends_retry and progress.attempts >= self._context.limits.max_attempts:
            return False
        # Another instance must exist that could take it, or waiting would only end in a timeout.
        try:
            snapshot = await self._context.ledger.snapshot(frozenset(progress.tried) | self._context.avoid.current(), self.request.model)
        except Exception as exc:
            if not database_unreachable(exc):
                raise
            log.warning("task %s not retried: the database cannot be reached", self.task_id)
            return False  # it ends with this attempt's failure; its release waits for the database
        if snapshot.empty and attempt.block in (BlockKind.QUOTA, BlockKind.RATE_LIMIT):
            self.retry_at = _back_at(snapshot, attempt)
        return not snapshot.empty

    def final(self, attempt: Attempt) -> TaskEnd:
        """How the task ends with this attempt."""
        if not attempt.success:
            return self.progress.end(TaskStatus.FAILED, attempt.error_code, attempt.error_message)
        end = self.progress.end(TaskStatus.SUCCEEDED, None, None, len(attempt.images_b64))
        hashes = content_hashes(attempt.images_b64)
        self._context.ledger.note_images(hashes, self.task_id)  # a conversation's next turn may come before the row
        return replace(end, image_hashes=hashes)

    # Recording an attempt ---------------------------------------------------------------------------

    def _settle_later(self, lease: Lease, attempt: Attempt, end: TaskEnd) -> None:
        settling = asyncio.create_task(self.settle(lease, attempt, end), name=f"settle-{self.task_id}")
        self._context.settling[self.task_id] = settling
        settling.add_done_callback(lambda _task: self._context.settling.pop(self.task_id, None))

    async def settle(self, lease: Lease, attempt: Attempt, end: TaskEnd | None) -> None:
        """Keeps the result (when asked), releases the instance, writes the task row, reports trouble."""
        context = self._context
        try:
            if end is not None and attempt.success and context.limits.keeps(self.mode):
                end = replace(end, result_path=await self._save(attempt))
            release = Release(attempt.success, self.request.model, counts=not attempt.bounced and not attempt.model_unavailable,
                              block=attempt.block, block_reason=attempt.error_message or "")
            events = _events_for(lease, attempt)
            webhook = self.webhook(end) if end is not None else None
            await context.ledger.finish_attempt(lease, release, end, attempts=self.progress.attempts, events=events, webhook=webhook)
        except Exception:
            if end is None:
                raise  # a retry must not go on without its release
            # Nobody awaits this: the lease expires by itself and the row is marked abandoned later.
            log.exception("cannot record the end of task %s", self.task_id)
            return
        finally:
            context.queue.wake()  # the freed instance may suit someone waiting here
        if attempt.suspect:
            await self._report_suspect(lease.instance_id)

    async def _save(self, attempt: Attempt) -> str | None:
        try:
            return await self._context.results.save(self.task_id, attempt.images_b64, attempt.text)
        except (OSError, SQLAlchemyError) as exc:  # a full disk, a database gone: the task still ends
            log.error("cannot keep the result of task %s: %s", self.task_id, str(exc).splitlines()[0][:300])
            return None

    async def _report_suspect(self, instance_id: uuid.UUID) -> None:
        """The reconciler probes it now and records what it finds (crashed: error and a restart; signed out:
        needs_login). With replicas, the one whose reconciler leads hears it through the database."""
        self._context.suspect_locally(instance_id)
        try:
            await self._context.ledger.suspect(instance_id)
        except Exception as exc:  # noqa: BLE001 - the probe cycle finds it anyway, only later
            log.warning("cannot tell other gateways about instance %s: %s", instance_id, exc)


def _events_for(lease: Lease, attempt: Attempt) -> list[Any]:
    """The instance's events an attempt calls for: a probe asked for (the ledger writes a block's own)."""
    events = []
    if attempt.suspect and attempt.error_code != outcomes.NEEDS_LOGIN:
        message = f"a task could not use it ({attempt.error_code}: {attempt.error_message}); asked for a probe"
        events.append(new_event(lease.instance_id, lease.name, EventKind.ATTEMPT_SUSPECT, message[:2000]))
    return events


def _back_at(snapshot: PoolSnapshot, attempt: Attempt) -> datetime | None:
    """When the model may be asked of some account again, after this attempt's account said it is spent."""
    own = next_reset(snapshot.now or utcnow()) if attempt.block == BlockKind.QUOTA else None
    known = [t for t in (snapshot.back_at if snapshot.spent else None, own) if t is not None]
    return min(known) if known else None


def _spent(waiter: Waiter) -> ModelSpent | None:
    future = waiter.future
    if future.done() and not future.cancelled() and isinstance(future.exception(), ModelSpent):
        return future.exception()  # type: ignore[return-value]
    return None


def _taken(waiter: Waiter) -> Lease | None:
    future = waiter.future
    if future.done() and not future.cancelled() and future.exception() is None:
        return future.result()
    return None


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
