"""Crash injection end to end: real faults in real worker processes of a real server.

Each fault is injected through the admin API, the CLI or the ``X-Asrpool-Fault``
header, and the test watches what the supervisor does about it: which worker died
and why (``last_exit``), whether it came back, whether the request in flight still
got its transcript, and whether an input that kills every worker is quarantined.

Two shared servers keep this fast: ``pool`` has two workers (so one can die while
the other is watched), ``solo`` has one (so a worker-aimed fault is sure to meet the
next request, and its retry lands on the respawned worker). Tests that need their
own settings (restart backoff, an RSS limit) start their own server.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Reference
from tests.helpers import (
    Server,
    assert_openai_error,
    process_gone,
    running_server,
    wait_until,
)

Workers = dict[int, dict[str, Any]]

#: Two workers; a deadline that lets a 2 s ``slow`` fault finish before decoding.
POOL_CONFIG = """
[server]
graceful_timeout = 10

[pool]
job_deadline_base = 4
job_deadline_per_audio_second = 0.5
kill_grace = 1
# Many injected deaths per slot in a minute: no backoff in these tests.
max_restarts = 100

[faults]
enabled = true

[[models]]
name = "tiny.en"
aliases = ["whisper-1"]
workers = 2
cpu_threads = 1
"""

#: One worker; a tiny base deadline so hangs end fast, scaled with the audio's length.
SOLO_CONFIG = """
[server]
graceful_timeout = 10

[pool]
job_deadline_base = 1
job_deadline_per_audio_second = 0.5
kill_grace = 1
max_restarts = 100

[faults]
enabled = true

[[models]]
name = "tiny.en"
workers = 1
cpu_threads = 1
"""

#: Restart intensity: the second death of a slot within a minute backs off 3 s.
BACKOFF_CONFIG = """
[server]
graceful_timeout = 10

[pool]
job_deadline_base = 4
job_deadline_per_audio_second = 0.5
kill_grace = 1
max_restarts = 1
restart_window = 60
restart_backoff_base = 3
restart_backoff_cap = 3

[faults]
enabled = true

[[models]]
name = "tiny.en"
workers = 2
cpu_threads = 1
"""

RSS_CONFIG = """
[server]
graceful_timeout = 10

[pool]
job_deadline_base = 4
job_deadline_per_audio_second = 0.5
kill_grace = 1
max_worker_rss_mb = {limit}

[faults]
enabled = true

