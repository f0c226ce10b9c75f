"""``create_app(pool)``: the Starlette application in front of a worker pool."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.admin import routes as admin_routes
from gateway.errors import EXCEPTION_HANDLERS, UploadTooLarge, error_body
from gateway.metrics import Metrics, RequestMetrics
from gateway.metrics import routes as metrics_routes
from gateway.routes import routes
from supervisor.config import Config
from supervisor.pool import Pool

#: Room for the multipart framing and the text fields around the file.
FORM_OVERHEAD = 64 * 1024


class BodyLimit:
    """Refuse a request body over the limit before it is read whole: at once from
    its Content-Length, or as soon as a streamed body passes the limit."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.limit = max_upload_bytes + FORM_OVERHEAD

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_large = int(value) > self.limit
                except ValueError:
                    too_large = False
                if too_large:
                    await _send_json(send, 413, UploadTooLarge(self.max_upload_bytes))
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise UploadTooLarge(self.max_upload_bytes)
            return message

        await self.app(scope, limited_receive, send)


class RequestId:
    """Echo X-Request-ID (or a generated one) on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"),
                   None) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


async def _send_json(send: Send, status: int, exc: UploadTooLarge) -> None:
    import json

    body = json.dumps(error_body(exc.message, exc.type, exc.param, exc.code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def create_app(pool: Pool, config: Config | None = None, *, admin_token: str = "",
               shutdown: Callable[[], None] | None = None,
               extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The gateway for ``pool``; the pool runs on the same event loop.

    ``admin_token`` guards /admin/* (empty: every admin request gets 401);
    ``shutdown`` is what /admin/stop calls to end the server.
    """
    config = config or pool.config
    app = Starlette(
        routes=[*routes, *admin_routes, *metrics_routes, *extra_routes],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[Middleware(RequestId), Middleware(RequestMetrics),
                    Middleware(BodyLimit, max_upload_bytes=config.server.max_upload_bytes)],
    )
    app.state.pool = pool
    app.state.config = config
    app.state.metrics = Metrics(pool)
    app.state.admin_token = admin_token
    app.state.shutdown = shutdown
    return app
