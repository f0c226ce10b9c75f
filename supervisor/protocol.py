"""What crosses the pipe between the supervisor and a worker, and the exit codes.

Messages are small frozen dataclasses sent with ``Connection.send`` (pickle).
The audio of a job is never inside one: it follows its :class:`Job` header as raw
bytes (``Connection.send_bytes``), so a 25 MB upload is not copied into a pickle.
Both sides import this module; it imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Exit codes of a worker process. Codes under 0 are signals (multiprocessing's
# convention: -11 is SIGSEGV).
EXIT_OK = 0
#: The worker could not load its model; the supervisor does not respawn it.
EXIT_BOOT_ERROR = 3
#: The supervisor went away (pipe closed); nobody is left to answer.
EXIT_ORPHANED = 4

TASKS = ("transcribe", "translate", "timestamps")

# Fault kinds and injection points (see workers/faults.py).
FAULT_KINDS = ("segv", "abort", "exit", "hang", "raise", "slow", "leak", "kill")
FAULT_WHEN = ("now", "next-job", "during-job")


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to build itself. Plain values only: it is pickled
    into the child at spawn, which builds its own model from it."""

    worker_id: int
    model_name: str
    model_path: str
    device: str
    device_index: tuple[int, ...]
    compute_type: str
    cpu_threads: int
    max_audio_seconds: float
    log_level: str = "INFO"
    log_format: str = "text"


@dataclass(frozen=True)
class Fault:
    """A fault to inject: ``kind`` from FAULT_KINDS; ``arg`` is the exit code for
    ``exit``, seconds for ``slow``, megabytes for ``leak``."""

    kind: str
    when: str = "next-job"
    arg: float = 0.0


# ----------------------------------------------------------------- parent -> worker


@dataclass(frozen=True)
class Job:
    """A job header; the audio bytes follow it on the pipe."""

    job_id: str
    task: str
    options: dict[str, Any]
    size: int
    fault: Fault | None = None


@dataclass(frozen=True)
class Shutdown:
    """Finish nothing more: exit cleanly (sent only to an idle worker)."""


@dataclass(frozen=True)
class Inject:
    """Control channel: run this fault now, from the worker's control thread."""

    fault: Fault


# ----------------------------------------------------------------- worker -> parent


@dataclass(frozen=True)
class Ready:
    pid: int
    device: str
    compute_type: str
    load_seconds: float


@dataclass(frozen=True)
class BootFailed:
    message: str


@dataclass(frozen=True)
class JobStarted:
    """Sent once the audio is decoded: the supervisor rescales the job's deadline."""

    job_id: str
    audio_seconds: float
    decode_seconds: float


@dataclass(frozen=True)
class JobDone:
    job_id: str
    result: dict[str, Any]
    audio_seconds: float
    decode_seconds: float
    inference_seconds: float


@dataclass(frozen=True)
class JobFailed:
    """A Python-level failure of one job; the worker keeps serving.

    ``kind`` is ``bad_audio`` (undecodable, empty, too long), ``bad_options``
    or ``internal``.
    """

    job_id: str
    kind: str
    message: str
    param: str | None = None


WorkerMessage = Ready | BootFailed | JobStarted | JobDone | JobFailed


# ----------------------------------------------------------------- exit classification


@dataclass(frozen=True)
class ExitInfo:
    """How a worker process ended, in words an operator reads."""

    exitcode: int | None
    reason: str
    #: True for deaths that are a fault: a signal other than SIGTERM/SIGINT, or a
    #: non-zero exit code that was not asked for.
    crashed: bool
    boot_error: bool = False


def classify_exit(exitcode: int | None, *, booted: bool, requested: bool = False) -> ExitInfo:
    """Name a worker's exit. Pure: ``exitcode`` as multiprocessing reports it.

    ``booted`` says whether the worker had announced Ready; ``requested`` whether
    the supervisor asked it to stop (then SIGTERM/SIGKILL/0 are no crash).
    """
    import signal

    if exitcode is None:
        return ExitInfo(None, "unknown", crashed=True)
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        polite = name in ("SIGTERM", "SIGINT") or (requested and name == "SIGKILL")
        return ExitInfo(exitcode, name, crashed=not polite)
    if exitcode == EXIT_OK:
        return ExitInfo(0, "exit 0", crashed=not requested)
    if exitcode == EXIT_BOOT_ERROR and not booted:
        return ExitInfo(exitcode, "boot error", crashed=True, boot_error=True)
    if exitcode == EXIT_ORPHANED:
        return ExitInfo(exitcode, "orphaned", crashed=not requested)
    return ExitInfo(exitcode, f"exit {exitcode}", crashed=True)
