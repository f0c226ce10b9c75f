"""supervisor/protocol.py: classify_exit, table-driven."""

from __future__ import annotations

import pytest

from supervisor.protocol import EXIT_BOOT_ERROR, EXIT_OK, EXIT_ORPHANED, ExitInfo, classify_exit


@pytest.mark.parametrize(
    ("exitcode", "booted", "requested", "reason", "crashed", "boot_error"),
    [
        (-11, True, False, "SIGSEGV", True, False),
        (-11, True, True, "SIGSEGV", True, False),  # a segfault is a crash even mid-stop
        (-11, False, False, "SIGSEGV", True, False),
        (-6, True, False, "SIGABRT", True, False),
        (-15, True, False, "SIGTERM", False, False),
        (-15, True, True, "SIGTERM", False, False),
        (-2, True, False, "SIGINT", False, False),
        (-9, True, False, "SIGKILL", True, False),
        (-9, True, True, "SIGKILL", False, False),
        (-9, False, True, "SIGKILL", False, False),
        (-7, True, False, "SIGBUS", True, False),
        (0, True, True, "exit 0", False, False),
        (0, True, False, "exit 0", True, False),
        (0, False, False, "exit 0", True, False),
        (3, False, False, "boot error", True, True),
        (3, False, True, "boot error", True, True),
        (3, True, False, "exit 3", True, False),
        (4, True, False, "orphaned", True, False),
        (4, True, True, "orphaned", False, False),
        (4, False, False, "orphaned", True, False),
        (1, True, False, "exit 1", True, False),
        (1, True, True, "exit 1", True, False),
        (7, True, False, "exit 7", True, False),
        (None, True, False, "unknown", True, False),
        (None, False, True, "unknown", True, False),
    ],
)
def test_classify_exit(exitcode: int | None, booted: bool, requested: bool, reason: str,
                       crashed: bool, boot_error: bool) -> None:
    info = classify_exit(exitcode, booted=booted, requested=requested)
    assert info == ExitInfo(exitcode, reason, crashed=crashed, boot_error=boot_error)


def test_requested_defaults_to_false() -> None:
    assert classify_exit(-9, booted=True).crashed is True
    assert classify_exit(0, booted=True).crashed is True


def test_unknown_signal_number() -> None:
    info = classify_exit(-200, booted=True)
    assert info.exitcode == -200
    assert info.reason == "signal 200"
    assert info.crashed is True


def test_exit_code_constants() -> None:
    assert (EXIT_OK, EXIT_BOOT_ERROR, EXIT_ORPHANED) == (0, 3, 4)
