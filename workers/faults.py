"""Crash injection: real faults, raised inside the worker process.

Every kind here does what the fault it stands for does to a process:
``segv`` reads address 0 through ctypes (the kernel sends a true SIGSEGV),
``abort`` calls libc ``abort()`` (SIGABRT, as a failed CUDA/cuDNN assert does),
``hang`` blocks in a C call that holds the GIL, out of Python's reach, so only a
signal ends it. ``kill`` is done by the supervisor (it stands for the OOM killer)
and never reaches this module.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

from supervisor.protocol import Fault

#: Memory held by ``leak`` faults, so that it stays resident.
_leaked: list[bytearray] = []


class InjectedError(RuntimeError):
    """The Python exception a ``raise`` fault throws inside a job."""


def segv() -> None:
    ctypes.string_at(0)


def abort() -> None:
    ctypes.CDLL(None).abort()


def hang() -> None:
    # pause() through PyDLL keeps the GIL: every Python thread of the worker stops,
    # as in a deadlocked native call. Only a signal (the job deadline) ends it.
    pause = ctypes.PyDLL(None).pause
    while True:
        pause()


def leak(megabytes: float) -> None:
    block = bytearray(int(megabytes * 1024 * 1024))
    # Touch every page so the memory is resident, not just reserved.
    for i in range(0, len(block), 4096):
        block[i] = 1
    _leaked.append(block)


def fire(fault: Fault) -> None:
    """Run a fault on the calling thread. Called in the worker process."""
    kind = fault.kind
    if kind == "segv":
        segv()
    elif kind == "abort":
        abort()
    elif kind == "exit":
        os._exit(int(fault.arg) or 1)
    elif kind == "hang":
        hang()
    elif kind == "raise":
        raise InjectedError("injected fault: raise")
    elif kind == "slow":
        time.sleep(fault.arg or 1.0)
    elif kind == "leak":
        leak(fault.arg or 100.0)
    else:
        raise ValueError(f"fault kind {kind!r} cannot run inside a worker")


#: Kinds that must run on the job's own thread (they hold or fail the job);
#: the others kill the whole process from any thread.
ON_JOB_THREAD = ("hang", "raise", "slow")


class ArmedFault:
    """A process-killing fault set to go off from a timer thread while the model
    runs in native code."""

    def __init__(self, fault: Fault, delay: float = 0.05) -> None:
        self.fault = fault
        self.began = threading.Event()
        self._timer = threading.Timer(delay, self._go)
        self._timer.daemon = True
        self._timer.start()

    def _go(self) -> None:
        self.began.set()
        fire(self.fault)

    def settle(self) -> None:
        """Called when the model is done: if the timer has not begun (a short job),
        fire now, so the fault still lands inside the job."""
        self._timer.cancel()
        self._timer.join()
        if not self.began.is_set():
            fire(self.fault)


def fire_during(fault: Fault) -> ArmedFault | None:
    """Arm a process-killing fault to go off while the model runs; None when the
    fault must run on the job thread (the caller runs it before the model)."""
    if fault.kind in ON_JOB_THREAD:
        return None
    return ArmedFault(fault)
