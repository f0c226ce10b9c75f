"""Exceptions to OpenAI-shaped error responses.

Every error the API returns has the body
``{"error": {"message", "type", "param", "code"}}``. Route code raises; the
handlers here are the one place that builds the JSON.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from supervisor.errors import (
    BadInput,
    DeadlineExceeded,
    InputCrashedWorker,
    JobError,
    PoolError,
    QueueFull,
    Unavailable,
    UnknownModel,
)

logger = logging.getLogger("asrpool.gateway")


class APIError(Exception):
    """An error the gateway itself decides (bad parameter, auth, size)."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.headers = headers or {}

    def __str__(self) -> str:
        return f"{self.status} {self.code or self.type}: {self.message}"


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class InvalidParameter(APIError):
    def __init__(self, param: str, message: str, code: str = "invalid_parameter") -> None:
        super().__init__(400, message, param=param, code=code)


class UploadTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the upload is larger than the limit of {limit} bytes",
                         param="file", code="upload_too_large")


def error_body(message: str, type: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(status: int, message: str, *, type: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type, param, code), status_code=status,
                        headers=headers)


def _retry_after(seconds: float | None) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))} if seconds else {}


#: Pool exception class -> (HTTP status, OpenAI error type).
POOL_STATUS: list[tuple[type[PoolError], int, str]] = [
    (UnknownModel, 404, "invalid_request_error"),
    (BadInput, 400, "invalid_request_error"),
    (InputCrashedWorker, 422, "invalid_request_error"),
    (QueueFull, 503, "server_error"),
    (Unavailable, 503, "server_error"),
    (DeadlineExceeded, 504, "server_error"),
    (JobError, 500, "server_error"),
]


def pool_error_response(exc: PoolError) -> JSONResponse:
    for cls, status, type_ in POOL_STATUS:
        if isinstance(exc, cls):
            break
    else:
        status, type_ = 500, "server_error"
    headers = _retry_after(getattr(exc, "retry_after", None)) if status == 503 else {}
    if status == 503 and not headers:
        headers = {"Retry-After": "5"}
    return error_response(status, exc.message, type=type_, param=exc.param, code=exc.code,
                          headers=headers)


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc.status, exc.message, type=exc.type, param=exc.param,
                          code=exc.code, headers=exc.headers)


async def handle_pool_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PoolError)
    return pool_error_response(exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
    return error_response(exc.status_code, str(exc.detail), code=codes.get(exc.status_code),
                          headers=dict(exc.headers or {}))


async def handle_client_gone(request: Request, exc: Exception) -> Response:
    """The client went away: nobody reads this answer. 499, as nginx logs it."""
    logger.info("client of %s %s disconnected before its answer", request.method,
                request.url.path)
    return Response(status_code=499)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal server error", type="server_error",
                          code="internal_error")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ClientDisconnect: handle_client_gone,
    ClientGone: handle_client_gone,
    APIError: handle_api_error,
    PoolError: handle_pool_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
