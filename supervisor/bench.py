"""``asrpool bench``: asrpool against in-process faster-whisper and the single-lock
server, measured side by side in one run on the same machine and audio.

It reports throughput (requests/s, audio-seconds/s) and p50/p99 latency at
concurrency 1 and 4 for each design, checks that every design returned the same
transcript, and measures asrpool's own costs: per-request overhead over in-process
at concurrency 1, the time from a worker's SIGSEGV to the retried request's answer
and to the replacement being ready, and the transport of 1 MB and 25 MB uploads.
Shared machines are noisy: read the ratios, which come from one run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from supervisor.chaos import fixtures_dir, latency_summary, percentile
from supervisor.launch import launched_server, terminate

ASRPOOL_CONFIG = """\
[pool]
job_deadline_base = 120

[[models]]
name = "tiny.en"
workers = {workers}
cpu_threads = {threads}
"""


@dataclass
class Series:
    """One design at one concurrency."""

    design: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    #: asrpool only: time outside the worker's own work (HTTP, parsing, the pipe).
    overheads: list[float] = field(default_factory=list)
    wall: float = 0.0
    audio_seconds: float = 0.0
    texts: set[str] = field(default_factory=set)

    def summary(self) -> dict[str, Any]:
        n = len(self.latencies)
        return {
            "design": self.design, "concurrency": self.concurrency, "requests": n,
            "requests_per_s": round(n / self.wall, 3) if self.wall else None,
            "audio_s_per_s": round(n * self.audio_seconds / self.wall, 2) if self.wall else None,
            **{f"latency_{k}": v for k, v in latency_summary(self.latencies).items() if k != "n"},
            "overhead_p50_ms": round(1000 * (percentile(self.overheads, 50) or 0.0), 1)
            if self.overheads else None,
            "transcripts": sorted(self.texts),
        }


def wav_bytes(path: Path) -> tuple[bytes, float]:
    data = path.read_bytes()
    with wave.open(io.BytesIO(data)) as w:
        return data, w.getnframes() / w.getframerate()


def tiled_wav(path: Path, size: int) -> bytes:
    """A 16 kHz mono WAV of about ``size`` bytes: the fixture's speech repeated."""
    with wave.open(str(path)) as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    body = (frames * (size // len(frames) + 1))[: size - 44]
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setparams(params)
        w.writeframes(body)
    return out.getvalue()


#: A design's call: the transcript, and for asrpool the seconds spent outside the
#: worker's own work (from its Server-Timing header).
Call = Callable[[], tuple[str, float | None]]


def burst(series: Series, concurrency: int, requests: int, call: Call) -> None:
    """Send ``requests`` calls at ``concurrency``; add their latencies and wall time."""
    def one(_: int) -> tuple[float, str, float | None]:
        started = time.monotonic()
        text, busy = call()
        latency = time.monotonic() - started
        return latency, text, None if busy is None else latency - busy

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for latency, text, overhead in pool.map(one, range(requests)):
            series.latencies.append(latency)
            series.texts.add(text)
            if overhead is not None:
                series.overheads.append(overhead)
    series.wall += time.monotonic() - started


def interleaved(designs: dict[str, Call], concurrency: int, rounds: int,
                per_round: int, audio_seconds: float) -> list[Series]:
    """Every design runs a burst in every round, in a rotating order, so that drift in
    the machine's speed (a shared, noisy host) falls on all designs alike."""
    names = list(designs)
    series = {n: Series(n, concurrency, audio_seconds=audio_seconds) for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            burst(series[name], concurrency, per_round, designs[name])
    return [series[n] for n in names]


def worker_seconds(server_timing: str) -> float:
    """The worker's own time (queue + decode + inference) from Server-Timing."""
    parts = dict(p.strip().split(";dur=") for p in server_timing.split(","))
    return sum(float(v) for v in parts.values()) / 1000


def http_call(client: httpx.Client, url: str, audio: bytes) -> Call:
    def call() -> tuple[str, float | None]:
        response = client.post(url + "/v1/audio/transcriptions",
                               files={"file": ("speech.wav", audio)}, timeout=300)
        response.raise_for_status()
        text: str = response.json()["text"]
        timing = response.headers.get("server-timing")
        return text, worker_seconds(timing) if timing else None
    return call


@contextlib.contextmanager
def baseline_server(threads: int) -> Iterator[tuple[str, int]]:
    """The single-lock server in a child process; yields its URL and pid."""
    from supervisor.chaos import ChaosRun

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.bench_baseline", "--port",
                             str(port), "--threads", str(threads)])
    url = f"http://127.0.0.1:{port}"
    try:
        if not ChaosRun(url, None, {}).wait_ready(120):
            raise RuntimeError("the single-lock server did not start")
        yield url, proc.pid
    finally:
        terminate(proc, timeout=30)


def tree_rss_mb(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return round(float(total) / (1024 * 1024), 1)


def admin_get(url: str, token: str, path: str) -> dict[str, Any]:
    response = httpx.get(url + path, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def measure_crash(url: str, token: str, audio: bytes, trials: int) -> dict[str, Any]:
    """SIGSEGV the busy worker of a lone request; time its answer and the respawn."""
    to_answer, to_ready = [], []
    with httpx.Client() as client:
        for _ in range(trials):
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                future = pool.submit(http_call(client, url, audio))
                deadline = time.monotonic() + 60
                busy: list[dict[str, Any]] = []
                while not busy and time.monotonic() < deadline:
                    busy = [w for w in admin_get(url, token, "/admin/status")["workers"]
                            if w["state"] == "busy"]
                    time.sleep(0.005)  # polling the pool's state with a deadline
                if not busy:
                    raise RuntimeError("no worker became busy")
                victim = busy[0]
                killed = time.monotonic()
                os.kill(victim["pid"], signal.SIGSEGV)
                future.result(timeout=120)
                to_answer.append(time.monotonic() - killed)
            while time.monotonic() < deadline:
                workers = {w["id"]: w for w in admin_get(url, token, "/admin/status")["workers"]}
                w = workers.get(victim["id"])
                if w and w["state"] == "ready" and w["pid"] != victim["pid"]:
                    to_ready.append(time.monotonic() - killed)
                    break
                time.sleep(0.01)  # polling the pool's state with a deadline
            # Let the next trial start from a whole pool.
            while time.monotonic() < deadline and not httpx.get(url + "/ready").is_success:
                time.sleep(0.05)  # polling /ready with a deadline
    return {"trials": trials,
            "sigsegv_to_answer_s": round(percentile(to_answer, 50) or 0.0, 3),
            "sigsegv_to_answer_max_s": round(max(to_answer), 3),
            "sigsegv_to_replacement_ready_s": round(percentile(to_ready, 50) or 0.0, 3)}


def measure_uploads(url: str, fixture: Path) -> list[dict[str, Any]]:
    """Transport overhead of large uploads: total time minus the worker's own time
    (queue, decode, VAD) on the speech-timestamps endpoint."""
    rows = []
    with httpx.Client() as client:
        for label, size in (("1 MB", 1 << 20), ("25 MB", 25 * (1 << 20))):
            audio = tiled_wav(fixture, size)
            started = time.monotonic()
            response = client.post(url + "/v1/audio/speech/timestamps",
                                   files={"file": ("big.wav", audio)}, timeout=600)
            total = time.monotonic() - started
            response.raise_for_status()
            worker = worker_seconds(response.headers["server-timing"])
            rows.append({"upload": label, "bytes": len(audio), "total_s": round(total, 3),
                         "worker_s": round(worker, 3),
                         "overhead_ms": round((total - worker) * 1000, 1),
                         "overhead_ms_per_mb": round((total - worker) * 1000
                                                     / (len(audio) / (1 << 20)), 2)})
    return rows


def long_recording(minutes: float) -> tuple[bytes, float]:
    """Speech fixtures separated by long silences (a meeting with pauses), as WAV."""
    base = fixtures_dir()
    clips = []
    for name in ("speech.wav", "short.wav", "gaps.wav"):
        with wave.open(str(base / name)) as w:
            params = w.getparams()
            clips.append(w.readframes(w.getnframes()))
    silence = b"\0\0" * 16000 * 20  # 20 s
    frames = bytearray()
    target = int(minutes * 60 * 16000 * 2)
    i = 0
    while len(frames) < target:
        frames += clips[i % len(clips)] + silence
        i += 1
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setparams(params)
        w.writeframes(bytes(frames[:target]))
    return out.getvalue(), target / 32000


def measure_vad_speedup(url: str, minutes: float) -> dict[str, Any]:
    """One long recording transcribed with and without vad_filter."""
    audio, seconds = long_recording(minutes)
    times: dict[str, float] = {}
    words: dict[str, int] = {}
    with httpx.Client() as client:
        for vad in ("false", "true"):
            started = time.monotonic()
            response = client.post(url + "/v1/audio/transcriptions",
                                   files={"file": ("long.wav", audio)},
                                   data={"vad_filter": vad}, timeout=1800)
            response.raise_for_status()
            times[vad] = time.monotonic() - started
            words[vad] = len(response.json()["text"].split())
    return {"audio_s": round(seconds, 1), "without_vad_s": round(times["false"], 2),
            "with_vad_s": round(times["true"], 2),
            "speedup": round(times["false"] / times["true"], 2),
            "words_without_vad": words["false"], "words_with_vad": words["true"]}


def run(requests: int, out: Path, max_workers: int, crash_trials: int,
        vad_minutes: float) -> dict[str, Any]:
    import threadpoolctl

    from supervisor.chaos import ChaosRun
    from supervisor.config import EMBEDDED_MODEL, resolve_model_source
    from supervisor.protocol import WorkerSpec
    from workers.engine import Engine

    cores = os.cpu_count() or 1
    fixture = fixtures_dir() / "speech.wav"
    audio, seconds = wav_bytes(fixture)
    log = sys.stderr
    designs: dict[str, Call] = {}

    with contextlib.ExitStack() as stack:
        print(f"starting every design ({cores} cores)...", file=log)
        for threads in sorted({1, cores}):
            engine = Engine(WorkerSpec(0, EMBEDDED_MODEL, resolve_model_source(EMBEDDED_MODEL),
                                       "cpu", (0,), "int8", threads, 3 * 3600.0))

            def in_process(engine: Engine = engine, threads: int = threads
                           ) -> tuple[str, float | None]:
                # The same thread budget a worker gets: CTranslate2 and numpy's BLAS.
                with threadpoolctl.threadpool_limits(limits=threads):
                    decoded = engine.decode(audio)
                    result = engine.transcribe(decoded.audio, "transcribe", {})
                return "".join(s["text"] for s in result["segments"]).strip(), None

            designs[f"in-process ({threads}t)"] = in_process
        client = stack.enter_context(httpx.Client())
        lock_url, lock_pid = stack.enter_context(baseline_server(cores))
        designs[f"single-lock ({cores}t)"] = http_call(client, lock_url, audio)
        pools: dict[str, tuple[str, str]] = {}
        for workers in range(1, max_workers + 1):
            threads = max(1, cores // workers)
            name = f"asrpool {workers}w x {threads}t"
            config = ASRPOOL_CONFIG.format(workers=workers, threads=threads)
            url, token, stop = stack.enter_context(launched_server(config))
            stack.callback(stop)
            if not ChaosRun(url, token, {}).wait_all_ready(120):
                raise RuntimeError(f"{name} did not become ready")
            pools[name] = (url, token)
            designs[name] = http_call(client, url, audio)
        for call in designs.values():
            call()  # warm-up, not counted

        print("concurrency 1 and 4, designs interleaved...", file=log)
        series = interleaved(designs, 1, max(1, requests // 2), 2, seconds)
        series += interleaved(designs, 4, max(1, requests // 8), 8, seconds)

        memory = {f"single-lock ({cores}t)": tree_rss_mb(lock_pid)}
        for name, (url, token) in pools.items():
            status = admin_get(url, token, "/admin/status")
            memory[f"{name} (workers)"] = round(sum(w["rss_mb"] or 0
                                                    for w in status["workers"]), 1)

        url, token = pools[list(pools)[-1]]
        print("crash recovery and large uploads...", file=log)
        crash = measure_crash(url, token, audio, crash_trials)
        uploads = measure_uploads(url, fixture)
        vad: dict[str, Any] = {}
        if vad_minutes > 0:
            print(f"{vad_minutes:g}-minute recording with and without VAD...", file=log)
            vad = measure_vad_speedup(url, vad_minutes)

    result = report(series, crash, uploads, memory, cores, seconds, max_workers)
    result["vad_long_recording"] = vad
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _find(series: list[Series], design: str, c: int) -> dict[str, Any]:
    for s in series:
        if s.design.startswith(design) and s.concurrency == c:
            return s.summary()
    raise KeyError((design, c))


def report(series: list[Series], crash: dict[str, Any], uploads: list[dict[str, Any]],
           memory: dict[str, float], cores: int, seconds: float,
           max_workers: int) -> dict[str, Any]:
    rows = [s.summary() for s in series]
    texts = {t for s in series for t in s.texts}
    best = f"asrpool {max_workers}w"
    lock4 = _find(series, "single-lock", 4)
    pool4 = _find(series, best, 4)
    inproc1 = _find(series, "in-process (1t)", 1)
    pool1 = _find(series, best, 1)
    overhead = pool1["latency_p50"] - inproc1["latency_p50"]
    inference = inproc1["latency_p50"]
    ratios = {
        "asrpool_vs_single_lock_throughput_c4": round(pool4["requests_per_s"]
                                                      / lock4["requests_per_s"], 2),
        "asrpool_overhead_c1_ms": round(overhead * 1000, 1),
        "asrpool_overhead_c1_pct": round(100 * overhead / inproc1["latency_p50"], 1),
        "asrpool_outside_worker_c1_ms": pool1["overhead_p50_ms"],
        "crash_answer_vs_one_inference": round(crash["sigsegv_to_answer_s"] / inference, 2)
        if crash else None,
    }
    targets = {
        "throughput_c4_at_least_1.3x_single_lock":
            ratios["asrpool_vs_single_lock_throughput_c4"] >= 1.3,
        "c1_latency_within_5pct_or_15ms_of_in_process":
            ratios["asrpool_overhead_c1_pct"] <= 5 or ratios["asrpool_overhead_c1_ms"] <= 15,
        "crash_adds_at_most_one_inference": bool(crash) and crash["sigsegv_to_answer_s"]
        <= 2 * inference,
        "identical_transcripts": len(texts) == 1,
    }
    result = {
        "machine": {"cores": cores, "model": "tiny.en (int8, CPU)",
                    "audio": f"speech.wav ({seconds:.2f} s)"},
        "series": rows,
        "ratios": ratios,
        "targets": targets,
        "crash_recovery": crash,
        "uploads": uploads,
        "memory_rss_mb": memory,
        "transcript": sorted(texts),
    }
    return result


def format_table(result: dict[str, Any]) -> str:
    """The human-readable report. Pure."""
    header = (f"{'design':<20} {'c':>2} {'req/s':>7} {'audio s/s':>9} {'p50 s':>7} "
              f"{'p99 s':>7} {'outside worker ms':>17}")
    lines = [header]
    for r in result["series"]:
        outside = "-" if r["overhead_p50_ms"] is None else f"{r['overhead_p50_ms']:.1f}"
        lines.append(f"{r['design']:<20} {r['concurrency']:>2} {r['requests_per_s']:>7.2f} "
                     f"{r['audio_s_per_s']:>9.1f} {r['latency_p50']:>7.3f} "
                     f"{r['latency_p99']:>7.3f} {outside:>17}")
    lines.append("")
    for k, v in result["ratios"].items():
        lines.append(f"{k}: {v}")
    crash = result["crash_recovery"]
    if crash:
        lines.append(f"SIGSEGV -> retried answer: {crash['sigsegv_to_answer_s']} s (p50 of "
                     f"{crash['trials']}), -> replacement ready: "
                     f"{crash['sigsegv_to_replacement_ready_s']} s")
    for u in result["uploads"]:
        lines.append(f"upload {u['upload']}: total {u['total_s']} s, worker {u['worker_s']} s, "
                     f"transport overhead {u['overhead_ms']} ms")
    for k, v in result["memory_rss_mb"].items():
        lines.append(f"RSS {k}: {v} MB")
    vad = result.get("vad_long_recording")
    if vad:
        lines.append(f"{vad['audio_s']:.0f} s recording with long silences: {vad['without_vad_s']} s "
                     f"without VAD, {vad['with_vad_s']} s with vad_filter "
                     f"({vad['speedup']}x faster)")
    lines.append("transcripts identical: " + str(result["targets"]["identical_transcripts"]))
    lines.append("")
    for k, ok in result["targets"].items():
        lines.append(f"[{'met' if ok else 'NOT MET'}] {k}")
    return "\n".join(lines)


def main(requests: int, out: str, max_workers: int, crash_trials: int,
         vad_minutes: float) -> int:
    result = run(requests, Path(out), max_workers, crash_trials, vad_minutes)
    print(format_table(result))
    print(f"\nJSON: {out}")
    return 0
