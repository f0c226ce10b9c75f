"""``asrpool serve`` as a process: signals, exit codes, orphans."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys

import httpx
import pytest

from tests.conftest import Reference
from tests.helpers import (
    DEFAULT_CONFIG,
    ROOT,
    Server,
    assert_openai_error,
    process_gone,
    running_server,
    wait_until,
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_with_exit_0(sig: int) -> None:
    server = Server().start()
    try:
        workers = server.worker_pids()
        assert len(workers) == 2
        assert server.stop(sig) == 0, server.log()
        server.assert_no_children_left()
        assert server.log().count("exited: exit 0") == 2  # SIGTERM: a clean exit
    finally:
        server.close()


def test_sigkill_of_the_gateway_ends_every_worker_within_2s() -> None:
    """Even a worker in the middle of a job: no orphan keeps model memory."""
    server = Server().start()
    try:
        workers = server.worker_pids()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(server.post_audio, "long.wav")
            wait_until(lambda: any(w["state"] == "busy" for w in server.ready_body()["workers"]),
                       30, "a busy worker")
            server.stop(signal.SIGKILL)
            wait_until(lambda: all(process_gone(p) for p in workers.values()), 2.0,
                       "every worker to exit after the gateway's SIGKILL")
            with pytest.raises(httpx.HTTPError):
                pending.result(timeout=10)
    finally:
        server.close()


def test_model_that_cannot_load_halts_without_crash_looping(tmp_path: object) -> None:
    config = DEFAULT_CONFIG.replace('name = "tiny.en"',
                                    'name = "broken"\nsource = "/nonexistent/model/dir"')
    server = Server(config)
    try:
        server.start(wait_ready=False)
        assert server.proc is not None
        code = server.proc.wait(timeout=60)
        log = server.log()
        assert code == 3, log
        assert "cannot load model 'broken'" in log
        assert log.count(": spawned") == 2  # one per worker, never respawned
        server.assert_no_children_left()
    finally:
        server.close()


def test_config_error_names_key_and_file(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "bad.toml"  # type: ignore[operator]
    path.write_text("[pool]\nmax_attemps = 3\n")
    result = subprocess.run([sys.executable, "-m", "supervisor.cli", "serve", "--config",
                             str(path)], capture_output=True, text=True, timeout=30, cwd=ROOT,
                            check=False)
    assert result.returncode == 2
    assert "pool.max_attemps" in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_flags_override_the_file() -> None:
    with running_server(args=("--workers", "1", "--cpu-threads", "2")) as server:
        assert len(server.worker_pids()) == 1


def test_second_sigint_forces_the_stop() -> None:
    server = Server().start()
    try:
        workers = server.worker_pids()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(server.post_audio, "long.wav")
            wait_until(lambda: any(w["state"] == "busy" for w in server.ready_body()["workers"]),
                       30, "a busy worker")
            assert server.proc is not None
            server.proc.send_signal(signal.SIGINT)
            wait_until(lambda: "draining: waiting" in server.log(), 10,
                       "the graceful stop to wait for the request")
            server.proc.send_signal(signal.SIGINT)
            # Long before the 36 s recording could have been transcribed.
            assert server.proc.wait(timeout=10) == 0, server.log()
            # The abandoned request ends with a 503 or a closed connection, not a hang.
            try:
                response: httpx.Response | None = pending.result(timeout=30)
            except httpx.HTTPError:
                response = None
        if response is not None:
            assert_openai_error(response, 503)
        wait_until(lambda: all(process_gone(p) for p in workers.values()), 5, "workers gone")
    finally:
        server.close()


def test_a_second_server_on_a_taken_port_leaves_the_first_alone() -> None:
    with running_server() as first:
        token = first.token()
        second = subprocess.run(
            [sys.executable, "-m", "supervisor.cli", "serve", "--port", str(first.port)],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=first.env, check=False)
        assert second.returncode == 2, second.stderr
        assert "cannot listen on" in second.stderr
        assert "spawned" not in second.stderr  # it failed before starting any worker
        assert first.token() == token  # the first server's token file is untouched
        assert first.cli("status").returncode == 0


def test_sigterm_to_the_process_group_lets_jobs_finish(reference: Reference) -> None:
    """A service manager stops the whole group: every worker gets SIGTERM too, and
    must still finish the job it holds."""
    server = Server()
    try:
        server.start(wait_ready=False, new_session=True)
        wait_until(server.is_ready, 60, "ready")
        server.remember_children()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(server.post_audio, "long.wav", data={"temperature": "0"})
            wait_until(lambda: server.status()["in_flight"] == 1, 30, "a running job")
            os.killpg(server.pid, signal.SIGTERM)
            response = pending.result(timeout=90)
        assert response.status_code == 200, response.text
        assert response.json()["text"] == reference.text("long.wav", temperature=0.0)
        assert response.headers["x-asrpool-attempts"] == "1"
        assert server.proc is not None and server.proc.wait(timeout=30) == 0
        assert server.log().count(": spawned") == 2  # nothing was respawned while stopping
        server.assert_no_children_left()
    finally:
        server.close()
