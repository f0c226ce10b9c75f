"""Jobs on the supervisor's side, the retry and quarantine policy, and the queue.

The policy functions are pure (plain values and a clock in, a decision out) and
are tested table-driven without processes.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from supervisor.protocol import Fault, JobDone

#: Deaths the supervisor caused itself (a forced restart, an injected fault aimed
#: at a worker) are retried without using the job's attempts, up to this many
#: attempts in all, so no job can loop forever.
HARD_ATTEMPT_CAP = 10


@dataclass(frozen=True)
class Failure:
    """One attempt of a job that ended with its worker dead."""

    reason: str  # "SIGSEGV", "exit 1", "deadline", ...
    #: True when the input is to blame (as far as the supervisor knows); False when
    #: the supervisor itself killed the worker or a fault was aimed at the worker.
    input_blamed: bool = True


@dataclass(eq=False)
class PendingJob:
    """A job between its acceptance and its answer. Lives in the parent."""

    job_id: str
    model: str
    task: str
    payload: bytes
    options: dict[str, Any]
    fingerprint: str
    future: asyncio.Future[JobDone]
    fault: Fault | None = None
    request_id: str = ""
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    failures: list[Failure] = field(default_factory=list)
    #: Time spent waiting in the queue, summed over attempts.
    queue_wait: float = 0.0
    worker_id: int | None = None
    attempt: int = 0

    @property
    def done(self) -> bool:
        return self.future.done()


def fingerprint(payload: bytes, task: str, options: dict[str, Any]) -> str:
    """The identity of an input: its bytes and every option that shapes decoding."""
    digest = hashlib.sha256(payload)
    digest.update(b"\0" + task.encode() + b"\0")
    digest.update(json.dumps(options, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


class Verdict(enum.Enum):
    RETRY = "retry"
    #: The input killed ``max_attempts`` workers: fail it and quarantine it.
    POISON = "poison"
    #: Every attempt hung past its deadline.
    DEADLINE = "deadline"
    #: Out of attempts, but not the input's fault (workers were killed under it).
    GIVE_UP = "give_up"


def judge(failures: list[Failure], max_attempts: int, input_deaths: int = 0) -> Verdict:
    """Decide what follows a worker's death under a job. Pure.

    ``input_deaths`` counts the workers that died running this input in any
    request (copies of one poison file sent at once share the count), this one
    included; by default the job's own blamed failures.

    >>> judge([Failure("SIGSEGV")], 3)
    <Verdict.RETRY: 'retry'>
    >>> judge([Failure("SIGSEGV")] * 3, 3)
    <Verdict.POISON: 'poison'>
    >>> judge([Failure("SIGSEGV")], 3, input_deaths=3)
    <Verdict.POISON: 'poison'>
    """
    blamed = [f for f in failures if f.input_blamed]
    if max(len(blamed), input_deaths) >= max_attempts and blamed:
        if all(f.reason == "deadline" for f in blamed):
            return Verdict.DEADLINE
        return Verdict.POISON
    if len(failures) >= HARD_ATTEMPT_CAP:
        return Verdict.GIVE_UP
    return Verdict.RETRY


def describe_failures(failures: list[Failure]) -> str:
    """``worker crashed (SIGSEGV) on 3 attempts`` / ``(SIGSEGV, SIGABRT)``."""
    reasons: list[str] = []
    for f in failures:
        if f.reason not in reasons:
            reasons.append(f.reason)
    n = len(failures)
    if reasons == ["deadline"]:
        return f"job exceeded its deadline on {n} attempt{'s' if n != 1 else ''}"
    return f"worker crashed ({', '.join(reasons)}) on {n} attempt{'s' if n != 1 else ''}"


@dataclass(frozen=True)
class QuarantineEntry:
    fingerprint: str
    model: str
    reason: str
    since: float
    until: float


class Quarantine:
    """Inputs that crashed every worker they touched, refused until their TTL ends."""

    def __init__(self, ttl: float, now: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._now = now
        self._entries: dict[str, QuarantineEntry] = {}

    def add(self, fp: str, model: str, reason: str) -> QuarantineEntry:
        now = self._now()
        entry = QuarantineEntry(fp, model, reason, now, now + self.ttl)
        self._entries[fp] = entry
        return entry

    def get(self, fp: str) -> QuarantineEntry | None:
        entry = self._entries.get(fp)
        if entry is not None and entry.until <= self._now():
            del self._entries[fp]
            return None
        return entry

    def entries(self) -> list[QuarantineEntry]:
        now = self._now()
        for fp in [fp for fp, e in self._entries.items() if e.until <= now]:
            del self._entries[fp]
        return list(self._entries.values())

    def clear(self) -> int:
        n = len(self._entries)
        self._entries.clear()
        return n


class DeathCounts:
    """Workers that died running each input fingerprint, across requests. Bounded:
    the oldest entries go first; a success forgets the input."""

    def __init__(self, limit: int = 10000) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def add(self, fp: str) -> int:
        count = self._counts.pop(fp, 0) + 1
        self._counts[fp] = count  # re-insert: most recent last
        while len(self._counts) > self.limit:
            del self._counts[next(iter(self._counts))]
        return count

    def forget(self, fp: str) -> None:
        self._counts.pop(fp, None)

    def __len__(self) -> int:
        return len(self._counts)


class JobQueue:
    """A bounded FIFO; a retried job goes back to the head."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[PendingJob] = deque()

    def __len__(self) -> int:
        self._purge()
        return len(self._items)

    def full(self) -> bool:
        return len(self) >= self.maxsize

    def _purge(self) -> None:
        """Forget jobs whose caller gave up: they hold no place in the queue."""
        if any(job.done for job in self._items):
            self._items = deque(job for job in self._items if not job.done)

    def put(self, job: PendingJob) -> None:
        self._items.append(job)

    def put_front(self, job: PendingJob) -> None:
        # A retry was already accepted: it may exceed maxsize rather than be lost.
        self._items.appendleft(job)

    def pop(self) -> PendingJob | None:
        while self._items:
            job = self._items.popleft()
            if not job.done:  # skip jobs whose caller gave up
                return job
        return None

    def matching(self, fp: str) -> list[PendingJob]:
        return [job for job in self._items if job.fingerprint == fp]

    def drain(self) -> list[PendingJob]:
        items = list(self._items)
        self._items.clear()
        return items
