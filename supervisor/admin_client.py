"""The CLI's side of the admin API: find the server and its token, call it, and turn
every failure into one readable line (never a traceback)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx

from supervisor import runtime


class CLIError(Exception):
    """A failure to report in one line, with the exit code to use."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def find_token(url: str, explicit: str | None) -> str | None:
    """``--token``, else ``ASRPOOL_ADMIN_TOKEN``, else the runtime file of the
    server on that port (written by ``asrpool serve`` for this user)."""
    if explicit:
        return explicit
    env = runtime.configured_token("")
    if env:
        return env
    try:
        port = urlsplit(url).port or 80
    except ValueError as exc:
        raise CLIError(f"bad --url {url!r}: {exc}", code=2) from None
    return runtime.read_token_file(port)


class AdminClient:
    def __init__(self, url: str, token: str | None, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None
             ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            response = httpx.request(method, self.url + path, json=body, headers=headers,
                                     timeout=self.timeout)
        except httpx.ConnectError:
            raise CLIError(f"cannot reach the server at {self.url}: is it running?") from None
        except httpx.TimeoutException:
            raise CLIError(f"the server at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise CLIError(f"request to {self.url} failed: {exc}") from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code == 401:
            hint = "" if self.token else " (no token found: pass --token or set " \
                f"{runtime.TOKEN_ENV})"
            raise CLIError(f"the server at {self.url} refused the admin token{hint}")
        if response.status_code >= 400:
            message = data["error"]["message"] if isinstance(data, dict) and "error" in data \
                else response.text.strip()
            raise CLIError(f"{response.status_code}: {message}")
        if not isinstance(data, dict):
            raise CLIError(f"unexpected answer from {self.url}: {response.text[:200]!r}")
        return data
