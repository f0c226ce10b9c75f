"""Start a real ``asrpool serve`` in a child process (for chaos and bench runs)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from supervisor import runtime


@contextlib.contextmanager
def launched_server(config_text: str, log_path: Path | None = None
                    ) -> Iterator[tuple[str, str, Callable[[], int]]]:
    """Start ``asrpool serve`` with this config on a free loopback port.

    Yields the URL, the admin token, and a function that stops the server
    (SIGTERM) and returns how many of its child processes are still alive after.
    """
    import psutil

    with tempfile.TemporaryDirectory(prefix="asrpool-") as tmp:
        config = Path(tmp) / "asrpool.toml"
        config.write_text(config_text)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, runtime.RUNTIME_ENV: tmp}
        env.pop(runtime.TOKEN_ENV, None)
        log = open(log_path or Path(tmp) / "server.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.cli", "serve", "--config", str(config),
             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
        seen: set[int] = set()
        stop_watch = threading.Event()

        def watch_children() -> None:
            while not stop_watch.wait(0.2):
                with contextlib.suppress(psutil.Error):
                    seen.update(p.pid for p in psutil.Process(proc.pid).children(True))

        watcher = threading.Thread(target=watch_children, daemon=True)
        watcher.start()

        def stop() -> int:
            stop_watch.set()
            watcher.join()
            with contextlib.suppress(psutil.Error):
                seen.update(p.pid for p in psutil.Process(proc.pid).children(True))
            terminate(proc, timeout=60)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _alive(seen):
                time.sleep(0.05)  # reaping of children by the exiting server
            return len(_alive(seen))

        try:
            deadline = time.monotonic() + 60
            token = runtime.read_token_file(port, Path(tmp))
            while token is None and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)  # the server writes its token file as it starts
                token = runtime.read_token_file(port, Path(tmp))
            if token is None:
                log.flush()
                tail = Path(log.name).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the server did not start; its log ends:\n{tail}")
            yield f"http://127.0.0.1:{port}", token, stop
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            log.close()


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _alive(pids: set[int]) -> set[int]:
    import psutil

    alive = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
    return alive
