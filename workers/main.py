"""The worker process's entry point.

:func:`run` is the target of a process started with the ``spawn`` context. The
worker builds its own model from the :class:`WorkerSpec` it is given, announces
``Ready`` and then serves jobs from its pipe, one at a time, until the pipe
closes, a ``Shutdown`` arrives, or its parent dies.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from supervisor.protocol import (
    EXIT_BOOT_ERROR,
    EXIT_OK,
    EXIT_ORPHANED,
    BootFailed,
    Fault,
    Inject,
    Job,
    JobDone,
    JobFailed,
    JobStarted,
    Ready,
    Shutdown,
    WorkerSpec,
)
from workers import faults

if TYPE_CHECKING:
    from workers.engine import Engine

logger = logging.getLogger("asrpool.worker")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the supervisor dies, even while a
    native call holds the GIL and no Python thread can run."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # pragma: no cover
            pass


#: Thread pools of the native libraries under faster-whisper. Each reads its size
#: once, when it loads, so it must be set before numpy or onnxruntime is imported.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _limit_threads(threads: int) -> None:
    """Keep every library of this worker to its share of the cores.

    OpenBLAS (numpy's feature extraction) otherwise starts a thread per core in
    every worker; N workers then fight over the cores that CTranslate2's
    ``cpu_threads`` were sized for, and throughput drops (~10% with 2 workers on
    2 cores).
    """
    for name in THREAD_ENV:
        os.environ.setdefault(name, str(max(1, threads)))


def _setup_logging(spec: WorkerSpec) -> None:
    prefix = f"worker {spec.worker_id} pid {os.getpid()}"
    if spec.log_format == "json":
        fmt = ('{"time": "%(asctime)s", "level": "%(levelname)s", "logger": "%(name)s", '
               f'"worker": {spec.worker_id}, "pid": {os.getpid()}, "message": "%(message)s"}}')
    else:
        fmt = f"%(asctime)s %(levelname)s [{prefix}] %(message)s"
    logging.basicConfig(level=spec.log_level.upper(), format=fmt, stream=sys.stderr, force=True)
    if spec.log_level.upper() != "DEBUG":
        # One line per job is the supervisor's to write, not the library's.
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)


class PendingFaults:
    """Faults armed by the control thread for the next job. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def take(self) -> list[Fault]:
        with self._lock:
            taken, self._faults = self._faults, []
            return taken


def _control_loop(control: Connection, pending: PendingFaults) -> None:
    """The control thread: the lifeline to the supervisor, and faults to inject.

    EOF means the supervisor is gone (or dropped this worker): exit at once, even
    in the middle of a job, so no orphan keeps model memory.
    """
    while True:
        try:
            message = control.recv()
        except (EOFError, OSError):
            os._exit(EXIT_ORPHANED)
        if isinstance(message, Inject):
            fault = message.fault
            if fault.when == "now" and fault.kind not in ("raise", "slow"):
                logger.warning("injecting fault %s now", fault.kind)
                try:
                    faults.fire(fault)
                except BaseException:
                    logger.exception("fault %s failed", fault.kind)
            else:
                pending.add(fault)


class _Stop:
    """SIGTERM is a graceful stop: at once when idle, after the reply when busy.

    A service manager (systemd's default KillMode) or ``kill -TERM -PGID`` signals
    the whole process group; the job a worker holds must still reach its client.
    """

    busy = False
    requested = False

    @classmethod
    def on_sigterm(cls, signum: int, frame: object) -> None:
        if cls.busy:
            cls.requested = True
        else:
            os._exit(EXIT_OK)


def run(spec: WorkerSpec, conn: Connection, control: Connection) -> None:
    """Called when the child process starts."""
    # Ctrl-C in a terminal signals the whole process group: the supervisor decides
    # when workers stop, so they ignore SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _Stop.on_sigterm)
    _die_with_parent()
    _limit_threads(spec.cpu_threads)
    _setup_logging(spec)
    pending = PendingFaults()
    threading.Thread(target=_control_loop, args=(control, pending),
                     name="asrpool-control", daemon=True).start()

    try:
        from workers.engine import Engine

        engine = Engine(spec)
    except BaseException as exc:  # noqa: BLE001 - any failure to boot is a boot error
        message = f"cannot load model {spec.model_name!r} from {spec.model_path!r}: {exc}"
        logger.error("%s", message)
        try:
            conn.send(BootFailed(message))
        finally:
            os._exit(EXIT_BOOT_ERROR)

    logger.info("model %s loaded on %s (%s) in %.2fs", spec.model_name, engine.device,
                engine.compute_type, engine.load_seconds)
    conn.send(Ready(os.getpid(), engine.device, engine.compute_type, engine.load_seconds))

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            os._exit(EXIT_ORPHANED)
        if isinstance(message, Shutdown):
            logger.info("shutting down")
            conn.close()
            os._exit(EXIT_OK)
        if isinstance(message, Job):
            _Stop.busy = True
            payload = conn.recv_bytes()
            conn.send(_serve_job(engine, conn, message, payload, pending))
            _Stop.busy = False
            if _Stop.requested:
                logger.info("stopping after its job (SIGTERM)")
                os._exit(EXIT_OK)


def _serve_job(engine: Engine, conn: Connection, job: Job, payload: bytes,
               pending: PendingFaults) -> JobDone | JobFailed:
    """Run one job and build its reply. A Python exception fails only this job."""
    from workers.engine import AudioError, OptionsError

    armed = pending.take()
    if job.fault is not None:
        armed.append(job.fault)
    try:
        for fault in armed:
            if fault.when in ("next-job", "now"):
                faults.fire(fault)
        decoded = engine.decode(payload)
        # The supervisor rescales the job's deadline to the audio's length.
        conn.send(JobStarted(job.job_id, decoded.seconds, decoded.decode_seconds))
        during = [f for f in armed if f.when == "during-job"]
        started = time.monotonic()
        with _DuringJob(during):
            result = engine.run(job.task, decoded.audio, job.options)
        return JobDone(job.job_id, result, decoded.seconds, decoded.decode_seconds,
                       time.monotonic() - started)
    except AudioError as exc:
        return JobFailed(job.job_id, "bad_audio", str(exc), param="file")
    except OptionsError as exc:
        return JobFailed(job.job_id, "bad_options", str(exc), param=exc.param)
    except Exception as exc:  # noqa: BLE001 - one job fails, the worker serves on
        logger.error("job %s failed: %s", job.job_id, traceback.format_exc())
        return JobFailed(job.job_id, "internal", f"{type(exc).__name__}: {exc}")


class _DuringJob:
    """Fires armed ``during-job`` faults while the model runs.

    Process-killing kinds go off from a timer thread once the model is in native
    code; job-thread kinds (hang, raise, slow) run on entry. If the model finished
    before the timer, the fault fires on exit, so it always lands inside the job.
    """

    def __init__(self, armed: list[Fault]) -> None:
        self.armed = armed
        self.timed: list[faults.ArmedFault] = []

    def __enter__(self) -> None:
        for fault in self.armed:
            timed = faults.fire_during(fault)
            if timed is None:
                faults.fire(fault)
            else:
                self.timed.append(timed)

    def __exit__(self, *exc: object) -> None:
        for timed in self.timed:
            timed.settle()
