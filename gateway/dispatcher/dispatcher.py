"""The dispatcher: admits a generation, leases an idle instance (or queues), runs it, retries, and records.

A task's life: admitted (its row written, leased at once when an instance is free, else queued) → one or
more attempts, each on a leased instance that is always released → succeeded or failed, with its instance,
attempts and timings in the row and its images, when kept, in a file. The last release and the row's end
are written just after the answer goes out (a task's reads, /health and newcomers wait for them).

Only the reconciler changes an instance's status: a dispatcher that cannot reach an instance, or finds it
signed out, asks the reconciler to probe it now (locally, and through Postgres NOTIFY for the gateway whose
reconciler leads), and skips it for a few seconds meanwhile. Quota and rate limits set `cooldown_until`,
the dispatcher's own column beside the lease.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.models import EventKind, TaskStatus, new_event
from gateway.db.outage import database_unreachable
from gateway.db.types import utcnow
from gateway.dispatcher import outcomes
from gateway.dispatcher.durable import RequestFiles, TaskMeta, fingerprint
from gateway.dispatcher.images import content_hashes, encode_all
from gateway.dispatcher.inputs import GenerationRequest
from gateway.dispatcher.ledger import Lease, Ledger, NewTask, PoolSnapshot, Release, TaskEnd
from gateway.dispatcher.metrics import DispatchMetrics
from gateway.dispatcher.outcomes import Attempt, Cooldowns
from gateway.dispatcher.queue import WaitQueue, Waiter
from gateway.dispatcher.results import ResultStore
from gateway.dispatcher.signals import PoolListener
from gateway.dispatcher.webhooks import Webhooks
from gateway.errors import Conflict, Gone, NotFound, QueueFull, Unavailable
from gateway.instance_client import InstanceCallError, InstanceClient
from gateway.settings import Settings

log = logging.getLogger(__name__)

ClientWatch = Callable[[], Awaitable[None]]
MAX_BOUNCES = 3  # busy (409) answers a task may meet; they run nothing, so they are not attempts
RETRY_AFTER_MAX = 600


@dataclass
class TaskResult:
    """A task as the API reports it; images only when it succeeded and they are at hand."""

    task_id: uuid.UUID
    status: str
    mode: str
    images_b64: list[str] = field(default_factory=list)
    text: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    instance_id: uuid.UUID | None = None
    instance_name: str | None = None
    attempts: int = 0
    timings: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    finished_at: datetime | None = None
    model: str | None = None
    image_size: str | None = None
    output_format: str | None = None
    image_hashes: list[str] = field(default_factory=list)  # sha256 of each image, as the client receives it

    @property
    def succeeded(self) -> bool:
        return self.status == TaskStatus.SUCCEEDED


@dataclass
class _Progress:
    """What a task has been through so far, in this process."""

    task_id: uuid.UUID
    mode: str
    model: str
    image_size: str | None = None
    began: float = field(default_factory=time.monotonic)
    created_at: datetime = field(default_factory=utcnow)
    queued_s: float = 0.0
    run_s: float = 0.0
    attempts: int = 0
    bounces: int = 0
    tried: set[uuid.UUID] = field(default_factory=set)
    tries: list[dict[str, Any]] = field(default_factory=list)
    last: Attempt | None = None
    last_lease: Lease | None = None
    request: GenerationRequest | None = None
    meta: TaskMeta = field(default_factory=TaskMeta)
    request_path: str | None = None  # its inputs kept as a file: the next gateway resumes it while it waits
    waiting: bool = False

    def record(self, lease: Lease, attempt: Attempt, seconds: float) -> None:
        self.run_s += seconds
        self.tried.add(lease.instance_id)
        self.last, self.last_lease = attempt, lease
        if attempt.bounced:
            self.bounces += 1
        elif not attempt.model_unavailable:  # nothing ran there: the retry is not spent
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

    def result(self, end: TaskEnd) -> TaskResult:
        attempt = self.last
        lease = self.last_lease
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
            attempts=self.attempts,
            timings=end.timings,
            created_at=self.created_at,
            finished_at=utcnow(),
            model=self.model,
            image_size=self.image_size,
            output_format=self.request.output_format if self.request else None,
            image_hashes=list(end.image_hashes or []),
        )


class _WaitEnded(Exception):
    """The task stopped waiting for an instance; `code` says why."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class Dispatcher:
    def __init__(
        self,
        ledger: Ledger,
        client: InstanceClient,
        settings: Settings,
        *,
        suspect: Callable[[uuid.UUID], None],
        metrics: DispatchMetrics | None = None,
        results: ResultStore | None = None,
        listener_url: str | None = None,
    ) -> None:
        self._ledger = ledger
        self._client = client
        self._settings = settings
        self._suspect_locally = suspect
        self.metrics = metrics or DispatchMetrics()
        self.results = results or ResultStore(Path(settings.data_dir) / "results", settings.task_result_ttl)
        self._cooldowns = Cooldowns(settings.cooldown_quota, settings.cooldown_rate_limit)
        self._queue = WaitQueue(self._lease_for, ledger.release_unused, poll_interval=settings.queue_poll_interval)
        self.metrics.track_queue(self.queue_length)
        self._claimed = 0  # queue places taken by admissions not yet in the queue
        # Instances a task just found unreachable or signed out, skipped until the reconciler has had a look.
        self._avoid: dict[uuid.UUID, float] = {}
        self._avoid_seconds = min(10.0, max(1.0, settings.reconcile_interval))
        self._typical_run = 20.0  # seconds, a running average for Retry-After estimates
        self._capacity_hint = 1
        self._background: set[asyncio.Task[Any]] = set()
        self._settling: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.requests = RequestFiles(Path(settings.data_dir) / "requests")
        self.webhooks = Webhooks(settings, ledger.record_callback)
        self._pruner: asyncio.Task[None] | None = None
        self._closing = False
        self._listener = (
            PoolListener(listener_url, ledger.origin, on_free=self._queue.wake, on_suspect=self._suspect_locally)
            if listener_url and ledger.postgres
            else None
        )

    @classmethod
    def build(
        cls,
        engine: AsyncEngine,
        client: InstanceClient,
        settings: Settings,
        *,
        suspect: Callable[[uuid.UUID], None],
        origin: str | None = None,
    ) -> Dispatcher:
        lease_seconds = settings.generation_timeout + settings.lease_margin
        ledger = Ledger(engine, lease_seconds=lease_seconds, origin=origin or secrets.token_hex(6))
        return cls(ledger, client, settings, suspect=suspect, listener_url=settings.database_url)

    # Lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._queue.start()
        if self._listener is not None:
            self._listener.start()
        if self._pruner is None:
            self._pruner = asyncio.create_task(self._prune_forever(), name="dispatch-prune")

    async def recover(self, application_prefix: str) -> int:
        """At start: tasks a gateway left unfinished when it died (SIGKILL, a crash) end as abandoned and free
        their instances at once, when no other gateway (connections named `application_prefix`...) is alive
        on this database to own them; otherwise the pruner ends them once no live gateway could still."""
        end = TaskEnd(TaskStatus.FAILED, outcomes.ABANDONED, "left unfinished by a gateway that stopped", 0, None, {})
        abandoned = await self._ledger.abandon_orphans(end, application_prefix)
        if abandoned is None:
            return 0  # another gateway is alive: they are its to finish
        if abandoned:
            log.warning("marked %d tasks abandoned by a gateway that died; their instances are free", abandoned)
        await self._resume_kept(end)
        return abandoned

    async def _resume_kept(self, end: TaskEnd) -> None:
        """Queued asynchronous tasks whose inputs were kept: back in the queue, in their order."""
        resumed = 0
        for row in await self._ledger.resumable_tasks():
            kept = await self.requests.load(row.request_path)
            if kept is None:
                await self._ledger.end_task(row.id, end)
                continue
            request, meta = kept
            progress = _Progress(row.id, row.mode, request.model, request.image_size, request=request, meta=meta,
                                 request_path=row.request_path)
            progress.created_at = row.created_at or progress.created_at
            self._run_in_background(progress, request, None, self._enqueue(progress))
            resumed += 1
        if resumed:
            log.info("resumed %d queued tasks a stopped gateway left", resumed)

    async def close(self) -> None:
        """Ends this process's queued and running asynchronous tasks (their rows say so) and stops the loops."""
        self._closing = True
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.settled()  # what finished is recorded
        await self.webhooks.close()
        await self._ledger.backlog.close()
        if self._pruner is not None:
            self._pruner.cancel()
            await asyncio.gather(self._pruner, return_exceptions=True)
            self._pruner = None
        await self._queue.close()
        if self._listener is not None:
            await self._listener.close()

    async def settled(self) -> None:
        """Returns once every task that has answered so far is also recorded (its row, result and release);
        later ones are not waited for, so a reader under load is not held up. Writes that met a database
        outage are tried once more now (a reader right after the outage sees no phantom task)."""
        pending = list(self._settling.values())
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if len(self._ledger.backlog):
            await self._ledger.backlog.flush()

    @property
    def unwritten(self) -> int:
        """Releases and task ends waiting for the database to come back."""
        return len(self._ledger.backlog)

    def queue_length(self) -> int:
        return len(self._queue)

    @property
    def listening(self) -> asyncio.Event | None:
        """Set while cross-gateway notifications arrive (Postgres only)."""
        return self._listener.connected if self._listener is not None else None

    # Public operations ---------------------------------------------------------------------------

    async def generate(
        self, request: GenerationRequest, *, client_left: ClientWatch | None = None, meta: TaskMeta | None = None
    ) -> TaskResult:
        """Runs a task while the caller waits. Raises QueueFull or Unavailable when it cannot be run;
        a generation that fails is a result (the old clients read `success: false`), not an exception.
        `client_left()` returns once the client has disconnected; watched only while the task waits.
        A known idempotency key with the same request answers with that task, once it has ended."""
        admitted = await self._admit_keyed(request, "sync", meta)
        if isinstance(admitted, uuid.UUID):
            return await self._ended(admitted)
        progress, lease = admitted
        return await self._drive(progress, request, lease, client_left, self._settings.queue_wait_timeout)

    async def submit(self, request: GenerationRequest, *, meta: TaskMeta | None = None) -> TaskResult:
        """Admits a task and runs it in the background; answers at once with its id and status. Its inputs are
        kept as a file until it ends, so a gateway started after this one stopped resumes it while it waits."""
        admitted = await self._admit_keyed(request, "async", meta)
        if isinstance(admitted, uuid.UUID):
            return self._row_result(await self._ledger.get_task(admitted))
        progress, lease = admitted
        # In the queue now, not when the runner first runs: its place was counted at admission.
        waiter = self._enqueue(progress) if lease is None else None
        self._run_in_background(progress, request, lease, waiter)
        if progress.request_path is not None:
            await self.requests.save(progress.task_id, request, progress.meta)
        status = TaskStatus.RUNNING if lease is not None else TaskStatus.QUEUED
        return TaskResult(progress.task_id, status, "async", instance_id=lease.instance_id if lease else None,
                          instance_name=lease.name if lease else None, model=request.model, image_size=request.image_size,
                          output_format=request.output_format)

    async def begin(self, request: GenerationRequest, *, meta: TaskMeta | None = None) -> asyncio.Task[TaskResult]:
        """Admits a task the caller waits for, as `generate` does (QueueFull and Unavailable are raised here, before
        any answer starts), and runs it on its own, so the caller can talk meanwhile (a stream's keep-alives)."""
        admitted = await self._admit_keyed(request, "sync", meta)
        if isinstance(admitted, uuid.UUID):
            return asyncio.create_task(self._ended(admitted))
        progress, lease = admitted
        waiter = self._enqueue(progress) if lease is None else None  # its place was counted at admission
        limit = self._settings.queue_wait_timeout
        return asyncio.create_task(self._drive(progress, request, lease, None, limit, waiter), name=f"task-{progress.task_id}")

    async def task(self, task_id: str) -> TaskResult:
        """A task's row and, once it succeeded, its kept images; 404 unknown, 410 images no longer kept."""
        try:
            uid = uuid.UUID(str(task_id))
        except ValueError:
            raise NotFound("task_not_found", task_id=str(task_id)[:80]) from None
        settling = self._settling.get(uid)
        if settling is not None:
            await asyncio.shield(settling)  # it just ended here: read what it wrote
        await self._ledger.backlog.ready()  # or its end may still be waiting for the database
        row = await self._ledger.get_task(uid)
        if row is None:
            raise NotFound("task_not_found", task_id=str(uid))
        result = self._row_result(row)
        if row.status == TaskStatus.SUCCEEDED:
            stored = await self.results.load(row.result_path)
            if stored is None:
                raise Gone("task_result_gone", task_id=str(uid), ttl=int(self._settings.task_result_ttl))
            result.images_b64 = [i for i in stored.get("images_b64") or [] if isinstance(i, str)]
            result.text = stored.get("text") if isinstance(stored.get("text"), str) else None
        return result

    @staticmethod
    def _row_result(row: Any) -> TaskResult:
        return TaskResult(
            task_id=row.id,
            status=row.status,
            mode=row.mode,
            error_code=row.error_code,
            error_message=row.error_message,
            instance_id=row.instance_id,
            instance_name=row.instance_name,
            attempts=row.attempts,
            timings=row.timings or {},
            created_at=row.created_at,
            finished_at=row.finished_at,
            model=row.model,
            image_size=row.image_size,
            output_format=row.output_format,
            image_hashes=list(row.image_hashes or []),
        )

    async def _ended(self, task_id: uuid.UUID) -> TaskResult:
        """A task admitted by an earlier request with the same idempotency key, once it has ended."""
        settings = self._settings
        deadline = time.monotonic() + settings.task_wait_timeout + settings.max_attempts * settings.generation_timeout
        while time.monotonic() < deadline:
            row = await self._ledger.get_task(task_id)
            if row is not None and row.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED):
                return await self.task(str(task_id))
            await asyncio.sleep(settings.queue_poll_interval)
        return await self.task(str(task_id))

    # Admission -----------------------------------------------------------------------------------

    async def _admit_keyed(
        self, request: GenerationRequest, mode: str, meta: TaskMeta | None
    ) -> tuple[_Progress, Lease | None] | uuid.UUID:
        """Admits the task, or, when its idempotency key is known, names the task admitted with it (409 when
        that one was asked something else)."""
        meta = meta or TaskMeta()
        if meta.idempotency_key is None:
            return await self._admit(request, mode, meta)
        digest = fingerprint(request, meta)
        for _ in range(2):
            row = await self._ledger.task_by_key(meta.idempotency_key)
            if row is not None:
                if row.request_hash != digest:
                    raise Conflict("idempotency_key_reused", value=meta.idempotency_key[:100])
                return row.id
            try:
                return await self._admit(request, mode, meta, digest)
            except IntegrityError:
                continue  # a request with the same key was admitted a moment ago: answer with its task
        raise Conflict("idempotency_key_reused", value=meta.idempotency_key[:100])

    # Admission -----------------------------------------------------------------------------------

    async def _admit(
        self, request: GenerationRequest, mode: str, meta: TaskMeta, digest: str | None = None
    ) -> tuple[_Progress, Lease | None]:
        if self._closing:
            raise Unavailable("gateway_stopping", headers=self._retry_after(5))
        # First in, first out: nobody overtakes a waiting task (arrivals at the same moment race for leases).
        behind_others = len(self._queue) > 0
        if behind_others and self._queue_room() <= 0:
            raise self._queue_full()
        progress = _Progress(uuid.uuid4(), mode, request.model, request.image_size, request=request, meta=meta)
        if mode == "async":  # the file is written once admitted; a row without it is ended at the next start
            progress.request_path = str(self.requests.path_for(progress.task_id))
        task = NewTask(
            progress.task_id, mode, request.prompt, request.aspect_ratio, len(request.references_b64),
            request.model, request.image_size, api=meta.api, output_format=request.output_format,
            idempotency_key=meta.idempotency_key, request_hash=digest, request_path=progress.request_path,
            callback_url=meta.callback_url,
        )
        # Instances that answered here a moment ago may not be released yet: before queueing, wait for that.
        settling = list(self._settling.values()) if not behind_others else []
        lease, snapshot, claimed = await self._try_admit(task, try_lease=not behind_others, may_queue=not settling)
        if lease is None and settling and snapshot is not None and not snapshot.empty:
            await asyncio.wait(settling)
            lease, snapshot, claimed = await self._try_admit(task, try_lease=True, may_queue=True)
        if lease is not None:
            return progress, lease
        assert snapshot is not None
        self._capacity_hint = max(1, snapshot.servable)
        if snapshot.empty:
            raise self._no_instance(snapshot, request.model)
        if not claimed:
            raise self._queue_full()
        return progress, None

    async def _try_admit(
        self, task: NewTask, *, try_lease: bool, may_queue: bool
    ) -> tuple[Lease | None, PoolSnapshot | None, bool]:
        claimed = False

        def claim_place() -> bool:
            nonlocal claimed
            claimed = may_queue and self._queue_room() > 0
            self._claimed += claimed
            return claimed

        try:
            lease, snapshot = await self._ledger.admit(task, avoid=self._avoiding(), try_lease=try_lease, may_queue=claim_place)
        finally:
            self._claimed -= claimed  # the caller enqueues it before its next await
        return lease, snapshot, claimed

    def _queue_room(self) -> int:
        return self._settings.queue_max - len(self._queue) - self._claimed

    def _queue_full(self) -> QueueFull:
        self._reject("queue_full")
        return QueueFull("queue_full", limit=self._settings.queue_max, headers=self._retry_after(self._estimate_wait()))

    def _no_instance(self, snapshot: PoolSnapshot, model: str) -> Unavailable:
        if snapshot.running == 0:
            self._reject("no_instance_running")
            return Unavailable("no_instance_running", headers=self._retry_after(30))
        if snapshot.logged_in == 0:
            self._reject("no_instance_logged_in")
            return Unavailable("no_instance_logged_in", running=snapshot.running, headers=self._retry_after(60))
        if snapshot.blocked and snapshot.cooldown_ends is None:
            # Blocks last until a restart or a new session: an operator's move, not a short wait.
            self._reject("model_unavailable")
            return Unavailable("model_unavailable_everywhere", model=model, headers=self._retry_after(RETRY_AFTER_MAX))
        self._reject("all_cooling_down")
        seconds = (snapshot.cooldown_ends - utcnow()).total_seconds() if snapshot.cooldown_ends else 60
        until = snapshot.cooldown_ends.isoformat(timespec="seconds") if snapshot.cooldown_ends else "?"
        return Unavailable("all_instances_cooling_down", until=until, headers=self._retry_after(seconds, cap=None))

    # Running a task ------------------------------------------------------------------------------

    async def _drive(
        self,
        progress: _Progress,
        request: GenerationRequest,
        lease: Lease | None,
        client_left: ClientWatch | None,
        wait_limit: float,
        waiter: Waiter | None = None,
    ) -> TaskResult:
        try:
            while True:
                if lease is None:
                    progress.waiting = True
                    lease = await self._wait(progress, waiter or self._enqueue(progress), client_left, wait_limit)
                    progress.waiting, waiter = False, None
                end = await self._attempt(progress, request, lease)
                lease = None
                if end is not None:
                    self.metrics.tasks.labels(end.error_code or "succeeded").inc()
                    return progress.result(end)
        except _WaitEnded as ended:
            return await self._end_waiting(progress, ended.code)
        except asyncio.CancelledError:
            if self._closing and progress.waiting and progress.request_path is not None:
                raise  # still queued, its inputs kept: the next gateway resumes it
            end = progress.end(TaskStatus.FAILED, outcomes.SHUTDOWN, "the gateway stopped while the task was under way")
            await asyncio.shield(self._ledger.end_task(progress.task_id, end, attempts=progress.attempts))
            raise

    async def _drive_in_background(
        self, progress: _Progress, request: GenerationRequest, lease: Lease | None, waiter: Waiter | None
    ) -> None:
        try:
            result = await self._drive(progress, request, lease, None, self._settings.task_wait_timeout, waiter)
        except asyncio.CancelledError:
            if not progress.waiting:
                await asyncio.shield(self.requests.remove(progress.request_path))
            raise
        except Exception:  # nobody awaits this task: its failure must at least be logged
            log.exception("task %s failed in the gateway", progress.task_id)
            return
        await self.requests.remove(progress.request_path)
        if progress.meta.callback_url:
            self.webhooks.send(progress.task_id, progress.meta.callback_url, webhook_payload(result))

    def _run_in_background(self, progress: _Progress, request: GenerationRequest, lease: Lease | None, waiter: Waiter | None) -> None:
        runner = asyncio.create_task(self._drive_in_background(progress, request, lease, waiter), name=f"task-{progress.task_id}")
        self._background.add(runner)
        runner.add_done_callback(self._background.discard)

    def _enqueue(self, progress: _Progress) -> Waiter:
        waiter = Waiter(progress.task_id, frozenset(progress.tried), progress.model)
        self._queue.enqueue(waiter, front=bool(progress.tried))
        return waiter

    async def _wait(self, progress: _Progress, waiter: Waiter, client_left: ClientWatch | None, limit: float) -> Lease:
        gone = asyncio.ensure_future(client_left()) if client_left is not None else None
        began = time.monotonic()
        try:
            await asyncio.wait([waiter.future, *([gone] if gone else [])], timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await self._abandon(waiter)
            raise
        finally:
            if gone is not None:
                gone.cancel()
            waited = time.monotonic() - began
            progress.queued_s += waited
            self.metrics.wait_seconds.observe(waited)
        lease = _taken(waiter)
        if lease is not None:
            return lease
        await self._abandon(waiter)
        left = gone is not None and gone.done() and not gone.cancelled() and gone.exception() is None
        raise _WaitEnded(outcomes.CLIENT_GONE if left else outcomes.QUEUE_TIMEOUT)

    async def _abandon(self, waiter: Waiter) -> None:
        self._queue.remove(waiter)
        lease = _taken(waiter)
        if lease is not None:
            await asyncio.shield(self._ledger.release_unused(lease))
        else:
            waiter.future.cancel()  # done now, so the pump never hands it a lease

    async def _lease_for(self, waiter: Waiter) -> Lease | None:
        return await self._ledger.lease_queued(waiter.task_id, waiter.exclude | self._avoiding(), waiter.model)

    async def _attempt(self, progress: _Progress, request: GenerationRequest, lease: Lease) -> TaskEnd | None:
        """One attempt on a leased instance; the lease is released whatever happens. Returns how the task
        ended, or None when it goes on to another instance."""
        began = time.monotonic()
        self.metrics.running.inc()
        try:
            attempt = await self._output(await self._call(lease, request), request)
        except BaseException as exc:
            # Cancelled (gateway stopping) or a bug: the instance may still be generating; free it all the same.
            stopping = isinstance(exc, asyncio.CancelledError)
            code, why = (outcomes.SHUTDOWN, "the gateway stopped during the generation") if stopping else ("internal_error", repr(exc))
            progress.record(lease, Attempt(False, error_code=code), time.monotonic() - began)
            end = progress.end(TaskStatus.FAILED, code, why)
            await asyncio.shield(self._ledger.finish_attempt(lease, Release(False, counts=False), end, attempts=progress.attempts))
            raise
        finally:
            self.metrics.running.dec()
        seconds = time.monotonic() - began
        progress.record(lease, attempt, seconds)
        self.metrics.run_seconds.observe(seconds)
        self.metrics.attempts.labels(attempt.error_code or "succeeded").inc()
        if attempt.success:
            self._typical_run = 0.8 * self._typical_run + 0.2 * seconds
        if attempt.suspect:
            self._avoid[lease.instance_id] = time.monotonic() + self._avoid_seconds
        if await self._goes_on(progress, attempt):
            await self._settle(progress, lease, attempt, None)  # released before the task looks elsewhere
            self.metrics.retries.labels(attempt.error_code or "unknown").inc()
            log.info("task %s: %s on %s; trying another instance", progress.task_id, attempt.error_code, lease.name)
            return None
        end = self._final(progress, attempt)
        # The answer does not wait for the bookkeeping: the result file, the release and the row are written
        # just after. Reads here wait for it (`task`, `settled`), and so does a newcomer that found no instance.
        settling = asyncio.create_task(self._settle(progress, lease, attempt, end), name=f"settle-{progress.task_id}")
        self._settling[progress.task_id] = settling
        settling.add_done_callback(lambda _task: self._settling.pop(progress.task_id, None))
        return end

    async def _settle(self, progress: _Progress, lease: Lease, attempt: Attempt, end: TaskEnd | None) -> None:
        """Keeps the result (when asked), releases the instance, writes the task row, reports trouble."""
        try:
            if end is not None and attempt.success and self._keeps(progress.mode):
                end = replace(end, result_path=await self._save(progress, attempt))
            release = Release(attempt.success, attempt.cooldown, counts=not attempt.bounced and not attempt.model_unavailable)
            if attempt.model_unavailable:
                release = replace(release, blocks_model=progress.model, block_reason=attempt.error_message or "")
            events = self._events_for(lease, attempt)
            await self._ledger.finish_attempt(lease, release, end, attempts=progress.attempts, events=events)
        except Exception:
            if end is None:
                raise  # a retry must not go on without its release
            # Nobody awaits this: the lease expires by itself and the row is marked abandoned later.
            log.exception("cannot record the end of task %s", progress.task_id)
            return
        finally:
            self._queue.wake()  # the freed instance may suit someone waiting here
        if attempt.suspect:
            await self._report_suspect(lease.instance_id)

    async def _call(self, lease: Lease, request: GenerationRequest) -> Attempt:
        payload = request.instance_payload(str(lease.task_id))
        try:
            body = await self._client.generate(lease.address, payload, timeout=self._settings.generation_timeout)
        except InstanceCallError as exc:
            return outcomes.from_error(exc)
        except ValueError:  # not JSON
            return Attempt(False, error_code=outcomes.BAD_ANSWER, error_message="the instance's answer is not JSON")
        return outcomes.from_answer(body, self._cooldowns)

    async def _goes_on(self, progress: _Progress, attempt: Attempt) -> bool:
        if attempt.success or not attempt.retry:
            return False
        if attempt.bounced and progress.bounces > MAX_BOUNCES:
            return False
        spent = not attempt.bounced and not attempt.model_unavailable
        if spent and progress.attempts >= self._settings.max_attempts:
            return False
        # Another instance must exist that could take it, or waiting would only end in a timeout.
        try:
            snapshot = await self._ledger.snapshot(frozenset(progress.tried) | self._avoiding(), progress.model)
        except Exception as exc:
            if not database_unreachable(exc):
                raise
            log.warning("task %s not retried: the database cannot be reached", progress.task_id)
            return False  # it ends with this attempt's failure; its release waits for the database
        return not snapshot.empty

    def _final(self, progress: _Progress, attempt: Attempt) -> TaskEnd:
        if not attempt.success:
            return progress.end(TaskStatus.FAILED, attempt.error_code, attempt.error_message)
        end = progress.end(TaskStatus.SUCCEEDED, None, None, len(attempt.images_b64))
        return replace(end, image_hashes=content_hashes(attempt.images_b64))

    @staticmethod
    async def _output(attempt: Attempt, request: GenerationRequest) -> Attempt:
        """The images in the format the client asked for (the page gives PNG)."""
        if not attempt.success:
            return attempt
        try:
            attempt.images_b64 = await encode_all(attempt.images_b64, request.output_format, request.output_quality)
        except (OSError, ValueError) as exc:  # not an image after all: the contract was broken
            return Attempt(False, error_code=outcomes.BAD_ANSWER, error_message=f"cannot re-encode its image: {exc}"[:500])
        return attempt

    def _keeps(self, mode: str) -> bool:
        return mode == "async" or self._settings.store_sync_results

    async def _save(self, progress: _Progress, attempt: Attempt) -> str | None:
        try:
            return await self.results.save(progress.task_id, attempt.images_b64, attempt.text)
        except OSError as exc:
            log.error("cannot keep the result of task %s: %s", progress.task_id, exc)
            return None

    async def _end_waiting(self, progress: _Progress, code: str) -> TaskResult:
        """The task stopped waiting. A retry that found no instance ends with what the last attempt said;
        a first wait that ran out is a 503 for a waiting client and a failed task otherwise."""
        last = progress.last
        if last is not None and code == outcomes.QUEUE_TIMEOUT:
            end = progress.end(TaskStatus.FAILED, last.error_code, last.error_message)
        elif code == outcomes.CLIENT_GONE:
            end = progress.end(TaskStatus.FAILED, code, "the client disconnected while the task waited for an instance")
        else:
            sync = progress.mode == "sync"
            limit = self._settings.queue_wait_timeout if sync else self._settings.task_wait_timeout
            end = progress.end(TaskStatus.FAILED, code, f"no instance was free within {limit:g} s")
        await self._ledger.end_task(progress.task_id, end, attempts=progress.attempts)
        self.metrics.tasks.labels(end.error_code or "failed").inc()
        if code == outcomes.QUEUE_TIMEOUT and last is None and progress.mode == "sync":
            self._reject("queue_timeout")
            raise Unavailable("queue_timeout", waited=int(progress.queued_s), headers=self._retry_after(self._estimate_wait()))
        if code == outcomes.CLIENT_GONE:
            self._reject("client_disconnected")
        return progress.result(end)

    # Instances in trouble ------------------------------------------------------------------------

    def _events_for(self, lease: Lease, attempt: Attempt) -> list[Any]:
        events = []
        if attempt.cooldown:
            until = (utcnow() + timedelta(seconds=attempt.cooldown)).isoformat(timespec="seconds")
            message = f"{attempt.error_code}: cooling down until {until} ({attempt.error_message})"
            events.append(new_event(lease.instance_id, lease.name, EventKind.COOLING_DOWN, message[:2000]))
        if attempt.suspect and attempt.error_code != outcomes.NEEDS_LOGIN:
            message = f"a task could not use it ({attempt.error_code}: {attempt.error_message}); asked for a probe"
            events.append(new_event(lease.instance_id, lease.name, EventKind.UNREACHABLE, message[:2000]))
        return events

    async def _report_suspect(self, instance_id: uuid.UUID) -> None:
        """The reconciler probes it now and records what it finds (crashed: error and a restart; signed out:
        needs_login). With replicas, the one whose reconciler leads hears it through the database."""
        self._suspect_locally(instance_id)
        try:
            await self._ledger.suspect(instance_id)
        except Exception as exc:  # noqa: BLE001 - the probe cycle finds it anyway, only later
            log.warning("cannot tell other gateways about instance %s: %s", instance_id, exc)

    def _avoiding(self) -> frozenset[uuid.UUID]:
        if not self._avoid:
            return frozenset()
        now = time.monotonic()
        for instance_id in [i for i, until in self._avoid.items() if until <= now]:
            del self._avoid[instance_id]
        return frozenset(self._avoid)

    # Estimates and bookkeeping -------------------------------------------------------------------

    def _estimate_wait(self) -> float:
        return self._typical_run * (len(self._queue) + 1) / max(1, self._capacity_hint)

    def _retry_after(self, seconds: float, *, cap: float | None = RETRY_AFTER_MAX) -> dict[str, str]:
        """Estimates are capped (a client should look again); a known cooldown end is not."""
        seconds = max(1, math.ceil(seconds))
        return {"Retry-After": str(int(min(cap, seconds) if cap is not None else seconds))}

    def _reject(self, reason: str) -> None:
        self.metrics.rejected.labels(reason).inc()

    async def _prune_forever(self) -> None:
        settings = self._settings
        interval = max(1.0, min(60.0, settings.task_result_ttl / 2))
        longest_wait = max(settings.queue_wait_timeout, settings.task_wait_timeout)
        # No live gateway keeps a task longer than this: every wait and attempt has a limit.
        max_age = (settings.max_attempts + MAX_BOUNCES) * (longest_wait + settings.generation_timeout + settings.lease_margin) + 60
        while True:
            try:
                await self.prune_once(max_age=max_age)
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                if not database_unreachable(exc):
                    log.exception("pruning results failed")
                else:
                    log.warning("pruning results waits for the database: %s", str(exc).splitlines()[0][:200])
            await asyncio.sleep(interval)

    async def prune_once(self, *, max_age: float | None = None) -> None:
        now = utcnow()
        removed = await self.results.prune()
        expired = await self._ledger.expire_results(now - timedelta(seconds=self._settings.task_result_ttl))
        if removed or expired:
            log.info("pruned %d result files, %d task results expired", removed, expired)
        if max_age is not None:
            end = TaskEnd(TaskStatus.FAILED, outcomes.ABANDONED, "left unfinished by a gateway that stopped", 0, None, {})
            abandoned = await self._ledger.abandon_stale(now - timedelta(seconds=max_age), end)
            if abandoned:
                log.warning("marked %d abandoned tasks failed", abandoned)


def _taken(waiter: Waiter) -> Lease | None:
    future = waiter.future
    if future.done() and not future.cancelled() and future.exception() is None:
        return future.result()
    return None


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def webhook_payload(result: TaskResult) -> dict[str, Any]:
    """What a task's webhook carries: its end, and its images while they are at hand."""
    return {
        "task_id": str(result.task_id),
        "status": result.status,
        "success": result.succeeded,
        "generated_images": result.images_b64,
        "image_hashes": result.image_hashes,
        "output_format": result.output_format,
        "ai_text_response": result.text,
        "error_code": result.error_code,
        "error_message": result.error_message,
        "model": result.model,
        "image_size": result.image_size,
        "instance": result.instance_name,
        "attempts": result.attempts,
        "finished_at": result.finished_at.isoformat() if result.finished_at else None,
    }
