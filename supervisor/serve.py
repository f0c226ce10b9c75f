"""``asrpool serve``: the pool and the gateway in one foreground process.

The process is the supervisor of the workers and runs the uvicorn server on the
same event loop. SIGTERM or Ctrl-C drain it: /ready turns 503, new requests get
503, in-flight requests finish within ``graceful_timeout``, the workers stop,
and the process exits 0. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import socket
import sys
import threading
from collections.abc import Generator
from types import FrameType
from typing import Any

import uvicorn

from supervisor import runtime
from supervisor.config import Config, missing_extras
from supervisor.pool import BootError, Pool

logger = logging.getLogger("asrpool.supervisor")

EXIT_OK = 0
#: The configuration is unsafe to serve.
EXIT_REFUSED = 2
#: A model could not be loaded by any of its workers (gunicorn's HaltServer).
EXIT_HALTED = 3

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Server(uvicorn.Server):
    """uvicorn's server, with signals that drain the pool and an exit code of 0.

    uvicorn re-raises a captured signal after shutting down (so the process dies
    by it); a supervisor that finished cleanly exits 0 instead.
    """

    def __init__(self, config: uvicorn.Config, pool: Pool) -> None:
        super().__init__(config)
        self.pool = pool

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Signal handler: only set flags; the loop acts on them.
        self.pool.draining = True
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
            self.pool.abort_wait = True
        else:
            self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Drain the pool first, while the socket still answers: new requests get an
        OpenAI-shaped 503, in-flight ones finish within graceful_timeout and the rest
        are failed with 503. Then uvicorn closes the connections, all answered."""
        await self.pool.stop(graceful=not self.force_exit)
        await super().shutdown(sockets)


class StartupRefused(RuntimeError):
    """The configuration is unsafe to serve (a public address with no token)."""


def admin_token_for(config: Config) -> tuple[str, bool]:
    """The admin token, and whether it was generated here (to be written to the
    runtime file). Refuses a non-loopback bind with no configured token."""
    token = runtime.configured_token(config.server.admin_token)
    if token:
        return token, False
    if not runtime.is_loopback(config.server.host):
        raise StartupRefused(
            f"refusing to bind {config.server.host}: a non-loopback address needs an admin "
            f"token (server.admin_token or {runtime.TOKEN_ENV})")
    return runtime.new_token(), True


def serve(config: Config) -> int:
    """Run the server in the foreground until a signal; return the exit code."""
    setup_logging(config.server.log_level, config.server.log_format)
    try:
        problems = missing_extras(config)
        if problems:
            raise StartupRefused("; ".join(problems))
        token, generated = admin_token_for(config)
    except StartupRefused as exc:
        logger.error("%s", exc)
        return EXIT_REFUSED
    return asyncio.run(_serve(config, token, generated))


async def _serve(config: Config, token: str, generated: bool) -> int:
    from gateway.app import create_app

    pool = Pool(config)
    server: Server | None = None

    def shutdown() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(pool, config, admin_token=token, shutdown=shutdown)
    uv_config = uvicorn.Config(
        app, host=config.server.host, port=config.server.port, lifespan="off",
        log_config=None, access_log=False,
        # The pool has drained by the time uvicorn waits; this is a backstop.
        timeout_graceful_shutdown=max(1, math.ceil(config.server.graceful_timeout)),
    )
    # Bind before anything else: a second server on a taken port must fail before
    # it spawns workers or touches the running server's token file.
    try:
        sock = uv_config.bind_socket()
    except (OSError, SystemExit) as exc:
        logger.error("cannot listen on %s:%s: %s", config.server.host, config.server.port,
                     exc if isinstance(exc, OSError) else "address unavailable")
        return EXIT_REFUSED
    server = Server(uv_config, pool)
    halted: list[str] = []
    port = sock.getsockname()[1]
    if generated:
        path = runtime.write_token_file(port, token, f"http://{config.server.host}:{port}")
        logger.info("admin token written to %s (mode 0600)", path)
    await pool.start(wait=False)

    async def watch_boot() -> None:
        try:
            await pool.wait_ready(config.pool.boot_timeout)
            logger.info("all models ready: %s", ", ".join(pool.models))
        except BootError as exc:
            halted.append(str(exc))
            logger.error("halting: %s", exc)
            server.should_exit = True

    watcher = asyncio.ensure_future(watch_boot())
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
        try:
            await pool.stop(graceful=not server.force_exit and not halted)
        finally:
            sock.close()
            if generated:
                runtime.remove_token_file(port)
    return EXIT_HALTED if halted else EXIT_OK
