"""Shared test helpers: waiting on events with a deadline, and a real server."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

T = TypeVar("T")


class Timeout(AssertionError):
    pass


def wait_until(predicate: Callable[[], T], timeout: float, message: str = "",
               interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)  # wait_until: the only pause, bounded by the deadline


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def process_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


DEFAULT_CONFIG = """
[server]
graceful_timeout = 20

[pool]
job_deadline_base = 60

[[models]]
name = "tiny.en"
aliases = ["whisper-1"]
workers = 2
cpu_threads = 1
"""


class Server:
    """A real ``asrpool serve`` in a child process, on a free loopback port."""

    def __init__(self, config: str = DEFAULT_CONFIG, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="asrpool-test-")
        self.config_path = Path(self._dir.name) / "asrpool.toml"
        self.config_path.write_text(config)
        self.log_path = Path(self._dir.name) / "server.log"
        self.args = args
        self.env = {**os.environ, "ASRPOOL_RUNTIME_DIR": self._dir.name, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.children: set[int] = set()
        self._log: BinaryIO | None = None

    def start(self, wait_ready: bool = True, timeout: float = 60,
              new_session: bool = False) -> Server:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.cli", "serve", "--config", str(self.config_path),
             "--port", str(self.port), *self.args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env,
            start_new_session=new_session,
        )
        if wait_ready:
            # /ready is 200 once each model has one ready worker; tests start from a
            # pool whose every worker is ready.
            wait_until(self.all_ready, timeout, "every worker ready")
            self.remember_children()
        return self

    def all_ready(self) -> bool:
        if not self.is_ready():
            return False
        workers = self.ready_body()["workers"]
        return bool(workers) and all(w["state"] == "ready" for w in workers)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def is_ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return httpx.get(self.url + "/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def ready_body(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(self.url + "/ready", timeout=5).json()
        return body

    def worker_pids(self) -> dict[int, int]:
        """Worker id -> pid of the running workers, from /ready."""
        return {w["id"]: w["pid"] for w in self.ready_body()["workers"] if w["pid"]}

    def remember_children(self) -> None:
        """Record every descendant, so teardown can check none is left behind."""
        with contextlib.suppress(psutil.NoSuchProcess):
            self.children |= {p.pid for p in psutil.Process(self.pid).children(recursive=True)}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        self.remember_children()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(f"server did not stop within {timeout}s:\n{self.log()}")
        return self.proc.returncode

    def assert_no_children_left(self, timeout: float = 5) -> None:
        wait_until(lambda: all(process_gone(p) for p in self.children), timeout,
                   f"children {sorted(self.children)} to exit")

    def close(self) -> None:
        """Teardown: stop, kill what is left, and fail if anything stayed behind."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.stop()
        finally:
            for pid in self.children:
                if not process_gone(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if self._log is not None:
                self._log.close()
            self._dir.cleanup()

    def token(self) -> str:
        """The admin token the server generated into its runtime file."""
        import json

        data = json.loads((Path(self._dir.name) / f"admin-{self.port}.json").read_text())
        token: str = data["token"]
        return token

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None,
              timeout: float = 120) -> httpx.Response:
        return httpx.request(method, self.url + path, json=body, timeout=timeout,
                             headers={"Authorization": f"Bearer {self.token()}"})

    def status(self) -> dict[str, Any]:
        response = self.admin("GET", "/admin/status")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run ``asrpool ARGS --url <this server>`` as the same user would."""
        return subprocess.run(
            [sys.executable, "-m", "supervisor.cli", *args, "--url", self.url],
            capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=self.env,
            check=False)

    def post_audio(self, fixture: str, path: str = "/v1/audio/transcriptions",
                   data: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                   timeout: float = 60) -> httpx.Response:
        with open(FIXTURES / fixture, "rb") as fh:
            return httpx.post(self.url + path, files={"file": (fixture, fh)},
                              data=data or {}, headers=headers, timeout=timeout)


@contextlib.contextmanager
def running_server(config: str = DEFAULT_CONFIG, args: tuple[str, ...] = (),
                   env: dict[str, str] | None = None) -> Iterator[Server]:
    server = Server(config, args, env)
    try:
        server.start()
        yield server
        assert server.stop() == 0, server.log()
        server.assert_no_children_left()
    finally:
        server.close()


class Load:
    """Clients sending a fixture in a loop until stopped; every answer is kept.

    Bounded: each client stops after ``max_requests`` or ``max_seconds``.
    """

    def __init__(self, server: Server, clients: int = 2, fixture: str = "short.wav",
                 max_requests: int = 200, max_seconds: float = 120) -> None:
        import threading

        self.server = server
        self.fixture = fixture
        self.results: list[tuple[int, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._max_requests = max_requests
        self._deadline = time.monotonic() + max_seconds
        self._threads = [threading.Thread(target=self._client, daemon=True)
                         for _ in range(clients)]

    def _client(self) -> None:
        for _ in range(self._max_requests):
            if self._stop.is_set() or time.monotonic() > self._deadline:
                return
            try:
                response = self.server.post_audio(self.fixture, timeout=120)
                with self._lock:
                    self.results.append((response.status_code, response.text))
            except httpx.HTTPError as exc:
                with self._lock:
                    self.errors.append(repr(exc))

    def __enter__(self) -> Load:  # noqa: PYI034
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self) -> int:
        with self._lock:
            return len(self.results) + len(self.errors)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=180)
            assert not t.is_alive(), "a load client did not finish"

    def failures(self, expected_text: str) -> list[str]:
        """Every answer that is not a 200 with the expected transcript."""
        import json

        bad = list(self.errors)
        for status, body in self.results:
            if status != 200 or json.loads(body).get("text") != expected_text:
                bad.append(f"{status}: {body[:200]}")
        return bad


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None,
                        code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    body: dict[str, Any] = response.json()
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error
