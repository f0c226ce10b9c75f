"""The set of workers: spawn, dispatch, retry, respawn, restart, scale, stop.

Everything here runs in the parent on one asyncio event loop thread, so the
pool's state needs no locks. The gateway calls the coroutines below; it never
touches a process itself.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import random
import signal
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from supervisor import backoff
from supervisor.config import Config, ModelConfig, resolve_model_source
from supervisor.dispatch import (
    DeathCounts,
    Failure,
    JobQueue,
    PendingJob,
    Quarantine,
    QuarantineEntry,
    Verdict,
    describe_failures,
    fingerprint,
    judge,
)
from supervisor.errors import (
    BadInput,
    DeadlineExceeded,
    InputCrashedWorker,
    JobError,
    PoolError,
    QueueFull,
    Unavailable,
    UnknownModel,
)
from supervisor.protocol import (
    BootFailed,
    ExitInfo,
    Fault,
    JobDone,
    JobFailed,
    JobStarted,
    Ready,
    WorkerMessage,
    WorkerSpec,
)
from supervisor.worker_handle import WorkerHandle, WorkerState

logger = logging.getLogger("asrpool.supervisor")

#: Event names given to observers (the gateway's metrics).
Observer = Callable[[str, dict[str, Any]], None]


class BootError(RuntimeError):
    """A model has no worker that can load it: the server cannot start."""


class RestartFailed(RuntimeError):
    """A replacement worker did not become ready."""


@dataclass
class ModelSlot:
    """One served model: its config, its queue, its workers."""

    config: ModelConfig
    queue: JobQueue


class Pool:
    """The supervisor of every worker. Called in the parent, on the event loop."""

    def __init__(self, config: Config, *, observers: Iterable[Observer] = ()) -> None:
        self.config = config
        self._ctx = multiprocessing.get_context("spawn")
        self.models: dict[str, ModelSlot] = {
            m.name: ModelSlot(m, JobQueue(config.pool.queue_size)) for m in config.models
        }
        self.workers: dict[int, WorkerHandle] = {}
        self.quarantine = Quarantine(config.pool.quarantine_ttl)
        self.input_deaths = DeathCounts()
        self.observers: list[Observer] = list(observers)
        self.draining = False
        self.stopped = False
        #: Set (by a second Ctrl-C) to stop waiting for in-flight work.
        self.abort_wait = False
        self.started_at = time.time()
        self._next_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()  # set on every job end and worker exit
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ events

    def _emit(self, event: str, **data: Any) -> None:
        for observer in self.observers:
            try:
                observer(event, data)
            except Exception:  # an observer must never break supervision
                logger.exception("observer failed on %s", event)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _spawn_task(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ start

    async def start(self, *, wait: bool = True) -> None:
        """Spawn every configured worker. With ``wait``, return once each model has a
        ready worker; raise BootError if a model has none that can boot."""
        self._loop = asyncio.get_running_loop()
        for slot in self.models.values():
            for _ in range(slot.config.workers):
                self._add_worker(slot.config)
        if wait:
            await self.wait_ready(self.config.pool.boot_timeout)

    async def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            pending = []
            for name in self.models:
                handles = self.handles(name)
                if not handles:
                    continue
                if any(h.state in (WorkerState.READY, WorkerState.BUSY) for h in handles):
                    continue
                if all(h.boot_error for h in handles):
                    raise BootError(f"model {name!r}: {handles[0].boot_error}")
                pending.append(name)
            if not pending:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise BootError(f"no worker became ready within {timeout:g}s for "
                                f"{', '.join(pending)}")
            await self._wait_change(min(left, 0.5))

    def _spec(self, worker_id: int, model: ModelConfig) -> WorkerSpec:
        return WorkerSpec(
            worker_id=worker_id,
            model_name=model.name,
            model_path=resolve_model_source(model.source),
            device=model.device,
            device_index=model.device_index,
            compute_type=model.compute_type,
            cpu_threads=self.config.threads_for(model),
            max_audio_seconds=self.config.pool.max_audio_seconds,
            log_level=self.config.server.log_level.upper(),
            log_format=self.config.server.log_format,
        )

    def _add_worker(self, model: ModelConfig) -> WorkerHandle:
        worker_id = self._next_id
        self._next_id += 1
        handle = WorkerHandle(worker_id, self._spec(worker_id, model), self._ctx,
                              self._on_message, self._on_exit)
        self._set_recycle_after(handle)
        self.workers[worker_id] = handle
        self._spawn(handle)
        return handle

    def _set_recycle_after(self, handle: WorkerHandle) -> None:
        cfg = self.config.pool
        if cfg.max_jobs_per_worker:
            handle.recycle_after = cfg.max_jobs_per_worker + random.randint(0, cfg.max_jobs_jitter)

    def _spawn(self, handle: WorkerHandle) -> None:
        if self.stopped:
            return
        try:
            handle.spawn()
        except OSError as exc:
            # fork/exec can fail under the same memory pressure that kills workers:
            # count it as a death and back off, rather than lose the slot.
            logger.error("worker %s (%s): cannot start a process: %s", handle.id,
                         handle.model, exc)
            handle.last_exit = f"spawn failed: {exc.strerror or exc}"
            handle.deaths.append((time.monotonic(), None))
            handle.set_state(WorkerState.BACKOFF, "spawn failed")
            self._arm_timer(handle, max(self.config.pool.restart_backoff_base, 0.1),
                            self._respawn_after_backoff)
            return
        self._arm_timer(handle, self.config.pool.boot_timeout, self._boot_timed_out)

    def _boot_timed_out(self, handle: WorkerHandle) -> None:
        if handle.state is WorkerState.STARTING and handle.alive:
            logger.error("worker %s pid %s (%s): not ready after %gs, killing it", handle.id,
                         handle.pid, handle.model, self.config.pool.boot_timeout)
            handle.doomed = True
            handle.kill(signal.SIGKILL)

    def handles(self, model: str | None = None) -> list[WorkerHandle]:
        return [h for h in self.workers.values() if model is None or h.model == model]

    # ------------------------------------------------------------------ requests

    def resolve(self, name: str | None) -> ModelConfig:
        """The served model a request names (``None``: the default model)."""
        if not name:
            return self.config.default_model
        model = self.config.model(name)
        if model is None:
            raise UnknownModel(name, [n for m in self.config.models for n in m.names])
        return model

    async def submit(self, model: str, task: str, payload: bytes, options: dict[str, Any], *,
                     fault: Fault | None = None, request_id: str = "") -> tuple[JobDone,
                                                                               PendingJob]:
        """Run one job to its end: its result, or a PoolError saying why not."""
        slot = self.models[self.resolve(model).name]
        if self.draining or self.stopped:
            raise Unavailable("the server is draining and accepts no new requests",
                              retry_after=5)
        fp = fingerprint(payload, task, {**options, "fault": fault})
        entry = self.quarantine.get(fp)
        if entry is not None:
            raise quarantined_error(entry)
        handles = [h for h in self.handles(slot.config.name) if not h.retiring]
        if handles and all(h.boot_error for h in handles):
            raise Unavailable(f"model '{slot.config.name}' is unavailable: "
                              f"{handles[0].boot_error}")
        if not handles:
            raise Unavailable(f"model '{slot.config.name}' has no workers", retry_after=5)
        if slot.queue.full():
            raise QueueFull(slot.config.name, len(slot.queue), retry_after=1)
        assert self._loop is not None
        job = PendingJob(
            job_id=uuid.uuid4().hex[:12], model=slot.config.name, task=task, payload=payload,
            options=options, fingerprint=fp, future=self._loop.create_future(), fault=fault,
            request_id=request_id,
        )
        slot.queue.put(job)
        self._dispatch(slot)
        try:
            # shield: a caller that goes away must not cancel the pool's future.
            return await asyncio.shield(job.future), job
        finally:
            if not job.future.done():
                job.future.cancel()

    def _dispatch(self, slot: ModelSlot) -> None:
        """Give queued jobs to idle workers, oldest job first."""
        while len(slot.queue):
            idle = [h for h in self.handles(slot.config.name) if h.idle and not h.retiring]
            if not idle:
                return
            job = slot.queue.pop()
            if job is None:
                return
            if self._refuse_if_quarantined(job):
                continue
            self._assign(choose_worker(idle), job)

    def _refuse_queued(self, fp: str) -> None:
        for slot in self.models.values():
            for job in slot.queue.matching(fp):
                self._refuse_if_quarantined(job)

    def _refuse_if_quarantined(self, job: PendingJob) -> bool:
        """Copies of a poison input already queued (or retrying) must not run once it
        is quarantined: each would crash another worker."""
        entry = self.quarantine.get(job.fingerprint)
        if entry is None:
            return False
        if not job.done:
            job.future.set_exception(quarantined_error(entry))
        return True

    def _assign(self, handle: WorkerHandle, job: PendingJob) -> None:
        now = time.monotonic()
        job.attempt += 1
        job.worker_id = handle.id
        job.queue_wait += now - job.enqueued_at
        job.started_at = now
        handle.job = job
        handle.job_started = now
        handle.set_state(WorkerState.BUSY, f"job {job.job_id} attempt {job.attempt}")
        self._arm_timer(handle, self.config.pool.job_deadline_base, self._deadline_expired)
        handle.send_job(job)
        if handle.kill_on_next_job:
            handle.kill_on_next_job = False
            assert self._loop is not None
            self._loop.call_later(0.05, self._kill_injected, handle)

    def _arm_timer(self, handle: WorkerHandle, delay: float,
                   callback: Callable[[WorkerHandle], None]) -> None:
        if handle.timer is not None:
            handle.timer.cancel()
        assert self._loop is not None
        handle.timer = self._loop.call_later(max(0.0, delay), callback, handle)

    def _cancel_timer(self, handle: WorkerHandle) -> None:
        if handle.timer is not None:
            handle.timer.cancel()
            handle.timer = None

    def _deadline_expired(self, handle: WorkerHandle) -> None:
        """A job outlived its deadline: the worker is stuck where Python cannot reach
        (a native call), so only a signal ends it. SIGABRT first, for a core dump."""
        if handle.job is None or not handle.alive:
            return
        logger.error("worker %s pid %s (%s): job %s passed its deadline after %.1fs; "
                     "sending SIGABRT", handle.id, handle.pid, handle.model, handle.job.job_id,
                     handle.job_age() or 0.0)
        handle.deadline_hit = True
        handle.doomed = True
        handle.kill(signal.SIGABRT)
        self._arm_timer(handle, self.config.pool.kill_grace, self._kill_straggler)

    def _kill_straggler(self, handle: WorkerHandle) -> None:
        if handle.alive:
            logger.error("worker %s pid %s: still alive after %gs, sending SIGKILL",
                         handle.id, handle.pid, self.config.pool.kill_grace)
            handle.kill(signal.SIGKILL)

    def _kill_injected(self, handle: WorkerHandle) -> None:
        """The ``kill`` fault: SIGKILL as the OOM killer sends it, so it counts as a
        crash (restart intensity, metrics) but is not blamed on the job's input."""
        if handle.alive:
            handle.fault_armed = True
            handle.fault_armed_at = time.monotonic()
            handle.kill(signal.SIGKILL)

    # ------------------------------------------------------------------ worker events

    def _on_message(self, handle: WorkerHandle, message: WorkerMessage) -> None:
        if isinstance(message, Ready):
            if handle.doomed:
                return  # killed for its boot timeout; its Ready came too late
            self._cancel_timer(handle)
            handle.booted = True
            handle.ever_booted = True
            handle.ready_at = time.time()
            handle.device = message.device
            handle.set_state(WorkerState.READY, f"model loaded in {message.load_seconds:.2f}s "
                             f"on {message.device}/{message.compute_type}")
            if handle.ready_waiter is not None and not handle.ready_waiter.done():
                handle.ready_waiter.set_result(True)
            self._emit("worker_ready", model=handle.model, worker=handle.id)
            limit = self.config.pool.max_worker_rss_mb
            rss = worker_rss_mb(handle) if limit else None
            if rss is not None and rss > limit:
                logger.warning("worker %s pid %s: %.0f MB resident right after boot, over "
                               "max_worker_rss_mb = %d: it will be recycled after every job",
                               handle.id, handle.pid, rss, limit)
            self._after_idle(handle, after_job=False)
        elif isinstance(message, BootFailed):
            handle.boot_error = message.message
        elif isinstance(message, JobStarted):
            job = handle.job
            if job is not None and job.job_id == message.job_id and handle.job_started:
                cfg = self.config.pool
                deadline = cfg.job_deadline_base + cfg.job_deadline_per_audio_second \
                    * message.audio_seconds
                left = handle.job_started + deadline - time.monotonic()
                self._arm_timer(handle, left, self._deadline_expired)
        elif isinstance(message, (JobDone, JobFailed)):
            job = handle.job
            if job is None or job.job_id != message.job_id:
                logger.warning("worker %s pid %s: reply for unknown job %s", handle.id,
                               handle.pid, message.job_id)
                return
            if not handle.deadline_hit:
                # After a deadline the SIGKILL timer must stay: the worker is doomed.
                self._cancel_timer(handle)
            if handle.fault_armed and handle.job_started is not None \
                    and handle.fault_armed_at <= handle.job_started:
                # The worker lived through the faults armed before this job; a later
                # death is no longer theirs to excuse.
                handle.fault_armed = False
            handle.job = None
            handle.job_started = None
            handle.jobs_done += 1
            handle.last_job_end = time.monotonic()
            if isinstance(message, JobDone):
                self.input_deaths.forget(job.fingerprint)
            if not job.future.done():
                if isinstance(message, JobDone):
                    job.future.set_result(message)
                else:
                    job.future.set_exception(_job_failed_error(message))
            self._emit("job_finished", model=handle.model, worker=handle.id)
            self._notify()
            if handle.state is WorkerState.BUSY:
                handle.set_state(WorkerState.READY)
            self._after_idle(handle, after_job=True)

    def _after_idle(self, handle: WorkerHandle, after_job: bool = False) -> None:
        """A worker has no job: retire it, recycle it (only ever right after a job),
        or give it the next job."""
        if handle.retiring:
            handle.set_state(WorkerState.DRAINING, handle.retire_reason)
            handle.stop_requested = True
            handle.send_shutdown()
            self._arm_timer(handle, self.config.server.graceful_timeout, self._terminate)
            return
        reason = self._recycle_reason(handle) if after_job and not handle.replacing else ""
        if reason:
            self._spawn_task(self._recycle(handle, reason))
        slot = self.models.get(handle.model)
        if slot is not None:
            self._dispatch(slot)

    def _recycle_reason(self, handle: WorkerHandle) -> str:
        cfg = self.config.pool
        if handle.recycle_after and handle.jobs_done >= handle.recycle_after:
            return f"recycle: {handle.jobs_done} jobs"
        if cfg.max_worker_rss_mb:
            rss = worker_rss_mb(handle)
            if rss is not None and rss > cfg.max_worker_rss_mb:
                return f"recycle: rss {rss:.0f} MB > {cfg.max_worker_rss_mb} MB"
        return ""

    def _terminate(self, handle: WorkerHandle) -> None:
        if handle.alive:
            logger.warning("worker %s pid %s: did not exit when asked, sending SIGTERM",
                           handle.id, handle.pid)
            handle.kill(signal.SIGTERM)
            self._arm_timer(handle, self.config.pool.kill_grace, self._kill_straggler)

    def _on_exit(self, handle: WorkerHandle, info: ExitInfo) -> None:
        self._cancel_timer(handle)
        now = time.monotonic()
        injected = handle.fault_armed
        level = logging.ERROR if info.crashed else logging.INFO
        logger.log(level, "worker %s pid %s (%s): exited: %s", handle.id, handle.pid,
                   handle.model, "deadline (SIGABRT)" if handle.deadline_hit else info.reason)
        if handle.deadline_hit:
            handle.last_exit = f"deadline ({info.reason})"
        job = handle.job
        handle.job = None
        handle.job_started = None
        slot = self.models.get(handle.model)
        if info.boot_error:
            handle.boot_error = handle.boot_error or "the worker could not load its model"
        if info.crashed and not handle.retiring:
            handle.deaths.append((now, job.fingerprint if job is not None else None))
        if not handle.retiring and not self.stopped:
            reason = "deadline" if handle.deadline_hit else info.reason
            self._emit("worker_restart", model=handle.model, worker=handle.id,
                       reason="boot error" if info.boot_error else reason)
        if job is not None and not job.done:
            self._fail_attempt(job, handle, info, injected)
        self._notify()

        idle_drain = self.draining and slot is not None and not len(slot.queue)
        if handle.retiring or self.stopped or idle_drain:
            # Never respawn while stopping, nor while draining with nothing left to run.
            handle.set_state(WorkerState.DEAD, handle.retire_reason or "stopping")
            self.workers.pop(handle.id, None)
            self._fail_if_unservable(handle.model)
        elif info.boot_error and not handle.ever_booted:
            handle.set_state(WorkerState.DEAD, f"boot error, not restarting: {handle.boot_error}")
            self._fail_if_unservable(handle.model)
        else:
            # A slot that served before may fail a load for a passing reason (GPU memory,
            # a download): back off and try again rather than give up on it.
            self._schedule_respawn(handle)
        if slot is not None:
            self._dispatch(slot)

    def _fail_attempt(self, job: PendingJob, handle: WorkerHandle, info: ExitInfo,
                      injected: bool) -> None:
        reason = "deadline" if handle.deadline_hit else info.reason
        blamed = not injected and not (handle.stop_requested and not handle.deadline_hit)
        job.failures.append(Failure(reason, input_blamed=blamed))
        deaths = self.input_deaths.add(job.fingerprint) if blamed else 0
        verdict = judge(job.failures, self.config.pool.max_attempts, deaths)
        slot = self.models[job.model]
        if verdict is Verdict.RETRY and self._refuse_if_quarantined(job):
            return
        if verdict is Verdict.RETRY:
            logger.warning("job %s (request %s): worker %s died (%s) on attempt %d; retrying",
                           job.job_id, job.request_id, handle.id, reason, job.attempt)
            self._emit("job_retried", model=job.model, reason=reason)
            job.enqueued_at = time.monotonic()
            slot.queue.put_front(job)
            return
        message = describe_failures(job.failures)
        if verdict in (Verdict.POISON, Verdict.DEADLINE):
            # An input that hangs every worker is as poisonous as one that crashes it.
            self.quarantine.add(job.fingerprint, job.model, message)
            self.input_deaths.forget(job.fingerprint)
            self._refuse_queued(job.fingerprint)
            logger.error("job %s (request %s): %s; input %s quarantined for %gs", job.job_id,
                         job.request_id, message, job.fingerprint,
                         self.config.pool.quarantine_ttl)
            self._emit("quarantined", model=job.model)
        if verdict is Verdict.POISON:
            reasons = tuple(f.reason for f in job.failures)
            job.future.set_exception(InputCrashedWorker(message, reasons, job.fingerprint))
        elif verdict is Verdict.DEADLINE:
            job.future.set_exception(DeadlineExceeded(message))
        else:
            job.future.set_exception(Unavailable(message, retry_after=1))

    def _schedule_respawn(self, handle: WorkerHandle) -> None:
        cfg = self.config.pool
        now = time.monotonic()
        quarantined = {e.fingerprint for e in self.quarantine.entries()}
        recent = backoff.deaths_in_window(
            (t for t, fp in handle.deaths if fp is None or fp not in quarantined),
            now, cfg.restart_window,
        )
        handle.deaths = [(t, fp) for t, fp in handle.deaths if now - t <= cfg.restart_window]
        delay = backoff.restart_delay(recent, max_restarts=cfg.max_restarts,
                                      base=cfg.restart_backoff_base, cap=cfg.restart_backoff_cap)
        handle.restarts += 1
        if delay > 0:
            handle.set_state(WorkerState.BACKOFF, f"{recent} deaths in {cfg.restart_window:g}s, "
                             f"respawning in {delay:.1f}s")
            self._arm_timer(handle, delay, self._respawn_after_backoff)
        else:
            self._spawn(handle)

    def _respawn_after_backoff(self, handle: WorkerHandle) -> None:
        handle.timer = None
        if handle.state is WorkerState.BACKOFF and not handle.retiring and not self.stopped:
            self._spawn(handle)

    def _fail_if_unservable(self, model: str) -> None:
        """Fail the queued jobs of a model that no worker can serve any more (every
        worker failed to boot, or none is left), so no request waits forever."""
        handles = [h for h in self.handles(model) if not h.retiring]
        if handles and all(h.boot_error and not h.ever_booted for h in handles):
            error = Unavailable(f"model '{model}' is unavailable: {handles[0].boot_error}")
        elif not handles:
            error = Unavailable(f"model '{model}' has no workers", retry_after=5)
        else:
            return
        for job in self.models[model].queue.drain():
            if not job.done:
                job.future.set_exception(error)

    # ------------------------------------------------------------------ control

    async def _replace(self, old: WorkerHandle, reason: str) -> int | None:
        """Graceful replacement: the old worker keeps serving until the new one is
        ready, then finishes its job and stops. Returns the new worker's id."""
        if old.retiring or old.replacing:
            return None
        old.replacing = True
        model = self.models[old.model].config
        new = self._add_worker(model)
        logger.info("worker %s pid %s: replacing (%s) with worker %s", old.id, old.pid, reason,
                    new.id)
        try:
            ok = await self._wait_booted(new)
            if not ok:
                await self._retire(new, "replacement failed")
                raise RestartFailed(f"replacement for worker {old.id} did not become ready: "
                                    f"{new.boot_error or new.last_exit or 'timeout'}")
            await self._retire(old, reason)
            return new.id
        finally:
            old.replacing = False

    async def _recycle(self, handle: WorkerHandle, reason: str) -> None:
        self._emit("worker_restart", model=handle.model, worker=handle.id, reason="recycle")
        try:
            await self._replace(handle, reason)
        except RestartFailed as exc:
            logger.error("worker %s pid %s: recycling failed, it keeps serving: %s",
                         handle.id, handle.pid, exc)

    async def _wait_booted(self, handle: WorkerHandle) -> bool:
        waiter = handle.ready_waiter
        assert waiter is not None
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), self.config.pool.boot_timeout)
        except asyncio.TimeoutError:
            return False

    async def _retire(self, handle: WorkerHandle, reason: str) -> None:
        """Stop taking jobs on this worker, let it finish its job, then stop it."""
        handle.retiring = True
        handle.retire_reason = reason
        if handle.state is WorkerState.BACKOFF or not handle.alive:
            self._cancel_timer(handle)
            handle.set_state(WorkerState.DEAD, reason)
            self.workers.pop(handle.id, None)
            self._notify()
            return
        if handle.job is not None:
            handle.set_state(WorkerState.DRAINING, f"{reason}: finishing job {handle.job.job_id}")
        elif handle.state is WorkerState.STARTING:
            handle.stop_requested = True
            handle.kill(signal.SIGTERM)
        else:
            self._after_idle(handle)
        # A running job keeps its worker until the job ends or passes its own deadline
        # (which kills the worker); only then does graceful_timeout start.
        while handle.job is not None and not handle.exited.is_set():
            await self._wait_change(1.0)
        limit = self.config.server.graceful_timeout + 2 * self.config.pool.kill_grace + 5
        try:
            await asyncio.wait_for(handle.exited.wait(), limit)
        except asyncio.TimeoutError:
            handle.stop_requested = True  # our kill: a job on it is retried, not blamed
            handle.kill(signal.SIGKILL)
            await asyncio.wait_for(handle.exited.wait(), 10)

    def _select(self, ids: Iterable[int] | None) -> list[WorkerHandle]:
        if ids is None:
            return [h for h in self.handles() if not h.retiring]
        selected = []
        for worker_id in ids:
            if worker_id not in self.workers:
                raise KeyError(worker_id)
            selected.append(self.workers[worker_id])
        return selected

    async def restart(self, ids: Iterable[int] | None = None, *, force: bool = False) -> list[int]:
        """Restart workers (all when ``ids`` is None), one after another.

        Graceful: each replacement is ready before its predecessor drains, so no
        request fails. ``force`` kills at once; the job in flight is retried.
        Returns the ids of the workers now serving in their place.
        """
        replaced: list[int] = []
        for handle in self._select(ids):
            if handle.id not in self.workers or handle.retiring:
                continue
            if force:
                if handle.alive:
                    handle.stop_requested = True
                    handle.kill(signal.SIGKILL)
                    await handle.exited.wait()
                elif handle.state is WorkerState.BACKOFF:
                    self._cancel_timer(handle)
                    handle.boot_error = None
                    self._spawn(handle)
                elif handle.state is WorkerState.DEAD:
                    handle.boot_error = None
                    handle.restarts += 1
                    self._spawn(handle)
                if not await self._wait_booted(handle):
                    raise RestartFailed(f"worker {handle.id} did not come back: "
                                        f"{handle.boot_error or handle.last_exit}")
                replaced.append(handle.id)
            else:
                new_id = await self._replace(handle, "restart")
                if new_id is not None:
                    replaced.append(new_id)
        return replaced

    async def scale(self, model: str, n: int) -> dict[str, Any]:
        """Set a model's worker count; removed workers drain first."""
        config = self.resolve(model)
        current = [h for h in self.handles(config.name) if not h.retiring]
        if n > len(current):
            new = [self._add_worker(config) for _ in range(n - len(current))]
            results = await asyncio.gather(*(self._wait_booted(h) for h in new))
            if not all(results):
                failed = [h.id for h, ok in zip(new, results) if not ok]
                raise RestartFailed(f"new workers {failed} did not become ready")
        elif n < len(current):
            # Remove the ones doing least: not started, idle, then busy.
            order = {WorkerState.BACKOFF: 0, WorkerState.DEAD: 0, WorkerState.STARTING: 1,
                     WorkerState.READY: 2, WorkerState.BUSY: 3, WorkerState.DRAINING: 3}
            victims = sorted(current, key=lambda h: (order[h.state], -h.id))[: len(current) - n]
            for h in victims:
                h.retiring = True
            if n == 0:
                self._fail_if_unservable(config.name)
            await asyncio.gather(*(self._retire(h, "scaled down") for h in victims))
        return {"model": config.name,
                "workers": len([h for h in self.handles(config.name) if not h.retiring])}

    def inject(self, worker_id: int, fault: Fault) -> None:
        """Aim a fault at a worker (the crash-injection harness)."""
        handle = self.workers[worker_id]
        if not handle.alive:
            raise Unavailable(f"worker {worker_id} is {handle.state.value}, not running")
        logger.warning("worker %s pid %s: injecting %s (%s)", worker_id, handle.pid, fault.kind,
                       fault.when)
        self._emit("fault_injected", model=handle.model, kind=fault.kind)
        if fault.kind == "kill":
            if fault.when == "now" or handle.job is not None and fault.when == "during-job":
                self._kill_injected(handle)
            else:
                handle.kill_on_next_job = True
            return
        handle.inject(fault)

    def in_flight(self) -> int:
        """Jobs running on a worker for a caller who still waits."""
        return sum(1 for h in self.workers.values() if h.job is not None and not h.job.done)

    def queued(self) -> int:
        return sum(len(s.queue) for s in self.models.values())

    async def _wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while (self.in_flight() or self.queued()) and not self.abort_wait:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await self._wait_change(min(left, 0.5))
        return True

    async def drain(self, timeout: float | None = None) -> bool:
        """Accept nothing new, finish in-flight and queued work, stop every worker.
        Returns False if work was still running at the timeout (it was failed)."""
        self.draining = True
        timeout = self.config.server.graceful_timeout if timeout is None else timeout
        finished = await self._wait_idle(timeout)
        await self._stop_workers()
        return finished

    async def stop(self, graceful: bool = True) -> None:
        """Stop the pool: finish work (if graceful, within graceful_timeout), then
        SIGTERM every worker, reap, SIGKILL what is left."""
        if self.stopped:
            return
        self.draining = True
        if graceful and (self.in_flight() or self.queued()):
            logger.info("draining: waiting up to %gs for %d running and %d queued jobs",
                        self.config.server.graceful_timeout, self.in_flight(), self.queued())
            await self._wait_idle(self.config.server.graceful_timeout)
        await self._stop_workers()
        self.stopped = True
        for task in list(self._tasks):
            task.cancel()

    async def _stop_workers(self) -> None:
        """SIGTERM every idle worker (it exits at once), SIGKILL any still running an
        abandoned job (nobody waits for its answer), reap for ``kill_grace``, then
        SIGKILL what is left. Called once the waiting for work is over."""
        for slot in self.models.values():
            for queued in slot.queue.drain():
                if not queued.done:
                    queued.future.set_exception(Unavailable("the server is shutting down"))
        handles = list(self.workers.values())
        for handle in handles:
            self._cancel_timer(handle)
            handle.retiring = True
            handle.retire_reason = "stopping"
            job = handle.job
            if job is not None and not job.done:
                job.future.set_exception(Unavailable("the server is shutting down"))
            if handle.alive:
                handle.stop_requested = True
                handle.set_state(WorkerState.DRAINING, "stopping")
                handle.kill(signal.SIGKILL if job is not None else signal.SIGTERM)
            else:
                handle.set_state(WorkerState.DEAD, "stopped")
                self.workers.pop(handle.id, None)
        waits = [h.exited.wait() for h in handles if h.process is not None]
        if waits:
            _, pending = await asyncio.wait(
                [asyncio.ensure_future(w) for w in waits],
                timeout=self.config.pool.kill_grace + 1.0)
            for task in pending:
                task.cancel()
        for handle in handles:
            if handle.process is not None:
                logger.warning("worker %s pid %s: still alive, sending SIGKILL", handle.id,
                               handle.pid)
                handle.kill(signal.SIGKILL)
        left = [h.exited.wait() for h in handles if h.process is not None]
        if left:
            await asyncio.wait([asyncio.ensure_future(w) for w in left], timeout=5)

    # ------------------------------------------------------------------ views

    def ready(self) -> bool:
        """Every model has a worker that can take a job, and the pool accepts work."""
        if self.draining or self.stopped:
            return False
        serving = 0
        for name in self.models:
            handles = [h for h in self.handles(name) if not h.retiring]
            if not handles:
                continue  # scaled to zero on purpose: nothing to wait for
            if not any(h.state in (WorkerState.READY, WorkerState.BUSY) for h in handles):
                return False
            serving += 1
        return serving > 0

    def status(self) -> dict[str, Any]:
        workers = []
        for h in sorted(self.workers.values(), key=lambda h: h.id):
            age = h.job_age()
            workers.append({
                "id": h.id,
                "pid": h.pid if h.alive else None,
                "model": h.model,
                "device": h.device,
                "state": h.state.value,
                "uptime": round(h.uptime(), 1),
                "jobs_done": h.jobs_done,
                "restarts": h.restarts,
                "last_exit": h.last_exit,
                "boot_error": h.boot_error,
                "rss_mb": worker_rss_mb(h),
                "job_age": round(age, 2) if age is not None else None,
                "retiring": h.retiring,
            })
        return {
            "ready": self.ready(),
            "draining": self.draining,
            "uptime": round(time.time() - self.started_at, 1),
            "workers": workers,
            "queue_depth": self.queued(),
            "queues": {name: len(s.queue) for name, s in self.models.items()},
            "in_flight": self.in_flight(),
            "quarantined": [
                {"fingerprint": e.fingerprint, "model": e.model, "reason": e.reason,
                 "expires_in": round(e.until - time.monotonic(), 1)}
                for e in self.quarantine.entries()
            ],
        }


