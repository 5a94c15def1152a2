"""The dispatcher: admits a generation, leases an idle instance (or queues), runs it, retries, and records.

A task's life: admitted (its row written, leased at once when an instance is free, else queued) → one or
more attempts, each on a leased instance that is always released → succeeded or failed, with its instance,
attempts and timings in the row and its images, when kept, in a file. The last release and the row's end
are written just after the answer goes out (a task's reads, /health and newcomers wait for them).

Only the reconciler changes an instance's status: a dispatcher that cannot reach an instance, or finds it
signed out, asks the reconciler to probe it now (locally, and through Postgres NOTIFY for the gateway whose
reconciler leads), and skips it for a few seconds meanwhile. Quota and rate-limit answers block that model
on that account (until midnight Pacific, or a doubling pause); pacing rests an account (`cooldown_until`).
A model no account may be asked for until a reset is answered at once with 429 and a Retry-After that
points at the reset, and tasks waiting for it end the same way.

The dispatcher admits tasks, queues them and keeps the books; each admitted task is then a `TaskRun` (run.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.models import TaskStatus
from gateway.db.outage import database_unreachable
from gateway.db.types import utcnow
from gateway.dispatcher import outcomes
from gateway.dispatcher.durable import TaskMeta, build_input_store, fingerprint
from gateway.dispatcher.inputs import GenerationRequest
from gateway.dispatcher.ledger import (
    Clock,
    Lease,
    Ledger,
    NewTask,
    PoolSnapshot,
    TaskEnd,
    ended_values,
)
from gateway.dispatcher.metrics import DispatchMetrics
from gateway.dispatcher.queue import Waiter, WaitQueue
from gateway.dispatcher.results import FileResultStore, ImageStream, ResultStore, build_result_store
from gateway.dispatcher.s3_results import S3ResultStore
from gateway.dispatcher.run import (
    MAX_BOUNCES,
    Avoidance,
    ClientWatch,
    Pace,
    RunContext,
    RunLimits,
    TaskRun,
    exhausted,
)
from gateway.dispatcher.signals import PoolListener
from gateway.dispatcher.takeover import Owners
from gateway.dispatcher.task_result import TaskResult, ended_unattended
from gateway.dispatcher.webhooks import Webhooks
from gateway.errors import Conflict, Exhausted, Gone, NotFound, QueueFull, Unavailable
from gateway.instance_client import InstanceAddress, InstanceClient
from gateway.settings import DispatchSettings

log = logging.getLogger(__name__)
# How far back a conversation's last image is looked for: longer than an instance keeps a chat (INSTANCE_KEEP_CHAT_S).
CONVERSATION_LOOKBACK = timedelta(minutes=15)
CONVERSATION_SETTLE_WAIT = 2.0  # seconds a next turn waits for its account's release in this gateway, at most

RETRY_AFTER_MAX = 600


class Dispatcher:
    def __init__(
        self,
        ledger: Ledger,
        client: InstanceClient,
        settings: DispatchSettings,
        *,
        suspect: Callable[[uuid.UUID], None],
        metrics: DispatchMetrics | None = None,
        results: ResultStore,
        listener_url: str | None = None,
    ) -> None:
        self._ledger = ledger
        self._client = client
        self._settings = settings
        self._suspect_locally = suspect
        self.metrics = metrics or DispatchMetrics()
        self.results = results
        self._queue = WaitQueue(self._lease_for, ledger.release_unused, poll_interval=settings.queue_poll_interval,
                                spent_until=self._spent_until)
        self.metrics.track_queue(self.queue_length)
        self._claimed = 0  # queue places taken by admissions not yet in the queue
        self._avoid = Avoidance(min(10.0, max(1.0, settings.reconcile_interval)))
        self._pace = Pace()
        self._capacity_hint = 1
        self._background: set[asyncio.Task[Any]] = set()
        self._settling: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.requests = build_input_store(settings.result_store, ledger.engine, Path(settings.data_dir))
        self.webhooks = Webhooks(settings.webhooks, ledger.record_callback, ledger.transaction, ledger.origin)
        self.owners = Owners(ledger.transaction, ledger.origin, timeout=settings.heartbeat_timeout, clock=utcnow)
        self._runs: dict[uuid.UUID, tuple[TaskRun, asyncio.Task[None]]] = {}  # asynchronous tasks under way here
        self._pruner: asyncio.Task[None] | None = None
        self._beater: asyncio.Task[None] | None = None
        self._closing = False
        self._listener = (
            PoolListener(listener_url, ledger.origin, on_free=self._queue.wake, on_suspect=self._suspect_locally)
            if listener_url and ledger.postgres
            else None
        )
        self._run_context = RunContext(
            ledger, client, self.metrics, self.results, self._queue, self._avoid, self._pace,
            self._run_limits(), self._settling, suspect_locally=self._suspect_locally,
            closing=lambda: self._closing, wait_headers=lambda: self._retry_after(self._estimate_wait()),
        )

    @classmethod
    def build(
        cls,
        engine: AsyncEngine,
        client: InstanceClient,
        settings: DispatchSettings,
        *,
        suspect: Callable[[uuid.UUID], None],
        origin: str | None = None,
        listener_url: str | None = None,  # the database URL: on Postgres, other gateways' wake-ups arrive on it
        clock: Clock = utcnow,  # the accounts' days and blocks follow it (tests and the day benchmark move it)
    ) -> Dispatcher:
        lease_seconds = settings.generation_timeout + settings.lease_margin
        ledger = Ledger(engine, lease_seconds=lease_seconds, origin=origin or secrets.token_hex(6),
                        accounts=settings.accounts, clock=clock)
        return cls(ledger, client, settings, suspect=suspect, results=_result_store(settings, engine), listener_url=listener_url)

    def _run_limits(self) -> RunLimits:
        settings = self._settings
        return RunLimits(settings.generation_timeout, settings.max_attempts, settings.queue_wait_timeout,
                         settings.task_wait_timeout, settings.store_sync_results)

    # Lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._queue.start()
        self.webhooks.start()
        if self._listener is not None:
            self._listener.start()
        if self._pruner is None:
            self._pruner = asyncio.create_task(self._prune_forever(), name="dispatch-prune")
        if self._beater is None:
            self._beater = asyncio.create_task(self._beat_forever(), name="dispatch-heartbeat")

    async def recover(self, application_prefix: str) -> int:
        """At start: this gateway's first heartbeat, then what dead gateways left (takeover.py). When it is alone
        on the database (SQLite, or no other gateway's connection on Postgres), every other gateway is dead at
        once: a SIGKILLed predecessor's running tasks end abandoned and free their instances, its queued
        asynchronous tasks are resumed here. Otherwise a gateway is dead once silent for GATEWAY_HEARTBEAT_TIMEOUT,
        or at once when it stopped cleanly (its heartbeat row is gone)."""
        await self.owners.beat()
        alone = not self._ledger.postgres or not await self.owners.anyone_else_connected(application_prefix)
        return await self.take_over(everyone_else=alone)

    async def take_over(self, *, everyone_else: bool = False) -> int:
        """Claims what dead gateways left: their queued tasks (back in this queue by admission time) and
        webhooks; their running tasks end abandoned. Returns how many tasks ended so."""
        dead = await self.owners.dead(everyone_else=everyone_else)
        if not dead:
            await self.free_orphan_leases()
            return 0
        end = TaskEnd(TaskStatus.FAILED, outcomes.ABANDONED, "left unfinished by a gateway that stopped", 0, None, {})
        claimed = await self.owners.claim(dead, ended_values(end))
        if claimed.abandoned:
            log.warning("marked %d tasks abandoned by a gateway that died; their instances are free", claimed.abandoned)
        if claimed.webhooks:
            log.info("took over %d pending webhooks of a stopped gateway", claimed.webhooks)
            self.webhooks.wake()
        await self._resume(claimed.queued, end)
        await self.free_orphan_leases()
        return claimed.abandoned

    async def free_orphan_leases(self) -> int:
        """Instances leased to tasks a dead gateway left: freed once they are idle (or gone, or unreachable)."""
        freed = 0
        for row in await self.owners.orphan_leases():
            if row.endpoint and await self._instance_busy(InstanceAddress(row.endpoint, row.token)):
                continue  # still generating the dead gateway's task: looked at again at the next beat
            freed += await self.owners.free(row.id, row.lease_task_id)
        if freed:
            log.info("%d instances of abandoned tasks are idle and free again", freed)
            self._queue.wake()
        return freed

    async def _instance_busy(self, address: InstanceAddress) -> bool:
        try:
            return (await self._client.status(address, timeout=5.0)).busy
        except Exception as exc:  # noqa: BLE001 - unreachable: nothing runs there that a new task would meet
            log.info("instance %s did not answer its status (%s): its lease is freed", address.endpoint, type(exc).__name__)
            return False

    async def _resume(self, rows: list[Any], end: TaskEnd) -> None:
        """Queued asynchronous tasks taken over: in this queue among its own by admission time (FIFO kept)."""
        resumed = 0
        for row in rows:
            kept = await self.requests.load(row.id, row.request_path)
            if kept is None:
                await self._ledger.end_task(row.id, end, webhook=ended_unattended(row, ended_values(end)))
                continue
            request, meta = kept
            run = TaskRun(self._run_context, row.id, row.mode, request, meta, request_path=row.request_path,
                          created_at=row.created_at)
            self._run_in_background(run, None, run.enqueue(by_age=True))
            resumed += 1
        if resumed:
            log.info("resumed %d queued tasks a stopped gateway left", resumed)

    async def _beat_forever(self) -> None:
        """The heartbeat, and a look for dead gateways at each beat. Only a gateway whose last beat went through
        judges others: after a database outage every heartbeat is old, and none of them is dead."""
        last_beat = time.monotonic()
        while True:
            await asyncio.sleep(self._settings.heartbeat_interval)
            try:
                beating = time.monotonic() - last_beat < 1.5 * self._settings.heartbeat_interval  # the last one went through
                if not await self.owners.beat():
                    log.error("this gateway was thought dead (no heartbeat for %g s): its queued tasks went to another",
                              self._settings.heartbeat_timeout)
                    await self._drop_disowned()
                if beating:
                    await self.take_over()
                last_beat = time.monotonic()
            except Exception as exc:
                if database_unreachable(exc):
                    log.warning("the heartbeat waits for the database: %s", str(exc).splitlines()[0][:200])
                else:
                    log.exception("the heartbeat failed")

    async def _drop_disowned(self) -> None:
        """Waiting tasks another gateway took over while this one was silent: they are that one's to run now."""
        for task_id, (run, runner) in list(self._runs.items()):
            if run.waiting and not await self.owners.still_mine(task_id):
                run.disowned = True
                runner.cancel()

    async def close(self) -> None:
        """Ends this process's queued and running asynchronous tasks (their rows say so) and stops the loops."""
        self._closing = True
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.settled()  # what finished is recorded
        await self.webhooks.close()
        if self._beater is not None:
            self._beater.cancel()
            await asyncio.gather(self._beater, return_exceptions=True)
            self._beater = None
        try:
            await self.owners.leave()  # what it left queued is taken over at once
        except Exception as exc:  # noqa: BLE001 - then it is taken once the heartbeat times out
            log.warning("cannot remove this gateway's heartbeat: %s", str(exc).splitlines()[0][:200])
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
        run, lease = admitted
        return await run.drive(lease, client_left=client_left)

    async def submit(self, request: GenerationRequest, *, meta: TaskMeta | None = None) -> TaskResult:
        """Admits a task and runs it in the background; answers at once with its id and status. Its inputs are
        kept as a file until it ends, so a gateway started after this one stopped resumes it while it waits."""
        admitted = await self._admit_keyed(request, "async", meta)
        if isinstance(admitted, uuid.UUID):
            return self._row_result(await self._ledger.get_task(admitted))
        run, lease = admitted
        # In the queue now, not when the runner first runs: its place was counted at admission.
        waiter = run.enqueue() if lease is None else None
        self._run_in_background(run, lease, waiter)
        if run.request_path is not None:
            await self.requests.save(run.task_id, request, run.meta)
        status = TaskStatus.RUNNING if lease is not None else TaskStatus.QUEUED
        return TaskResult(run.task_id, status, "async", instance_id=lease.instance_id if lease else None,
                          instance_name=lease.name if lease else None, model=request.model, image_size=request.image_size,
                          output_format=request.output_format)

    async def begin(self, request: GenerationRequest, *, meta: TaskMeta | None = None) -> asyncio.Task[TaskResult]:
        """Admits a task the caller waits for, as `generate` does (QueueFull and Unavailable are raised here, before
        any answer starts), and runs it on its own, so the caller can talk meanwhile (a stream's keep-alives)."""
        admitted = await self._admit_keyed(request, "sync", meta)
        if isinstance(admitted, uuid.UUID):
            return asyncio.create_task(self._ended(admitted))
        run, lease = admitted
        waiter = run.enqueue() if lease is None else None  # its place was counted at admission
        return asyncio.create_task(run.drive(lease, waiter), name=f"task-{run.task_id}")

    async def task(self, task_id: str) -> TaskResult:
        """A task's row and, once it succeeded, its kept images; 404 unknown, 410 images no longer kept."""
        uid, row = await self._task_row(task_id)
        result = self._row_result(row)
        if row.status == TaskStatus.SUCCEEDED:
            stored = None if self._result_expired(row) else await self.results.load(uid, row.result_path)
            if stored is None:
                raise self._gone(uid)
            result.images_b64 = stored.images_b64
            result.text = stored.text
        return result

    async def image(self, task_id: str, index: int, *, within: float = 10.0) -> ImageStream:
        """One image of a task that succeeded (a signed URL's), read alone from the store, once the row has
        ended: the gateway that ran it writes its end just after the answer went out, and the URL may reach
        another gateway first. 404 no such image, 410 no longer kept."""
        deadline = time.monotonic() + within
        uid, row = await self._task_row(task_id)
        while row.status in (TaskStatus.QUEUED, TaskStatus.RUNNING) and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, self._settings.queue_poll_interval))
            uid, row = await self._task_row(task_id)
        if row.status != TaskStatus.SUCCEEDED or not 0 <= index < (row.image_count or 0):
            raise NotFound("image_not_found")
        image = None if self._result_expired(row) else await self.results.open_image(uid, row.result_path, index)
        if image is None:
            raise self._gone(uid)
        return image

    async def _task_row(self, task_id: str) -> tuple[uuid.UUID, Any]:
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
        return uid, row

    def _result_expired(self, row: Any) -> bool:
        """Past GATEWAY_TASK_RESULT_TTL by the row's end, which every gateway reads alike, before any store looks."""
        return row.finished_at is not None and row.finished_at + timedelta(seconds=self._settings.task_result_ttl) <= utcnow()

    async def task_that_made(self, image_sha256: str) -> uuid.UUID | None:
        """The recent task that answered with this image: a conversation's last turn, whose chat may be kept."""
        try:
            return await self._ledger.task_that_made(image_sha256, utcnow() - CONVERSATION_LOOKBACK)
        except Exception as exc:
            if not database_unreachable(exc):
                raise
            return None  # only a preference: the turn is admitted (or refused) as any other task

    def _gone(self, task_id: uuid.UUID) -> Gone:
        return Gone("task_result_gone", task_id=str(task_id), ttl=int(self._settings.task_result_ttl))

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
    ) -> tuple[TaskRun, Lease | None] | uuid.UUID:
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
    ) -> tuple[TaskRun, Lease | None]:
        if self._closing:
            raise Unavailable("gateway_stopping", headers=self._retry_after(5))
        # First in, first out: nobody overtakes a waiting task (arrivals at the same moment race for leases).
        behind_others = len(self._queue) > 0
        if behind_others and self._queue_room() <= 0:
            raise self._queue_full()
        run = TaskRun(self._run_context, uuid.uuid4(), mode, request, meta)
        if mode == "async":  # the file is written once admitted; a row without it is ended at the next start
            run.request_path = self.requests.reference_for(run.task_id)
        task = NewTask(
            run.task_id, mode, request.prompt, request.aspect_ratio, len(request.references_b64),
            request.model, request.image_size, api=meta.api, output_format=request.output_format,
            idempotency_key=meta.idempotency_key, request_hash=digest, request_path=run.request_path,
            callback_url=meta.callback_url, after_task=request.after_task,
        )
        previous = self._settling.get(request.after_task) if request.after_task is not None else None
        if previous is not None and not behind_others:
            # a conversation's next turn sent at once: its account is still being released; it is free in a moment
            await asyncio.wait([previous], timeout=CONVERSATION_SETTLE_WAIT)
        # Instances that answered here a moment ago may not be released yet: before queueing, wait for that.
        settling = list(self._settling.values()) if not behind_others else []
        lease, snapshot, claimed = await self._try_admit(task, try_lease=not behind_others, may_queue=not settling)
        if lease is None and settling and snapshot is not None and not snapshot.empty:
            await asyncio.wait(settling)
            lease, snapshot, claimed = await self._try_admit(task, try_lease=True, may_queue=True)
        if lease is not None:
            return run, lease
        assert snapshot is not None
        self._capacity_hint = max(1, snapshot.servable)
        if snapshot.empty:
            raise self._no_instance(snapshot, request.model)
        if not claimed:
            raise self._queue_full()
        return run, None

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
            lease, snapshot = await self._ledger.admit(task, avoid=self._avoid.current(), try_lease=try_lease, may_queue=claim_place)
        finally:
            self._claimed -= claimed  # the caller enqueues it before its next await
        return lease, snapshot, claimed

    def _queue_room(self) -> int:
        return self._settings.queue_max - len(self._queue) - self._claimed

    def _queue_full(self) -> QueueFull:
        self._reject("queue_full")
        return QueueFull("queue_full", limit=self._settings.queue_max, headers=self._retry_after(self._estimate_wait()))

    def _no_instance(self, snapshot: PoolSnapshot, model: str) -> Unavailable | Exhausted:
        if snapshot.running == 0:
            self._reject("no_instance_running")
            return Unavailable("no_instance_running", headers=self._retry_after(30))
        if snapshot.logged_in == 0:
            self._reject("no_instance_logged_in")
            return Unavailable("no_instance_logged_in", running=snapshot.running, headers=self._retry_after(60))
        if snapshot.spent:
            return exhausted(snapshot, model, self.metrics)
        if snapshot.blocked:
            # Blocks last until a restart or a new session: an operator's move, not a short wait.
            self._reject("model_unavailable")
            return Unavailable("model_unavailable_everywhere", model=model, headers=self._retry_after(RETRY_AFTER_MAX))
        self._reject("no_instance_ready")
        return Unavailable("no_instance_logged_in", running=snapshot.running, headers=self._retry_after(30))

    async def _spent_until(self, model: str) -> PoolSnapshot | None:
        """The queue asks, when nothing was free for a model: the snapshot when the model is spent, else None."""
        snapshot = await self._ledger.snapshot(frozenset(), model)
        return snapshot if snapshot.spent else None

    # Background runs ---------------------------------------------------------------------------

    def _run_in_background(self, run: TaskRun, lease: Lease | None, waiter: Waiter | None) -> None:
        runner = asyncio.create_task(self._drive_in_background(run, lease, waiter), name=f"task-{run.task_id}")
        self._background.add(runner)
        self._runs[run.task_id] = (run, runner)
        runner.add_done_callback(self._background.discard)
        runner.add_done_callback(lambda _t: self._runs.pop(run.task_id, None))

    async def _drive_in_background(self, run: TaskRun, lease: Lease | None, waiter: Waiter | None) -> None:
        """An asynchronous task: once it ends, its kept inputs go and its webhook (written with its end) is sent."""
        try:
            await run.drive(lease, waiter)
        except asyncio.CancelledError:
            if not run.waiting and not run.disowned:
                await asyncio.shield(self.requests.remove(run.task_id, run.request_path))
            raise
        except Exception:  # nobody awaits this task: its failure must at least be logged
            log.exception("task %s failed in the gateway", run.task_id)
            return
        try:
            await self.requests.remove(run.task_id, run.request_path)
        except Exception as exc:  # noqa: BLE001 - an input row left behind is pruned; the webhook must still go
            log.warning("cannot remove the kept inputs of task %s: %s", run.task_id, str(exc).splitlines()[0][:200])
        if run.meta.callback_url:
            settling = self._settling.get(run.task_id)
            if settling is not None:
                await asyncio.wait([settling])  # the end's write, with the webhook's outbox row
            self.webhooks.wake()

    async def _lease_for(self, waiter: Waiter) -> Lease | None:
        return await self._ledger.lease_queued(waiter.task_id, waiter.exclude | self._avoid.current(), waiter.model,
                                               after=waiter.after_task)

    # Estimates and bookkeeping -------------------------------------------------------------------

    def _estimate_wait(self) -> float:
        return self._pace.typical * (len(self._queue) + 1) / max(1, self._capacity_hint)

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
            except Exception as exc:
                if not database_unreachable(exc):
                    log.exception("pruning results failed")
                else:
                    log.warning("pruning results waits for the database: %s", str(exc).splitlines()[0][:200])
            await asyncio.sleep(interval)

    async def prune_once(self, *, max_age: float | None = None) -> None:
        now = utcnow()
        renewed = await self._ledger.renew_allowances()
        if renewed:
            log.info("%d spent allowances came back at the day's reset", renewed)
            self._queue.wake()
        # The kept results themselves are pruned by the retention loop; here the rows forget them.
        expired = await self._ledger.expire_results(now - timedelta(seconds=self._settings.task_result_ttl))
        if expired:
            log.info("%d task results expired", expired)
        if max_age is not None:
            end = TaskEnd(TaskStatus.FAILED, outcomes.ABANDONED, "left unfinished by a gateway that stopped", 0, None, {})
            abandoned = await self._ledger.abandon_stale(now - timedelta(seconds=max_age), end)
            if abandoned:
                log.warning("marked %d abandoned tasks failed", abandoned)
        await self.owners.prune_inputs()


def _result_store(settings: DispatchSettings, engine: AsyncEngine) -> ResultStore:
    """GATEWAY_RESULT_STORE's store; the bucket's keeps what it cannot write in the data folder meanwhile."""
    if settings.result_store == "s3" and settings.result_s3 is not None:
        fallback = FileResultStore(Path(settings.data_dir) / "results", settings.task_result_ttl)
        return S3ResultStore(settings.result_s3, settings.task_result_ttl, fallback=fallback)
    return build_result_store(settings.result_store, engine, Path(settings.data_dir), settings.task_result_ttl)