[[models]]
name = "tiny.en"
workers = 1
cpu_threads = 1
"""

#: How long a crashed worker may take to be respawned and load its model again.
RESPAWN_TIMEOUT = 30


@pytest.fixture(scope="module")
def pool() -> Iterator[Server]:
    """A server with two workers and faults enabled, shared by the module."""
    with running_server(POOL_CONFIG) as s:
        yield s


@pytest.fixture(scope="module")
def solo() -> Iterator[Server]:
    """A server with one worker and faults enabled, shared by the module."""
    with running_server(SOLO_CONFIG) as s:
        yield s


# ------------------------------------------------------------------------- helpers


def workers(server: Server) -> Workers:
    """Worker id -> its status entry."""
    return {w["id"]: w for w in server.status()["workers"]}


def settle(server: Server, n: int | None = None, timeout: float = RESPAWN_TIMEOUT) -> Workers:
    """Wait until the pool is ready, idle, and every worker is running and ready, so a
    fault from an earlier test cannot bleed into the next one."""

    def settled() -> Workers:
        status = server.status()
        found = {w["id"]: w for w in status["workers"]}
        if not status["ready"] or status["in_flight"] or status["queue_depth"]:
            return {}
        if n is not None and len(found) != n:
            return {}
        if not all(w["state"] == "ready" and w["pid"] for w in found.values()):
            return {}
        return found

    result: Workers = wait_until(settled, timeout, "every worker ready and idle")
    server.remember_children()
    return result


def inject(server: Server, worker: int, fault: str, when: str = "now",
           arg: float = 0) -> None:
    body = {"worker": worker, "fault": fault, "when": when, "arg": arg}
    response = server.admin("POST", "/admin/inject", body)
    assert response.status_code == 200, response.text
    assert response.json() == {"injected": body}


def respawned(server: Server, worker: int, old_pid: int,
              timeout: float = RESPAWN_TIMEOUT) -> dict[str, Any]:
    """Wait until the slot ``worker`` runs a new process that is ready."""

    def back() -> dict[str, Any]:
        w = workers(server).get(worker)
        if w is not None and w["state"] == "ready" and w["pid"] not in (None, old_pid):
            return w
        return {}

    result: dict[str, Any] = wait_until(back, timeout, f"worker {worker} respawned and ready")
    server.remember_children()
    return result


def headers_of(response: httpx.Response) -> tuple[str, str]:
    return response.headers["x-asrpool-worker"], response.headers["x-asrpool-attempts"]


# ------------------------------------------------- faults that kill an idle worker


@pytest.mark.parametrize("kind,arg,last_exit", [
    ("segv", 0, "SIGSEGV"),
    ("abort", 0, "SIGABRT"),
    ("exit", 7, "exit 7"),
    ("kill", 0, "SIGKILL"),
])
def test_fault_now_kills_only_its_worker_which_is_respawned(
        pool: Server, kind: str, arg: int, last_exit: str) -> None:
    before = settle(pool, 2)
    victim, other = sorted(before)
    inject(pool, victim, kind, "now", arg)
    wait_until(lambda: process_gone(before[victim]["pid"]), 10, "the victim to die")
    after = respawned(pool, victim, before[victim]["pid"])
    assert after["restarts"] == before[victim]["restarts"] + 1
    assert after["last_exit"] == last_exit
    wait_until(pool.is_ready, RESPAWN_TIMEOUT, "/ready 200 again")
    now = settle(pool, 2)
    assert set(now) == set(before)
    assert now[other]["pid"] == before[other]["pid"]
    assert now[other]["restarts"] == before[other]["restarts"]
    assert now[victim]["pid"] == after["pid"]


# ------------------------------------- a worker dies under a job: the job is retried


@pytest.mark.parametrize("kind,when,last_exit", [
    ("segv", "next-job", "SIGSEGV"),
    ("segv", "during-job", "SIGSEGV"),
    ("abort", "next-job", "SIGABRT"),
    ("abort", "during-job", "SIGABRT"),
    ("kill", "next-job", "SIGKILL"),
])
def test_worker_dying_under_a_job_costs_the_client_nothing(
        solo: Server, reference: Reference, kind: str, when: str, last_exit: str) -> None:
    before = settle(solo, 1)
    (victim,) = before
    inject(solo, victim, kind, when)
    # The only worker is armed: the request meets the fault on attempt 1 and runs
    # again on the respawned worker (which carries no fault).
    response = solo.post_audio("speech.wav", data={"temperature": "0"})
    assert response.status_code == 200, response.text
    assert response.json() == {"text": reference.text("speech.wav", temperature=0.0)}
    assert headers_of(response) == (str(victim), "2")
    after = settle(solo, 1)[victim]
    assert after["pid"] != before[victim]["pid"]
    assert process_gone(before[victim]["pid"])
    assert after["restarts"] == before[victim]["restarts"] + 1
    assert after["last_exit"] == last_exit
    # The fault was aimed at the worker, not the input: nothing is quarantined for it.
    assert all(last_exit not in q["reason"] for q in solo.status()["quarantined"])


# ----------------------------------------------------------------- poison input


def test_input_that_crashes_every_worker_is_quarantined(pool: Server,
                                                       reference: Reference) -> None:
    before = settle(pool, 2)
    fault = {"X-Asrpool-Fault": "segv"}
    response = pool.post_audio("short.wav", headers=fault)
    error = assert_openai_error(response, 422, code="input_crashed_worker")
    assert "SIGSEGV" in error["message"] and "3 attempts" in error["message"], error
    crashed = settle(pool, 2)
    assert set(crashed) == set(before)
    # Attempt 1 and 2 ran on the two workers (the second was idle), attempt 3 on a
    # respawned one: both slots were respawned, three deaths in all.
    for worker, w in before.items():
        assert crashed[worker]["pid"] != w["pid"]
        assert crashed[worker]["restarts"] >= w["restarts"] + 1
        assert crashed[worker]["last_exit"] == "SIGSEGV"
    assert sum(crashed[i]["restarts"] - before[i]["restarts"] for i in before) == 3
    quarantined = [q for q in pool.status()["quarantined"] if "SIGSEGV" in q["reason"]]
    assert len(quarantined) == 1, pool.status()["quarantined"]
    assert quarantined[0]["model"] == "tiny.en"
    assert quarantined[0]["expires_in"] > 0

    # The same bytes, options and header: refused at once, no worker touched.
    started = time.monotonic()
    again = pool.post_audio("short.wav", headers=fault)
    assert time.monotonic() - started < 2
    error = assert_openai_error(again, 422, code="input_crashed_worker")
    assert "quarantined" in error["message"] and "SIGSEGV" in error["message"]
    now = settle(pool, 2)
    assert {i: (w["pid"], w["restarts"], w["jobs_done"]) for i, w in now.items()} == {
        i: (w["pid"], w["restarts"], w["jobs_done"]) for i, w in crashed.items()}

    # Another input still works.
    ok = pool.post_audio("short.wav")
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"text": reference.text("short.wav")}
    assert ok.headers["x-asrpool-attempts"] == "1"


def test_copies_of_a_poison_input_share_one_verdict(pool: Server) -> None:
    """Deaths are counted per input, across requests: four copies sent at once crash
    max_attempts workers (plus at most the other copy already running), not 4 x 3."""
    before = settle(pool, 2)
    fault = {"X-Asrpool-Fault": "abort"}
    with concurrent.futures.ThreadPoolExecutor(4) as executor:
        responses = list(executor.map(
            lambda _: pool.post_audio("speech.flac", headers=fault), range(4)))
    for response in responses:
        assert_openai_error(response, 422, code="input_crashed_worker")
    after = settle(pool, 2)
    deaths = sum(after[i]["restarts"] - before[i]["restarts"] for i in before)
    assert 3 <= deaths <= 4, deaths


def test_input_that_hangs_every_worker_is_quarantined(solo: Server,
                                                      reference: Reference) -> None:
    before = settle(solo, 1)
    (worker,) = before
    fault = {"X-Asrpool-Fault": "hang"}
    response = solo.post_audio("short.wav", headers=fault)
    error = assert_openai_error(response, 504, code="deadline_exceeded")
    assert "deadline" in error["message"] and "3 attempts" in error["message"], error
    hung = settle(solo, 1)
    assert hung[worker]["pid"] != before[worker]["pid"]
    assert hung[worker]["restarts"] == before[worker]["restarts"] + 3
    assert hung[worker]["last_exit"] == "deadline (SIGABRT)"
    quarantined = [q for q in solo.status()["quarantined"] if "deadline" in q["reason"]]
    assert len(quarantined) == 1, solo.status()["quarantined"]

    started = time.monotonic()
    again = solo.post_audio("short.wav", headers=fault)
    assert time.monotonic() - started < 2
    error = assert_openai_error(again, 422, code="input_crashed_worker")
    assert "quarantined" in error["message"] and "deadline" in error["message"]
    now = settle(solo, 1)[worker]
    assert (now["pid"], now["restarts"], now["jobs_done"]) == (
        hung[worker]["pid"], hung[worker]["restarts"], hung[worker]["jobs_done"])

    ok = solo.post_audio("short.wav")
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"text": reference.text("short.wav")}


def test_a_spent_worker_fault_does_not_excuse_a_later_poison_input(solo: Server) -> None:
    """A fault aimed at a worker that did not kill it (here a 1 MB leak) is spent once
    its job is done: a poison input that crashes the same process later is to blame,
    and is quarantined after max_attempts (3) deaths, not more."""
    before = settle(solo, 1)
    (worker,) = before
    inject(solo, worker, "leak", "next-job", 1)
    spent = solo.post_audio("short.wav")
    assert spent.status_code == 200, spent.text
    assert headers_of(spent) == (str(worker), "1")
    armed = settle(solo, 1)[worker]
    assert armed["pid"] == before[worker]["pid"]

    response = solo.post_audio("short.wav", headers={"X-Asrpool-Fault": "abort"})
    error = assert_openai_error(response, 422, code="input_crashed_worker")
    assert "SIGABRT" in error["message"] and "3 attempts" in error["message"], error
    after = settle(solo, 1)[worker]
    assert after["restarts"] == armed["restarts"] + 3


# ----------------------------------------------------------------- deadlines


def test_hung_job_is_aborted_at_its_deadline_and_retried(solo: Server,
                                                         reference: Reference) -> None:
    before = settle(solo, 1)
    (victim,) = before
    inject(solo, victim, "hang", "next-job")
    started = time.monotonic()
    response = solo.post_audio("speech.wav", data={"temperature": "0"})
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json() == {"text": reference.text("speech.wav", temperature=0.0)}
    assert headers_of(response) == (str(victim), "2")
    assert elapsed >= 1.0  # job_deadline_base: the hang fired before the audio was decoded
    after = settle(solo, 1)[victim]
    assert after["pid"] != before[victim]["pid"]
    assert after["restarts"] == before[victim]["restarts"] + 1
    assert after["last_exit"] == "deadline (SIGABRT)"
    assert "passed its deadline" in solo.log()


def test_long_healthy_job_gets_a_deadline_scaled_to_its_audio(solo: Server,
                                                              reference: Reference) -> None:
    """36 s of audio takes longer than job_deadline_base (1 s) to transcribe here, but
    its deadline is 1 + 0.5 x 36 s: it must finish on its first attempt."""
    before = settle(solo, 1)
    (worker,) = before
    response = solo.post_audio("long.wav", data={"temperature": "0"}, timeout=90)
    assert response.status_code == 200, response.text
    assert headers_of(response) == (str(worker), "1")
    assert response.json() == {"text": reference.text("long.wav", temperature=0.0)}
    after = settle(solo, 1)[worker]
    assert after["pid"] == before[worker]["pid"]
    assert after["restarts"] == before[worker]["restarts"]
    assert after["jobs_done"] == before[worker]["jobs_done"] + 1


def test_slow_job_within_its_deadline_is_not_killed(pool: Server) -> None:
    before = settle(pool, 2)
    for worker in before:
        inject(pool, worker, "slow", "next-job", 2)

    def timed_post() -> tuple[httpx.Response, float]:
        started = time.monotonic()
        response = pool.post_audio("short.wav")
        return response, time.monotonic() - started

    # Two requests at once: each worker takes one (the other is busy for 2 s).
    with concurrent.futures.ThreadPoolExecutor(2) as executor:
        futures = [executor.submit(timed_post) for _ in range(2)]
        results = [f.result(timeout=60) for f in futures]
    served = set()
    for response, elapsed in results:
        assert response.status_code == 200, response.text
        served_by, attempts = headers_of(response)
        assert attempts == "1"
        assert elapsed >= 2.0
        served.add(int(served_by))
    assert served == set(before)
    after = settle(pool, 2)
    for worker, w in before.items():
        assert after[worker]["pid"] == w["pid"]
        assert after[worker]["restarts"] == w["restarts"]
        assert after[worker]["jobs_done"] == w["jobs_done"] + 1


# ----------------------------------------------------------------- raise


@pytest.mark.parametrize("when", ["next-job", "during-job"])
def test_python_exception_fails_one_request_and_the_worker_serves_on(
        solo: Server, reference: Reference, when: str) -> None:
    before = settle(solo, 1)
    (worker,) = before
    inject(solo, worker, "raise", when)
    response = solo.post_audio("short.wav")
    error = assert_openai_error(response, 500, code="worker_error")
    assert error["type"] == "server_error"
    assert "InjectedError" in error["message"]
    after = settle(solo, 1)[worker]
    assert after["pid"] == before[worker]["pid"]
    assert after["restarts"] == before[worker]["restarts"]
    # The fault is spent; the same worker answers the next request.
    again = solo.post_audio("short.wav")
    assert again.status_code == 200, again.text
    assert again.json() == {"text": reference.text("short.wav")}
    assert headers_of(again) == (str(worker), "1")
    assert settle(solo, 1)[worker]["pid"] == before[worker]["pid"]


# ----------------------------------------------------------------- leak


def test_leak_grows_the_worker_resident_memory(solo: Server) -> None:
    settle(solo, 1)
    # One job first, so the baseline includes what a job itself leaves resident.
    assert solo.post_audio("speech.wav", data={"temperature": "0"}).status_code == 200
    before = settle(solo, 1)
    (worker,) = before
    inject(solo, worker, "leak", "next-job", 200)
    response = solo.post_audio("speech.wav", data={"temperature": "0"})
    assert response.status_code == 200, response.text
    assert headers_of(response) == (str(worker), "1")
    after = settle(solo, 1)[worker]
    assert after["pid"] == before[worker]["pid"]
    assert after["rss_mb"] >= before[worker]["rss_mb"] + 150, (before, after)


def test_leaking_worker_is_recycled_past_max_worker_rss(solo: Server) -> None:
    # A fresh worker's resident size after one job: "normal" (solo runs the same
    # model, threads and fixture as the server below).
    (worker,) = settle(solo, 1)
    response = solo.admin("POST", "/admin/restart", {"workers": [worker], "force": True})
    assert response.status_code == 200, response.text
    assert solo.post_audio("speech.wav", data={"temperature": "0"}).status_code == 200
    normal = settle(solo, 1)[worker]["rss_mb"]
    limit = int(normal + 100)  # a 200 MB leak passes it; a healthy worker does not

    with running_server(RSS_CONFIG.format(limit=limit)) as server:
        before = settle(server, 1)
        (old,) = before
        inject(server, old, "leak", "next-job", 200)
        response = server.post_audio("speech.wav", data={"temperature": "0"})
        assert response.status_code == 200, response.text
        assert headers_of(response) == (str(old), "1")

        def replaced() -> Workers:
            found = workers(server)
            if old in found or len(found) != 1:
                return {}
            if not all(w["state"] == "ready" for w in found.values()):
                return {}
            return found

        after = wait_until(replaced, RESPAWN_TIMEOUT, "the leaking worker to be replaced")
        (new,) = after
        assert new != old
        assert after[new]["restarts"] == 0
        assert after[new]["rss_mb"] < limit
        wait_until(lambda: process_gone(before[old]["pid"]), 10, "the old worker to exit")
        server.remember_children()
        # Graceful: no request failed, and the new worker serves.
        again = server.post_audio("short.wav")
        assert again.status_code == 200, again.text
        assert headers_of(again) == (str(new), "1")
        assert "recycle: rss" in server.log()


# ----------------------------------------------------------------- restart intensity


@pytest.mark.parametrize("kind,last_exit", [("kill", "SIGKILL"), ("segv", "SIGSEGV")])
def test_crash_looping_slot_backs_off_while_the_other_serves(
        reference: Reference, kind: str, last_exit: str) -> None:
    with running_server(BACKOFF_CONFIG) as server:
        start = settle(server, 2)
        victim, other = sorted(start)
        backoff: dict[str, Any] | None = None
        # max_restarts = 1: the first death respawns at once, the second backs off.
        for _ in range(3):
            current = settle(server, 2)[victim]
            inject(server, victim, kind, "now")

            def dead_and_handled(old_pid: int = current["pid"]) -> dict[str, Any]:
                w: dict[str, Any] = workers(server)[victim]
                if w["state"] == "backoff":
                    return w
                if w["state"] == "ready" and w["pid"] not in (None, old_pid):
                    return w
                return {}

            seen = wait_until(dead_and_handled, RESPAWN_TIMEOUT, f"worker {victim} to die "
                              "and be respawned or backed off")
            assert seen["last_exit"] == last_exit
            if seen["state"] == "backoff":
                backoff = seen
                break
        assert backoff is not None, (
            f"worker {victim} never backed off after repeated '{kind}' deaths "
            f"(max_restarts = 1): {workers(server)[victim]}")
        assert backoff["pid"] is None
        assert backoff["restarts"] == start[victim]["restarts"] + 2
        ready = server.ready_body()
        assert {w["id"]: w["state"] for w in ready["workers"]}[victim] == "backoff"
        assert ready["ready"] is True  # the other worker can serve

        response = server.post_audio("short.wav")
        assert response.status_code == 200, response.text
        assert response.json() == {"text": reference.text("short.wav")}
        assert headers_of(response) == (str(other), "1")

        # It comes back by itself once the backoff has passed.
        back = respawned(server, victim, start[victim]["pid"], timeout=3 + RESPAWN_TIMEOUT)
        assert back["restarts"] == backoff["restarts"]
        final = settle(server, 2)
        assert final[other]["pid"] == start[other]["pid"]
        assert final[other]["restarts"] == start[other]["restarts"]


# ----------------------------------------------------------------- the CLI


def test_cli_inject(pool: Server) -> None:
    before = settle(pool, 2)
    victim, other = sorted(before)
    result = pool.cli("inject", "--worker", str(victim), "--fault", "exit", "--arg", "9")
    assert result.returncode == 0, result.stderr
    assert f"injected exit (now) into worker {victim}" in result.stdout
    after = respawned(pool, victim, before[victim]["pid"])
    assert after["last_exit"] == "exit 9"
    assert after["restarts"] == before[victim]["restarts"] + 1
    assert settle(pool, 2)[other]["pid"] == before[other]["pid"]


@pytest.mark.parametrize("args", [
    ("--fault", "explode"),
    ("--fault", "segv", "--when", "tomorrow"),
])
def test_cli_refuses_a_bad_fault(pool: Server, args: tuple[str, ...]) -> None:
    before = settle(pool, 2)
    result = pool.cli("inject", "--worker", str(min(before)), *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "invalid choice" in result.stderr
    after = settle(pool, 2)
    assert {i: w["pid"] for i, w in after.items()} == {i: w["pid"] for i, w in before.items()}
