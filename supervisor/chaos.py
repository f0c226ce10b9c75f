"""``asrpool chaos``: real faults under load, and the invariants that must hold.

C clients send the test fixtures for D seconds while an injector aims random
faults at random workers at R per second. At the end the run reports what was
sent, answered, failed and lost (no answer at all), compares every transcript
with the fault-free one, and checks that the pool came back whole. It runs against
a server given by ``--url`` or starts its own on a free loopback port.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from supervisor.launch import launched_server

DEFAULT_FIXTURES = ("speech.wav", "short.wav", "speech.flac", "speech.ogg", "gaps.wav")
DEFAULT_FAULTS = ("segv", "abort", "exit", "hang", "kill")
WHEN = ("now", "next-job", "during-job")

#: The server ``asrpool chaos`` starts for itself: faults on, deadlines short
#: enough that a hang costs seconds (a worker hung while loading its model waits
#: out boot_timeout), restart intensity loose enough that the run
#: measures retries rather than backoff (backoff has its own tests), and an RSS
#: limit that the ``leak`` fault crosses.
SERVER_CONFIG = """\
[server]
graceful_timeout = 30

[pool]
boot_timeout = 20
job_deadline_base = 5
job_deadline_per_audio_second = 1.0
kill_grace = 1
max_restarts = 50
restart_window = 10
max_worker_rss_mb = 700

[faults]
enabled = true

