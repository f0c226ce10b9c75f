"""supervisor/backoff.py, table-driven."""

from __future__ import annotations

import pytest

from supervisor.backoff import deaths_in_window, restart_delay


@pytest.mark.parametrize(
    ("recent", "max_restarts", "base", "cap", "expected"),
    [
        (0, 2, 0.5, 4.0, 0.0),
        (1, 2, 0.5, 4.0, 0.0),
        (2, 2, 0.5, 4.0, 0.0),  # the last free restart
        (3, 2, 0.5, 4.0, 0.5),  # first excess death waits base
        (4, 2, 0.5, 4.0, 1.0),
        (5, 2, 0.5, 4.0, 2.0),
        (6, 2, 0.5, 4.0, 4.0),
        (7, 2, 0.5, 4.0, 4.0),  # capped
        (50, 2, 0.5, 4.0, 4.0),
        (1, 0, 1.0, 30.0, 1.0),  # no free restarts
        (2, 0, 1.0, 30.0, 2.0),
        (6, 0, 1.0, 30.0, 30.0),
        (5, 5, 0.5, 30.0, 0.0),
        (6, 5, 0.5, 30.0, 0.5),
        (3, 2, 0.0, 30.0, 0.0),  # base 0: never waits
        (3, 2, 10.0, 4.0, 4.0),  # base above cap: capped at once
        (-1, 2, 0.5, 4.0, 0.0),
    ],
)
def test_restart_delay(recent: int, max_restarts: int, base: float, cap: float,
                       expected: float) -> None:
    delay = restart_delay(recent, max_restarts=max_restarts, base=base, cap=cap)
    assert delay == pytest.approx(expected)
    assert isinstance(delay, float)


def test_restart_delay_is_monotonic() -> None:
    delays = [restart_delay(n, max_restarts=3, base=0.25, cap=8.0) for n in range(20)]
    assert delays == sorted(delays)
    assert max(delays) == 8.0


@pytest.mark.parametrize("recent", [1028, 1030, 10_000])
def test_restart_delay_huge_count_stays_capped(recent: int) -> None:
    # A long restart_window lets deaths pile up; the delay must stay at the cap
    # rather than overflow computing base * 2**excess.
    assert restart_delay(recent, max_restarts=5, base=0.5, cap=30.0) == 30.0


@pytest.mark.parametrize(
    ("deaths", "now", "window", "expected"),
    [
        ([], 100.0, 60.0, 0),
        ([99.0], 100.0, 60.0, 1),
        ([10.0, 50.0, 90.0], 100.0, 60.0, 2),
        ([40.0], 100.0, 60.0, 1),  # exactly at the window's edge counts
        ([39.9], 100.0, 60.0, 0),
        ([0.0, 1.0, 2.0], 100.0, 60.0, 0),
        ([95.0, 96.0, 97.0, 98.0], 100.0, 60.0, 4),
        ([100.0], 100.0, 0.0, 1),
        ([99.0], 100.0, 0.0, 0),
    ],
)
def test_deaths_in_window(deaths: list[float], now: float, window: float,
                          expected: int) -> None:
    assert deaths_in_window(deaths, now, window) == expected


def test_deaths_in_window_accepts_any_iterable() -> None:
    assert deaths_in_window((t for t in (1.0, 5.0, 9.0)), 10.0, 5.0) == 2
