"""The ``asrpool`` CLI against real servers, and graceful operations under load."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import subprocess
import sys

import httpx

from supervisor.cli import format_status
from tests.conftest import Reference
from tests.helpers import (
    DEFAULT_CONFIG,
    ROOT,
    Load,
    Server,
    assert_openai_error,
    free_port,
    running_server,
    wait_until,
)


def test_status_table_and_json(server: Server) -> None:
    result = server.cli("status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["ID", "PID", "MODEL", "DEVICE", "STATE"]
    assert sum(1 for line in lines if " tiny.en " in line) == 2
    assert "queue depth: 0" in result.stdout
    result = server.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    for worker in status["workers"]:
        assert {"id", "pid", "model", "state", "restarts", "jobs_done", "last_exit",
                "rss_mb"} <= set(worker)


def test_format_status_shows_exit_reasons_and_quarantine() -> None:
    status = {
        "ready": False, "draining": False, "queue_depth": 3, "in_flight": 1,
        "quarantined": [{"fingerprint": "ab12", "model": "tiny.en",
                         "reason": "worker crashed (SIGSEGV) on 3 attempts",
                         "expires_in": 3500.0}],
        "workers": [
            {"id": 0, "pid": 41, "model": "tiny.en", "device": "cpu", "state": "busy",
             "uptime": 75.0, "jobs_done": 9, "restarts": 2, "last_exit": "SIGSEGV",
             "rss_mb": 210.4, "job_age": 1.25, "boot_error": None},
            {"id": 1, "pid": None, "model": "tiny.en", "device": "cpu", "state": "backoff",
             "uptime": 0.0, "jobs_done": 0, "restarts": 7, "last_exit": "SIGABRT",
             "rss_mb": None, "job_age": None, "boot_error": None},
        ],
    }
    text = format_status(status)
    rows = text.splitlines()
    assert rows[1].split() == ["0", "41", "tiny.en", "cpu", "busy", "1.2m", "9", "2",
                               "SIGSEGV", "210", "1.2s"]
    assert rows[2].split()[:5] == ["1", "-", "tiny.en", "cpu", "backoff"]
    assert "queue depth: 3" in text and "in flight: 1" in text
    assert "quarantined inputs: 1" in text and "(SIGSEGV) on 3 attempts" in text


def test_cli_without_a_server() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["status"], ["restart", "--all"], ["scale", "2"], ["drain"]):
        result = subprocess.run([sys.executable, "-m", "supervisor.cli", *args, "--url", url,
                                 "--token", "x"], capture_output=True, text=True, timeout=60,
                                cwd=ROOT, check=False)
        assert result.returncode == 1
        assert result.stderr.strip() == f"asrpool: cannot reach the server at {url}: " \
            "is it running?"


def test_cli_with_a_wrong_token(server: Server) -> None:
    result = server.cli("status", "--token", "wrong")
    assert result.returncode == 1
    assert "refused the admin token" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_on_every_subcommand() -> None:
    for command in ("serve", "status", "restart", "scale", "drain", "stop", "inject"):
        result = subprocess.run([sys.executable, "-m", "supervisor.cli", command, "--help"],
                                capture_output=True, text=True, timeout=60, cwd=ROOT,
                                check=False)
        assert result.returncode == 0 and "usage: asrpool " + command in result.stdout


def test_public_bind_without_token_is_refused() -> None:
    result = subprocess.run([sys.executable, "-m", "supervisor.cli", "serve", "--host",
                             "0.0.0.0", "--port", str(free_port())], capture_output=True,
                            text=True, timeout=60, cwd=ROOT, check=False,
                            env={k: v for k, v in __import__("os").environ.items()
                                 if k != "ASRPOOL_ADMIN_TOKEN"})
    assert result.returncode == 2
    assert "refusing to bind 0.0.0.0" in result.stderr
    assert "admin token" in result.stderr


def test_rolling_restart_under_load_fails_nothing(reference: Reference) -> None:
    expected = reference.text("short.wav")
    with running_server() as server:
        before = set(server.worker_pids())
        with Load(server, clients=3) as load:
            wait_until(lambda: load.count() >= 3, 60, "load to start")
            result = server.cli("restart", "--all")
            assert result.returncode == 0, result.stderr
            done = load.count()
            wait_until(lambda: load.count() >= done + 3, 60, "requests after the restart")
        assert load.failures(expected) == []
        after = set(server.worker_pids())
        assert len(after) == 2 and not after & before
        server.remember_children()


def test_scale_up_and_down_under_load_fails_nothing(reference: Reference) -> None:
    expected = reference.text("short.wav")
    with running_server() as server:
        with Load(server, clients=3) as load:
            wait_until(lambda: load.count() >= 2, 60, "load to start")
            result = server.cli("scale", "3")
            assert result.returncode == 0, result.stderr
            assert len(server.worker_pids()) == 3
            server.remember_children()
            result = server.cli("scale", "1")
            assert result.returncode == 0, result.stderr
            done = load.count()
            wait_until(lambda: load.count() >= done + 3, 60, "requests after scaling down")
        assert load.failures(expected) == []
        assert len(server.worker_pids()) == 1
        assert server.status()["workers"][0]["state"] in ("ready", "busy")


def test_drain_then_stop(reference: Reference) -> None:
    server = Server().start()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(server.post_audio, "speech.wav")
            wait_until(lambda: server.status()["in_flight"] == 1, 30, "a request in flight")
            result = server.cli("drain")
            assert result.returncode == 0, result.stderr
            response = in_flight.result(timeout=60)
        assert response.json()["text"] == reference.text("speech.wav")
        assert httpx.get(server.url + "/ready").status_code == 503
        assert_openai_error(server.post_audio("short.wav"), 503)
        assert server.worker_pids() == {}
        result = server.cli("stop")
        assert result.returncode == 0, result.stderr
        assert server.proc is not None
        assert server.proc.wait(timeout=30) == 0
        server.assert_no_children_left()
    finally:
        server.close()


def _running_and_queued(server: Server, running: int, queued: int) -> bool:
    status = server.status()
    return bool(status["in_flight"] == running and status["queue_depth"] == queued)


def test_sigterm_with_requests_in_flight(reference: Reference) -> None:
    server = Server().start()
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            # temperature 0: no sampling fallback, so the answers are deterministic.
            pending = [pool.submit(server.post_audio, f, data={"temperature": "0"}) for f in
                       ("long.wav", "speech.wav", "short.wav")]
            # Two running and the third queued: all three were accepted before the
            # signal (one arriving after it would rightly get 503).
            wait_until(lambda: _running_and_queued(server, 2, 1), 30,
                       "two requests running and one queued")
            server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            responses = [p.result(timeout=90) for p in pending]
        for fixture, response in zip(("long.wav", "speech.wav", "short.wav"), responses):
            assert response.status_code == 200, response.text
            assert response.json()["text"] == reference.text(fixture, temperature=0.0)
        assert server.proc.wait(timeout=30) == 0  # type: ignore[union-attr]
        server.assert_no_children_left()
    finally:
        server.close()


def test_recycle_by_job_count(reference: Reference) -> None:
    config = DEFAULT_CONFIG.replace("[pool]", "[pool]\nmax_jobs_per_worker = 2")
    expected = reference.text("short.wav")
    with running_server(config) as server:
        first = set(server.worker_pids())
        for _ in range(6):
            response = server.post_audio("short.wav")
            assert response.status_code == 200 and response.json()["text"] == expected
            server.remember_children()
        wait_until(lambda: not set(server.worker_pids()) & first, 30, "recycled workers")
        assert "recycle: 2 jobs" in server.log()
        wait_until(server.is_ready, 30, "ready")


def test_recycle_by_rss(reference: Reference) -> None:
    config = DEFAULT_CONFIG.replace("[pool]", "[pool]\nmax_worker_rss_mb = 50")
    expected = reference.text("short.wav")
    with running_server(config) as server:
        first = set(server.worker_pids())
        for _ in range(3):
            response = server.post_audio("short.wav")
            assert response.status_code == 200 and response.json()["text"] == expected
            server.remember_children()
        wait_until(lambda: len(set(server.worker_pids()) - first) >= 1, 30, "a recycled worker")
        assert "MB > 50 MB" in server.log()


def test_cli_bad_url_is_one_line() -> None:
    for url in ("http://127.0.0.1:99999", "http://[::1"):
        result = subprocess.run([sys.executable, "-m", "supervisor.cli", "status", "--url", url],
                                capture_output=True, text=True, timeout=60, cwd=ROOT,
                                check=False)
        assert result.returncode in (1, 2), result
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_graceful_restart_lets_a_long_job_finish(reference: Reference) -> None:
    """The job outlives graceful_timeout: the worker keeps it to the end (its deadline
    is the bound), so it is neither killed nor blamed."""
    config = DEFAULT_CONFIG.replace("graceful_timeout = 20", "graceful_timeout = 1")
    with running_server(config) as server, concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(server.post_audio, "long.wav", data={"temperature": "0"})
        busy = wait_until(lambda: [w for w in server.status()["workers"]
                                   if w["state"] == "busy"], 30, "a busy worker")
        result = server.cli("restart", str(busy[0]["id"]))
        assert result.returncode == 0, result.stderr
        response = pending.result(timeout=90)
        assert response.status_code == 200, response.text
        assert response.headers["x-asrpool-attempts"] == "1"
        assert response.json()["text"] == reference.text("long.wav", temperature=0.0)
        assert server.status()["quarantined"] == []
        server.remember_children()