[[models]]
name = "tiny.en"
aliases = ["whisper-1"]
workers = {workers}
cpu_threads = 1
"""


def fixtures_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values. Pure."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(len(ordered), rank) - 1]


def latency_summary(values: Sequence[float]) -> dict[str, Any]:
    p50, p99 = percentile(values, 50), percentile(values, 99)
    return {"n": len(values), "p50": None if p50 is None else round(p50, 3),
            "p99": None if p99 is None else round(p99, 3)}


@dataclass
class Outcome:
    fixture: str
    phase: str
    status: int | None  # None: no answer at all (lost)
    latency: float
    text: str | None = None
    code: str | None = None
    attempts: int = 1


@dataclass
class ChaosRun:
    url: str
    token: str | None
    audio: dict[str, bytes]
    clients: int = 4
    duration: float = 60.0
    rate: float = 1.0
    faults: tuple[str, ...] = DEFAULT_FAULTS
    seed: int | None = None
    request_timeout: float = 180.0
    #: Rolling restarts of the whole pool (asrpool restart --all) during the run.
    rolling_restarts: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    restarts_seen: dict[int, int] = field(default_factory=dict)
    rolling_done: list[float] = field(default_factory=list)
    rolling_failed: list[str] = field(default_factory=list)
    injected: Counter[str] = field(default_factory=Counter)
    skipped_injections: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------------ requests

    def _admin(self, client: httpx.Client, method: str, path: str,
               body: dict[str, Any] | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return client.request(method, self.url + path, json=body, headers=headers,
                              timeout=30)

    def _send(self, client: httpx.Client, fixture: str, phase: str) -> Outcome:
        started = time.monotonic()
        try:
            response = client.post(
                self.url + "/v1/audio/transcriptions",
                files={"file": (fixture, self.audio[fixture])},
                # temperature 0: no sampling fallback, so transcripts are comparable.
                data={"model": "tiny.en", "temperature": "0"},
                timeout=self.request_timeout,
            )
        except httpx.HTTPError:
            return Outcome(fixture, phase, None, time.monotonic() - started)
        latency = time.monotonic() - started
        if response.status_code == 200:
            return Outcome(fixture, phase, 200, latency, text=response.json()["text"],
                           attempts=int(response.headers.get("x-asrpool-attempts", "1")))
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = f"http_{response.status_code}"
        return Outcome(fixture, phase, response.status_code, latency, code=code)

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def _client_loop(self, until: float, rng: random.Random) -> None:
        with httpx.Client() as client:
            while time.monotonic() < until:
                self._record(self._send(client, rng.choice(sorted(self.audio)), "chaos"))

    def _injector(self, until: float, rng: random.Random) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic() + interval
        with httpx.Client() as client:
            while True:
                wait = next_at - time.monotonic()
                if wait > 0:
                    time.sleep(wait)  # paced injection, not synchronization
                if time.monotonic() >= until:
                    return
                next_at += interval
                try:
                    workers = self._admin(client, "GET", "/admin/status").json()["workers"]
                except (httpx.HTTPError, ValueError, KeyError):
                    self.skipped_injections += 1
                    continue
                running = [w["id"] for w in workers if w["pid"] and not w["retiring"]]
                if not running:
                    self.skipped_injections += 1
                    continue
                kind = rng.choice(self.faults)
                body = {"worker": rng.choice(running), "fault": kind, "when": rng.choice(WHEN),
                        "arg": {"exit": 7, "slow": 1.0, "leak": 400.0}.get(kind, 0)}
                try:
                    ok = self._admin(client, "POST", "/admin/inject", body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.injected[kind] += 1
                else:
                    self.skipped_injections += 1

    # ------------------------------------------------------------------ phases

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url + "/ready", timeout=5).status_code == 200:
                        return True
                time.sleep(0.1)  # polling /ready with a deadline
        return False

    def _status(self) -> dict[str, Any]:
        with httpx.Client() as client:
            response = self._admin(client, "GET", "/admin/status")
            response.raise_for_status()
            status: dict[str, Any] = response.json()
            return status

    def _observer(self, until: float) -> None:
        """Follow every worker's restart count (a recycled worker's id goes away with
        its count; the report must still count its restarts)."""
        with httpx.Client() as client:
            while time.monotonic() < until:
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    for w in self._admin(client, "GET", "/admin/status").json()["workers"]:
                        self.restarts_seen[w["id"]] = max(self.restarts_seen.get(w["id"], 0),
                                                          w["restarts"])
                time.sleep(0.25)  # sampling the pool's state

    def _roller(self, until: float) -> None:
        """Rolling restarts of the whole pool, evenly spaced over the run."""
        if not self.rolling_restarts:
            return
        gap = self.duration / (self.rolling_restarts + 1)
        with httpx.Client() as client:
            for i in range(self.rolling_restarts):
                wait = until - self.duration + gap * (i + 1) - time.monotonic()
                if wait > 0:
                    time.sleep(wait)  # paced restarts, not synchronization
                started = time.monotonic()
                try:
                    response = client.post(self.url + "/admin/restart", json={"all": True},
                                           headers={"Authorization": f"Bearer {self.token}"},
                                           timeout=600)
                    if response.status_code != 200:
                        self.rolling_failed.append(response.text[:200])
                except httpx.HTTPError as exc:
                    self.rolling_failed.append(repr(exc))
                self.rolling_done.append(round(time.monotonic() - started, 2))

    def run(self) -> dict[str, Any]:
        rng = random.Random(self.seed)
        if not self.wait_ready(120):
            raise RuntimeError(f"the server at {self.url} did not become ready")
        before = self._status()

        # Fault-free phase: every client sends every fixture once. It gives the
        # reference transcripts and the latency without faults, at the same
        # concurrency as the chaos phase.
        threads = [threading.Thread(target=self._baseline_client) for _ in range(self.clients)]
        _run_all(threads)
        reference: dict[str, str] = {}
        for o in self.outcomes:
            if o.status == 200 and o.text is not None:
                reference.setdefault(o.fixture, o.text)

        until = time.monotonic() + self.duration
        threads = [threading.Thread(target=self._client_loop,
                                    args=(until, random.Random(rng.random())))
                   for _ in range(self.clients)]
        if self.rate > 0:
            threads.append(threading.Thread(target=self._injector,
                                            args=(until, random.Random(rng.random()))))
        threads.append(threading.Thread(target=self._observer, args=(until,)))
        threads.append(threading.Thread(target=self._roller, args=(until,)))
        _run_all(threads)

        # Recovery: the pool must serve again (a worker hung while idle is found out
        # by its next job's deadline), then every worker must be ready.
        threads = [threading.Thread(target=self._recovery_client) for _ in range(self.clients)]
        _run_all(threads)
        all_ready = self.wait_all_ready(120)
        after = self._status()
        return self._report(reference, before, after, all_ready)

    def _recovery_client(self) -> None:
        with httpx.Client() as client:
            self._record(self._send(client, min(self.audio), "recovery"))

    def wait_all_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                workers = self._status()["workers"]
                if workers and all(w["state"] == "ready" for w in workers):
                    return True
            time.sleep(0.1)  # polling the pool's state with a deadline
        return False

    def _baseline_client(self) -> None:
        with httpx.Client() as client:
            for fixture in sorted(self.audio):
                self._record(self._send(client, fixture, "baseline"))

    def _report(self, reference: dict[str, str], before: dict[str, Any],
                after: dict[str, Any], all_ready: bool) -> dict[str, Any]:
        chaos = [o for o in self.outcomes if o.phase == "chaos"]
        baseline = [o for o in self.outcomes if o.phase == "baseline"]
        mismatched = [o for o in self.outcomes if o.status == 200
                      and o.fixture in reference and o.text != reference[o.fixture]]
        lost = [o for o in self.outcomes if o.status is None]
        failed = Counter(o.code or "unknown" for o in self.outcomes
                         if o.status is not None and o.status != 200)
        restarts_before = {w["id"]: w["restarts"] for w in before["workers"]}
        for w in after["workers"]:
            self.restarts_seen[w["id"]] = max(self.restarts_seen.get(w["id"], 0), w["restarts"])
        restarts = sum(n - restarts_before.get(i, 0) for i, n in self.restarts_seen.items())
        return {
            "duration_s": self.duration,
            "clients": self.clients,
            "fault_rate_per_s": self.rate,
            "fault_kinds": list(self.faults),
            "seed": self.seed,
            "requests": {
                "sent": len(self.outcomes),
                "succeeded": sum(1 for o in self.outcomes if o.status == 200),
                "failed_by_code": dict(failed),
                "lost": len(lost),
                "mismatched_transcripts": len(mismatched),
                "retried": sum(1 for o in chaos if o.attempts > 1),
                "fault_free_phase": len(baseline),
                "chaos_phase": len(chaos),
                "recovery_phase": len(self.outcomes) - len(baseline) - len(chaos),
            },
            "faults_injected": dict(self.injected),
            "faults_injected_total": sum(self.injected.values()),
            "injections_skipped": self.skipped_injections,
            "restarts": restarts,
            "workers_replaced": len(set(self.restarts_seen) | set(restarts_before))
            - len(after["workers"]),
            "rolling_restarts": {"done": len(self.rolling_done), "seconds": self.rolling_done,
                                 "failed": self.rolling_failed},
            "latency_s": {
                "without_faults": latency_summary([o.latency for o in baseline
                                                   if o.status == 200]),
                "with_faults": latency_summary([o.latency for o in chaos if o.status == 200]),
                "retried_requests": latency_summary([o.latency for o in chaos
                                                     if o.status == 200 and o.attempts > 1]),
            },
            "final_pool": {
                "all_ready": all_ready,
                "workers": [{k: w[k] for k in ("id", "state", "restarts", "last_exit")}
                            for w in after["workers"]],
                "quarantined": len(after["quarantined"]),
            },
            "mismatch_examples": [{"fixture": o.fixture, "got": o.text,
                                   "expected": reference[o.fixture]} for o in mismatched[:3]],
        }


def _run_all(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def judge(report: dict[str, Any]) -> dict[str, bool]:
    """The invariants of a chaos run. Pure."""
    checks = {
        "no_request_lost": report["requests"]["lost"] == 0,
        "no_transcript_differs": report["requests"]["mismatched_transcripts"] == 0,
        "pool_whole_at_end": report["final_pool"]["all_ready"],
    }
    if report.get("fault_rate_per_s", 1) > 0:
        checks["faults_were_injected"] = report["faults_injected_total"] > 0
    else:
        # Without faults (a rolling-restart run, say) nothing may fail at all.
        checks["no_request_failed"] = not report["requests"].get("failed_by_code")
    rolling = report.get("rolling_restarts") or {}
    if rolling.get("done"):
        checks["rolling_restarts_succeeded"] = not rolling.get("failed")
    if report.get("children_left") is not None:
        checks["no_child_left"] = report["children_left"] == 0
    return checks


def load_audio(paths: Sequence[str]) -> dict[str, bytes]:
    if not paths:
        base = fixtures_dir()
        paths = [str(base / name) for name in DEFAULT_FIXTURES]
    audio = {}
    for p in paths:
        audio[Path(p).name] = Path(p).read_bytes()
    return audio


def main(url: str | None, token: str | None, *, clients: int, duration: float, rate: float,
         faults: tuple[str, ...], seed: int | None, audio_paths: Sequence[str], workers: int,
         out: str | None, server_log: str | None, rolling_restarts: int = 0) -> int:
    """Run a chaos session, print the JSON report; non-zero if an invariant broke."""
    audio = load_audio(audio_paths)
    if url is not None:
        run = ChaosRun(url, token, audio, clients, duration, rate, faults, seed,
                       rolling_restarts=rolling_restarts)
        report = run.run()
        report["children_left"] = None  # not ours to stop
    else:
        config = SERVER_CONFIG.format(workers=workers)
        with launched_server(config, Path(server_log) if server_log else None) as (u, t, stop):
            run = ChaosRun(u, t, audio, clients, duration, rate, faults, seed,
                           rolling_restarts=rolling_restarts)
            try:
                report = run.run()
            finally:
                left = stop()
            report["children_left"] = left
    report["invariants"] = judge(report)
    report["ok"] = all(report["invariants"].values())
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return 0 if report["ok"] else 1
