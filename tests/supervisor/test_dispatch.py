"""supervisor/dispatch.py: the retry policy, fingerprints, quarantine and the queue."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from supervisor.dispatch import (
    HARD_ATTEMPT_CAP,
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
from supervisor.protocol import JobDone

SEGV = Failure("SIGSEGV")
ABRT = Failure("SIGABRT")
DEADLINE = Failure("deadline")
KILLED = Failure("SIGKILL", input_blamed=False)
UNBLAMED_DEADLINE = Failure("deadline", input_blamed=False)


# --------------------------------------------------------------------------- judge


@pytest.mark.parametrize(
    ("failures", "max_attempts", "expected"),
    [
        ([SEGV], 3, Verdict.RETRY),
        ([SEGV, SEGV], 3, Verdict.RETRY),
        ([SEGV, SEGV, SEGV], 3, Verdict.POISON),
        ([SEGV, ABRT, SEGV], 3, Verdict.POISON),
        ([SEGV], 1, Verdict.POISON),
        ([SEGV, SEGV, SEGV, SEGV], 3, Verdict.POISON),
        ([DEADLINE], 3, Verdict.RETRY),
        ([DEADLINE, DEADLINE], 2, Verdict.DEADLINE),
        ([DEADLINE, DEADLINE, DEADLINE], 3, Verdict.DEADLINE),
        ([DEADLINE], 1, Verdict.DEADLINE),
        ([DEADLINE, SEGV, DEADLINE], 3, Verdict.POISON),  # mixed: the input crashed one
        # Unblamed failures do not use up the job's attempts...
        ([KILLED], 1, Verdict.RETRY),
        ([KILLED, KILLED, SEGV], 3, Verdict.RETRY),
        ([KILLED, SEGV, KILLED, SEGV, SEGV], 3, Verdict.POISON),
        ([UNBLAMED_DEADLINE, DEADLINE, DEADLINE], 2, Verdict.DEADLINE),
        # ... and an unblamed deadline does not make a crash a deadline either.
        ([UNBLAMED_DEADLINE, SEGV, SEGV], 2, Verdict.POISON),
        # ... up to the hard cap on attempts.
        ([KILLED] * (HARD_ATTEMPT_CAP - 1), 3, Verdict.RETRY),
        ([KILLED] * HARD_ATTEMPT_CAP, 3, Verdict.GIVE_UP),
        ([KILLED] * (HARD_ATTEMPT_CAP - 2) + [SEGV, SEGV], 3, Verdict.GIVE_UP),
        ([KILLED] * (HARD_ATTEMPT_CAP + 5), 3, Verdict.GIVE_UP),
        # Reaching max_attempts blamed failures wins over the cap.
        ([KILLED] * (HARD_ATTEMPT_CAP - 3) + [SEGV] * 3, 3, Verdict.POISON),
        ([KILLED] * (HARD_ATTEMPT_CAP - 2) + [DEADLINE] * 2, 2, Verdict.DEADLINE),
    ],
)
def test_judge(failures: list[Failure], max_attempts: int, expected: Verdict) -> None:
    assert judge(failures, max_attempts) is expected


def test_hard_attempt_cap_value() -> None:
    assert HARD_ATTEMPT_CAP == 10


def test_failure_defaults_to_input_blamed() -> None:
    assert Failure("exit 1").input_blamed is True


# --------------------------------------------------------------------------- describe


@pytest.mark.parametrize(
    ("failures", "expected"),
    [
        ([SEGV] * 3, "worker crashed (SIGSEGV) on 3 attempts"),
        ([SEGV], "worker crashed (SIGSEGV) on 1 attempt"),
        ([SEGV, ABRT, SEGV], "worker crashed (SIGSEGV, SIGABRT) on 3 attempts"),
        ([ABRT, SEGV], "worker crashed (SIGABRT, SIGSEGV) on 2 attempts"),
        ([DEADLINE, DEADLINE], "job exceeded its deadline on 2 attempts"),
        ([DEADLINE], "job exceeded its deadline on 1 attempt"),
        ([DEADLINE, SEGV], "worker crashed (deadline, SIGSEGV) on 2 attempts"),
        ([Failure("exit 1")] * 2, "worker crashed (exit 1) on 2 attempts"),
        ([KILLED, SEGV], "worker crashed (SIGKILL, SIGSEGV) on 2 attempts"),
    ],
)
def test_describe_failures(failures: list[Failure], expected: str) -> None:
    assert describe_failures(failures) == expected


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable() -> None:
    a = fingerprint(b"RIFF....", "transcribe", {"language": "en", "beam_size": 5})
    b = fingerprint(b"RIFF....", "transcribe", {"language": "en", "beam_size": 5})
    assert a == b
    assert isinstance(a, str)
    assert len(a) == 32
    int(a, 16)  # hexadecimal


def test_fingerprint_ignores_key_order() -> None:
    options_a: dict[str, Any] = {"language": "en", "beam_size": 5, "vad": {"x": 1, "y": 2}}
    options_b: dict[str, Any] = {"vad": {"y": 2, "x": 1}, "beam_size": 5, "language": "en"}
    assert fingerprint(b"abc", "transcribe", options_a) == fingerprint(
        b"abc", "transcribe", options_b)


@pytest.mark.parametrize(
    ("payload", "task", "options"),
    [
        (b"abd", "transcribe", {"language": "en"}),  # other bytes
        (b"abc", "translate", {"language": "en"}),  # other task
        (b"abc", "transcribe", {"language": "de"}),  # other option value
        (b"abc", "transcribe", {"language": "en", "beam_size": 5}),  # extra option
        (b"abc", "transcribe", {}),  # no options
        (b"abc\0", "transcribe", {"language": "en"}),
    ],
)
def test_fingerprint_differs(payload: bytes, task: str, options: dict[str, Any]) -> None:
    assert fingerprint(payload, task, options) != fingerprint(
        b"abc", "transcribe", {"language": "en"})


def test_fingerprint_of_float_options() -> None:
    assert fingerprint(b"x", "transcribe", {"temperature": 0.0}) != fingerprint(
        b"x", "transcribe", {"temperature": 0.2})


# --------------------------------------------------------------------------- quarantine


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_quarantine_add_and_get() -> None:
    clock = FakeClock()
    q = Quarantine(ttl=60.0, now=clock)
    entry = q.add("fp1", "tiny.en", "worker crashed (SIGSEGV) on 3 attempts")
    assert entry == QuarantineEntry("fp1", "tiny.en", "worker crashed (SIGSEGV) on 3 attempts",
                                    1000.0, 1060.0)
    assert q.get("fp1") == entry
    assert q.get("other") is None
    assert q.entries() == [entry]


def test_quarantine_expiry() -> None:
    clock = FakeClock()
    q = Quarantine(ttl=60.0, now=clock)
    entry = q.add("fp1", "tiny.en", "r")
    clock.now = 1059.999
    assert q.get("fp1") == entry
    clock.now = 1060.0  # until is exclusive
    assert q.get("fp1") is None
    assert q.entries() == []
    # It was removed, not only hidden: going back in time does not revive it.
    clock.now = 1000.0
    assert q.get("fp1") is None


def test_quarantine_entries_drop_expired() -> None:
    clock = FakeClock()
    q = Quarantine(ttl=10.0, now=clock)
    first = q.add("a", "m", "r")
    clock.now += 5
    second = q.add("b", "m", "r")
    assert q.entries() == [first, second]
    clock.now += 5  # "a" expires now, "b" has 5 s left
    assert q.entries() == [second]
    assert q.get("a") is None
    assert q.get("b") == second
    clock.now += 5
    assert q.entries() == []


def test_quarantine_add_again_refreshes() -> None:
    clock = FakeClock()
    q = Quarantine(ttl=10.0, now=clock)
    q.add("a", "m", "old")
    clock.now += 8
    renewed = q.add("a", "m", "new")
    assert renewed.until == clock.now + 10
    clock.now += 5
    entry = q.get("a")
    assert entry is not None
    assert entry.reason == "new"
    assert len(q.entries()) == 1


def test_quarantine_clear() -> None:
    clock = FakeClock()
    q = Quarantine(ttl=10.0, now=clock)
    q.add("a", "m", "r")
    q.add("b", "m", "r")
    assert q.clear() == 2
    assert q.get("a") is None
    assert q.entries() == []
    assert q.clear() == 0


# --------------------------------------------------------------------------- queue


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


def make_job(loop: asyncio.AbstractEventLoop, job_id: str) -> PendingJob:
    future: asyncio.Future[JobDone] = loop.create_future()
    return PendingJob(job_id=job_id, model="tiny.en", task="transcribe", payload=b"x",
                      options={}, fingerprint="fp-" + job_id, future=future)


def test_queue_fifo(loop: asyncio.AbstractEventLoop) -> None:
    q = JobQueue(maxsize=10)
    jobs = [make_job(loop, str(i)) for i in range(4)]
    for job in jobs:
        q.put(job)
    assert len(q) == 4
    assert [q.pop() for _ in range(4)] == jobs
    assert len(q) == 0
    assert q.pop() is None


def test_queue_put_front(loop: asyncio.AbstractEventLoop) -> None:
    q = JobQueue(maxsize=10)
    a, b, retry = make_job(loop, "a"), make_job(loop, "b"), make_job(loop, "retry")
    q.put(a)
    q.put(b)
    q.put_front(retry)
    assert q.pop() is retry
    assert q.pop() is a
    assert q.pop() is b


def test_queue_full(loop: asyncio.AbstractEventLoop) -> None:
    q = JobQueue(maxsize=2)
    assert not q.full()
    q.put(make_job(loop, "a"))
    assert not q.full()
    q.put(make_job(loop, "b"))
    assert q.full()
    # A retry may go past maxsize rather than be lost.
    retry = make_job(loop, "retry")
    q.put_front(retry)
    assert len(q) == 3
    assert q.full()
    assert q.pop() is retry
    q.pop()
    assert not q.full()


def test_queue_pop_skips_done_jobs(loop: asyncio.AbstractEventLoop) -> None:
    q = JobQueue(maxsize=10)
    cancelled, answered, live, also_cancelled = (
        make_job(loop, "c"), make_job(loop, "d"), make_job(loop, "live"), make_job(loop, "c2"))
    for job in (cancelled, answered, live, also_cancelled):
        q.put(job)
    cancelled.future.cancel()
    answered.future.set_exception(RuntimeError("caller gave up"))
    also_cancelled.future.cancel()
    assert cancelled.done and answered.done and not live.done
    assert q.pop() is live
    assert q.pop() is None
    assert len(q) == 0
    answered.future.exception()  # retrieved: no "exception never retrieved" warning


def test_queue_drain(loop: asyncio.AbstractEventLoop) -> None:
    q = JobQueue(maxsize=10)
    jobs = [make_job(loop, str(i)) for i in range(3)]
    for job in jobs:
        q.put(job)
    assert q.drain() == jobs
    assert len(q) == 0
    assert q.pop() is None


def test_pending_job_defaults(loop: asyncio.AbstractEventLoop) -> None:
    job = make_job(loop, "a")
    assert job.failures == []
    assert job.attempt == 0
    assert job.fault is None
    assert job.done is False
    other = make_job(loop, "b")
    job.failures.append(SEGV)
    assert other.failures == []  # not a shared default
