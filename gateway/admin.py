"""The admin API: status, restart, scale, drain, stop and fault injection.

Every route needs ``Authorization: Bearer <token>``; the token is compared in
constant time. The routes call the pool's coroutines and never a process.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.errors import APIError, InvalidParameter
from supervisor.errors import PoolError
from supervisor.pool import Pool, RestartFailed
from supervisor.protocol import FAULT_KINDS, FAULT_WHEN, Fault

Endpoint = Callable[[Request], Awaitable[Response]]


def _pool(request: Request) -> Pool:
    pool: Pool = request.app.state.pool
    return pool


def authorize(request: Request) -> None:
    token: str = request.app.state.admin_token
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if not token or scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()):
        raise APIError(401, "missing or wrong admin token (Authorization: Bearer <token>)",
                       code="invalid_token", type="authentication_error",
                       headers={"WWW-Authenticate": "Bearer"})


def admin(endpoint: Endpoint) -> Endpoint:
    async def guarded(request: Request) -> Response:
        authorize(request)
        return await endpoint(request)
    guarded.__name__ = endpoint.__name__
    return guarded


async def _json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body:
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        raise InvalidParameter("body", "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise InvalidParameter("body", "the body must be a JSON object")
    return data


def _int_field(data: dict[str, Any], name: str, *, minimum: int = 0) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidParameter(name, f"'{name}' must be an integer >= {minimum}")
    return value


@admin
async def status(request: Request) -> Response:
    pool = _pool(request)
    body = pool.status()
    body["faults_enabled"] = pool.config.faults.enabled
    return JSONResponse(body)


@admin
async def restart(request: Request) -> Response:
    data = await _json(request)
    ids = data.get("workers")
    force = bool(data.get("force", False))
    if ids is not None and (not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids)):
        raise InvalidParameter("workers", "'workers' must be a list of worker ids")
    if not ids and not data.get("all"):
        raise InvalidParameter("workers", "name the workers to restart, or set 'all'")
    pool = _pool(request)
    try:
        replaced = await pool.restart(ids or None, force=force)
    except KeyError as exc:
        raise APIError(404, f"no worker with id {exc.args[0]}", param="workers",
                       code="worker_not_found") from None
    except RestartFailed as exc:
        raise APIError(500, str(exc), code="restart_failed", type="server_error") from None
    return JSONResponse({"restarted": replaced, "status": pool.status()})


@admin
async def scale(request: Request) -> Response:
    data = await _json(request)
    n = _int_field(data, "workers")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidParameter("model", "'model' must be a string")
    pool = _pool(request)
    try:
        result = await pool.scale(model or pool.config.default_model.name, n)
    except RestartFailed as exc:
        raise APIError(500, str(exc), code="scale_failed", type="server_error") from None
    return JSONResponse({**result, "status": pool.status()})


@admin
async def drain(request: Request) -> Response:
    pool = _pool(request)
    finished = await pool.drain()
    return JSONResponse({"drained": True, "finished_in_time": finished,
                         "status": pool.status()})


@admin
async def stop(request: Request) -> Response:
    """Drain, then stop the server process (it exits 0)."""
    pool = _pool(request)
    finished = await pool.drain()
    shutdown: Callable[[], None] | None = getattr(request.app.state, "shutdown", None)
    if shutdown is None:
        raise APIError(501, "this server cannot be stopped over the API", code="unsupported",
                       type="server_error")
    shutdown()
    return JSONResponse({"stopping": True, "finished_in_time": finished})


@admin
async def inject(request: Request) -> Response:
    pool = _pool(request)
    if not pool.config.faults.enabled:
        raise APIError(403, "fault injection is disabled on this server "
                       "(start it with --enable-faults)", code="faults_disabled",
                       type="permission_error")
    data = await _json(request)
    worker = _int_field(data, "worker")
    kind = data.get("fault")
    when = data.get("when", "now")
    arg = data.get("arg", 0)
    if kind not in FAULT_KINDS:
        raise InvalidParameter("fault", f"'fault' must be one of {', '.join(FAULT_KINDS)}")
    if when not in FAULT_WHEN:
        raise InvalidParameter("when", f"'when' must be one of {', '.join(FAULT_WHEN)}")
    if isinstance(arg, bool) or not isinstance(arg, (int, float)):
        raise InvalidParameter("arg", "'arg' must be a number")
    if worker not in pool.workers:
        raise APIError(404, f"no worker with id {worker}", param="worker",
                       code="worker_not_found")
    try:
        pool.inject(worker, Fault(kind, when, float(arg)))
    except PoolError as exc:
        raise APIError(409, str(exc), param="worker", code="worker_not_running") from None
    return JSONResponse({"injected": {"worker": worker, "fault": kind, "when": when,
                                      "arg": arg}})


@admin
async def clear_quarantine(request: Request) -> Response:
    return JSONResponse({"cleared": _pool(request).quarantine.clear()})


routes = [
    Route("/admin/status", status, methods=["GET"]),
    Route("/admin/restart", restart, methods=["POST"]),
    Route("/admin/scale", scale, methods=["POST"]),
    Route("/admin/drain", drain, methods=["POST"]),
    Route("/admin/stop", stop, methods=["POST"]),
    Route("/admin/inject", inject, methods=["POST"]),
    Route("/admin/quarantine/clear", clear_quarantine, methods=["POST"]),
]
