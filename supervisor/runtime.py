"""The admin token and the runtime file through which the CLI finds it.

When no token is configured (config or ``ASRPOOL_ADMIN_TOKEN``), ``asrpool serve``
generates one and writes it to a file that only its user can read (mode 0600, in
a 0700 directory). The CLI, run by the same user on the same machine, reads it
from there by the server's port.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import tempfile
from pathlib import Path

TOKEN_ENV = "ASRPOOL_ADMIN_TOKEN"
RUNTIME_ENV = "ASRPOOL_RUNTIME_DIR"


def runtime_dir() -> Path:
    """``$ASRPOOL_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/asrpool``, else a per-user
    directory under the system's temp dir."""
    explicit = os.environ.get(RUNTIME_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "asrpool"
    return Path(tempfile.gettempdir()) / f"asrpool-{os.getuid()}"


def token_path(port: int, directory: Path | None = None) -> Path:
    return (directory or runtime_dir()) / f"admin-{port}.json"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def configured_token(config_token: str) -> str:
    """The token an operator set: the config's, else the environment's, else ''."""
    return config_token or os.environ.get(TOKEN_ENV, "")


def write_token_file(port: int, token: str, url: str) -> Path:
    """Write the generated token where only this user can read it."""
    directory = runtime_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_uid != os.getuid():
        raise PermissionError(f"{directory} belongs to another user")
    path = token_path(port)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)
        json.dump({"url": url, "token": token, "pid": os.getpid()}, fh)
    return path


def remove_token_file(port: int) -> None:
    """Remove this process's token file (never another server's on the same port)."""
    path = token_path(port)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def read_token_file(port: int, directory: Path | None = None) -> str | None:
    try:
        data = json.loads(token_path(port, directory).read_text())
    except (OSError, ValueError):
        return None
    token = data.get("token")
    return token if isinstance(token, str) else None


def new_token() -> str:
    return secrets.token_urlsafe(32)