def quarantined_error(entry: QuarantineEntry) -> InputCrashedWorker:
    """The refusal of a quarantined input, before or after it was queued."""
    return InputCrashedWorker(
        f"this input is quarantined: it crashed every worker it ran on ({entry.reason})",
        (entry.reason,), entry.fingerprint)


def choose_worker(idle: list[WorkerHandle]) -> WorkerHandle:
    """The idle worker that finished a job most recently. Pure.

    Under load every worker is busy and the choice does not matter; at low load,
    reusing the warm worker keeps its model in the CPU caches, where rotating
    through workers made each request pay for cold memory.
    """
    return max(idle, key=lambda h: (h.last_job_end, -h.id))


def worker_rss_mb(handle: WorkerHandle) -> float | None:
    """Resident memory of a worker's process in MB, or None when it is not running."""
    if not handle.alive or handle.pid is None:
        return None
    import psutil

    try:
        rss: int = psutil.Process(handle.pid).memory_info().rss
        return round(rss / (1024 * 1024), 1)
    except psutil.Error:
        return None


def _job_failed_error(message: JobFailed) -> PoolError:
    if message.kind == "bad_audio":
        return BadInput(message.message, param=message.param or "file", code="invalid_audio")
    if message.kind == "bad_options":
        return BadInput(message.message, param=message.param, code="invalid_parameter")
    return JobError(f"the worker failed to run the job: {message.message}")
