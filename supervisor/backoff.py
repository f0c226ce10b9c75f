"""Restart backoff: a pure function of past deaths and the clock."""

from __future__ import annotations

from collections.abc import Iterable


def deaths_in_window(deaths: Iterable[float], now: float, window: float) -> int:
    """How many of the death times fall within ``window`` seconds before ``now``."""
    return sum(1 for t in deaths if now - t <= window)


def restart_delay(
    recent_deaths: int,
    *,
    max_restarts: int,
    base: float,
    cap: float,
) -> float:
    """Seconds to wait before respawning a worker slot.

    The first ``max_restarts`` deaths within the window respawn at once, so a
    crash costs only the model load. Past that the slot is crash-looping: the
    delay doubles from ``base`` with each further death, up to ``cap``.

    >>> [restart_delay(n, max_restarts=2, base=0.5, cap=4) for n in range(1, 8)]
    [0.0, 0.0, 0.5, 1.0, 2.0, 4.0, 4.0]
    """
    excess = recent_deaths - max_restarts
    if excess <= 0:
        return 0.0
    # Bound the exponent: past 2**64 every useful base is over any sane cap, and an
    # unbounded one overflows a float after ~1000 deaths in a long window.
    return float(min(cap, base * 2.0 ** min(excess - 1, 64)))
