"""One worker process, seen from the parent: spawn, send, signal, notice its death.

A handle is a slot: when its process dies the pool respawns a new process in the
same handle (same id, new pid, ``restarts`` + 1). Everything here runs in the
parent, on the event loop thread; the loop watches the worker's pipe and its
process sentinel, so a death is seen the moment the kernel reaps it, not on a
polling timer.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import TYPE_CHECKING

from supervisor.protocol import (
    ExitInfo,
    Fault,
    Inject,
    Job,
    Shutdown,
    WorkerMessage,
    WorkerSpec,
    classify_exit,
)

if TYPE_CHECKING:
    from supervisor.dispatch import PendingJob

logger = logging.getLogger("asrpool.supervisor")


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    DRAINING = "draining"
    BACKOFF = "backoff"
    DEAD = "dead"


OnMessage = Callable[["WorkerHandle", WorkerMessage], None]
OnExit = Callable[["WorkerHandle", ExitInfo], None]


class WorkerHandle:
    """A worker slot. Called in the parent process only."""

    def __init__(self, worker_id: int, spec: WorkerSpec, ctx: SpawnContext,
                 on_message: OnMessage, on_exit: OnExit) -> None:
        self.id = worker_id
        self.spec = spec
        self.model = spec.model_name
        self._ctx = ctx
        self._on_message = on_message
        self._on_exit = on_exit
        self.state = WorkerState.STARTING
        self.process: SpawnProcess | None = None
        self.conn: Connection | None = None
        self.control: Connection | None = None
        self.pid: int | None = None
        self.device = spec.device
        self.started_at = 0.0  # wall clock of the current process's spawn
        self.ready_at: float | None = None
        self.booted = False
        #: Whether any process of this slot ever became ready.
        self.ever_booted = False
        #: The supervisor has sent this process a fatal signal: it takes no more jobs.
        self.doomed = False
        self.jobs_done = 0
        self.last_job_end = 0.0
        self.restarts = 0
        self.last_exit: str | None = None
        self.boot_error: str | None = None
        self.job: PendingJob | None = None
        self.job_started: float | None = None
        #: Death times (monotonic) and the fingerprint of the job they killed.
        self.deaths: list[tuple[float, str | None]] = []
        #: Set when the supervisor meant this process to die (stop, force, kill fault).
        self.stop_requested = False
        #: A fault aimed at this worker (not at an input) is armed or firing.
        self.fault_armed = False
        self.fault_armed_at = 0.0
        self.deadline_hit = False
        #: The slot ends for good when its process exits (drained, scaled down).
        self.retiring = False
        #: A replacement is booting; this worker serves until it is ready.
        self.replacing = False
        self.retire_reason = ""
        self.recycle_after = 0
        self.timer: asyncio.TimerHandle | None = None
        self.kill_on_next_job = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dying = False
        self.ready_waiter: asyncio.Future[bool] | None = None
        self.exited: asyncio.Event = asyncio.Event()

    def __repr__(self) -> str:
        return f"<worker {self.id} pid {self.pid} {self.model} {self.state.value}>"

    # ------------------------------------------------------------------ state

    def set_state(self, state: WorkerState, why: str = "") -> None:
        """The one place a state changes; every change is logged."""
        if state is self.state:
            return
        level = logging.DEBUG if {self.state, state} <= {WorkerState.READY, WorkerState.BUSY} \
            else logging.INFO
        logger.log(level, "worker %s pid %s (%s): %s -> %s%s", self.id, self.pid, self.model,
                   self.state.value, state.value, f" ({why})" if why else "")
        self.state = state

    @property
    def alive(self) -> bool:
        return self.process is not None and not self._dying

    @property
    def idle(self) -> bool:
        return self.state is WorkerState.READY and self.job is None and self.alive \
            and not self.doomed

    # ------------------------------------------------------------------ lifecycle

    def spawn(self) -> None:
        """Start a new process for this slot. Called in the parent."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        parent_control, child_control = self._ctx.Pipe(duplex=True)
        from workers.main import run

        process = self._ctx.Process(
            target=run, args=(self.spec, child_conn, child_control),
            name=f"asrpool-worker-{self.id}", daemon=True,
        )
        try:
            process.start()
        except BaseException:
            for conn in (parent_conn, child_conn, parent_control, child_control):
                conn.close()
            raise
        self.stop_requested = False
        self._dying = False
        self.doomed = False
        self.fault_armed = False
        self.deadline_hit = False
        self.booted = False
        self.ready_at = None
        self.exited = asyncio.Event()
        self.ready_waiter = loop.create_future()
        self.set_state(WorkerState.STARTING, "spawning")
        # The child holds its own copies now; ours would keep the pipe open after
        # the child died and hide the EOF.
        child_conn.close()
        child_control.close()
        self.process, self.conn, self.control = process, parent_conn, parent_control
        self.pid = process.pid
        self.started_at = time.time()
        loop.add_reader(parent_conn.fileno(), self._readable)
        loop.add_reader(process.sentinel, self._sentinel)
        logger.info("worker %s pid %s (%s): spawned", self.id, self.pid, self.model)

    def _readable(self) -> None:
        conn = self.conn
        if conn is None:
            return
        try:
            while conn.poll():
                message = conn.recv()
                self._on_message(self, message)
        except (EOFError, OSError):
            # The worker closed its end: it is exiting. The sentinel reports how.
            self._remove_reader(conn)

    def _remove_reader(self, conn: Connection) -> None:
        if self._loop is not None and not conn.closed:
            self._loop.remove_reader(conn.fileno())

    def _sentinel(self) -> None:
        process = self.process
        assert process is not None and self._loop is not None
        self._loop.remove_reader(process.sentinel)
        self._dying = True
        # Deliver what the worker wrote before it died (a reply sent just before an
        # exit must not be lost).
        self._readable()
        process.join(timeout=5)
        info = classify_exit(process.exitcode, booted=self.booted, requested=self.stop_requested)
        if self.conn is not None:
            self._remove_reader(self.conn)
            self.conn.close()
        if self.control is not None:
            self.control.close()
        self.conn = self.control = None
        process.close()
        self.process = None
        self.last_exit = info.reason
        self.exited.set()
        if self.ready_waiter is not None and not self.ready_waiter.done():
            self.ready_waiter.set_result(False)
        self._on_exit(self, info)

    # ------------------------------------------------------------------ messages

    def send_job(self, job: PendingJob) -> None:
        """Send a job header and its audio. The bytes go from a thread so a large
        upload never blocks the event loop."""
        assert self._loop is not None and self.conn is not None
        header = Job(job.job_id, job.task, job.options, len(job.payload), job.fault)
        conn = self.conn
        future = self._loop.run_in_executor(None, _send_job, conn, header, job.payload)
        future.add_done_callback(self._sent)

    def _sent(self, future: asyncio.Future[None]) -> None:
        exc = future.exception()
        if exc is not None:
            # The worker died under the send; its sentinel reports the death.
            logger.debug("worker %s pid %s: send failed: %s", self.id, self.pid, exc)

    def send_shutdown(self) -> None:
        if self.conn is None:
            return
        try:
            self.conn.send(Shutdown())
        except OSError:
            pass

    def inject(self, fault: Fault) -> bool:
        """Arm a fault inside the worker (over its control pipe)."""
        if self.control is None:
            return False
        try:
            self.control.send(Inject(fault))
        except OSError:
            return False
        self.fault_armed = True
        self.fault_armed_at = time.monotonic()
        return True

    def kill(self, sig: int = signal.SIGKILL) -> bool:
        """Signal the worker's process. False if it is already gone (ESRCH)."""
        if self.pid is None or self.process is None:
            return False
        try:
            os.kill(self.pid, sig)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return False
            raise
        return True

    def uptime(self) -> float:
        return time.time() - self.started_at if self.process is not None else 0.0

    def job_age(self) -> float | None:
        return time.monotonic() - self.job_started if self.job_started is not None else None


def _send_job(conn: Connection, header: Job, payload: bytes) -> None:
    """Called in an executor thread of the parent."""
    conn.send(header)
    conn.send_bytes(payload)
