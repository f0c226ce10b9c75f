"""``asrpool chaos``: real faults under load, every invariant checked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from supervisor.chaos import judge, latency_summary, percentile
from tests.helpers import ROOT


@pytest.mark.timeout(300)
def test_chaos_run_loses_nothing(tmp_path: pytest.TempPathFactory) -> None:
    out = tmp_path / "report.json"  # type: ignore[operator]
    result = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "chaos", "--duration", "45", "--clients", "4",
         "--rate", "1", "--faults", "segv,abort,exit,hang,kill", "--seed", "7",
         "--out", str(out)],
        capture_output=True, text=True, timeout=280, cwd=ROOT, check=False)
    report = json.loads(out.read_text())
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert report["ok"] is True
    assert report["requests"]["lost"] == 0
    assert report["requests"]["mismatched_transcripts"] == 0
    assert report["children_left"] == 0
    assert report["final_pool"]["all_ready"] is True
    # Real faults happened, of every kind asked for, and requests were retried.
    assert set(report["faults_injected"]) == {"segv", "abort", "exit", "hang", "kill"}
    assert report["faults_injected_total"] >= 30
    assert report["restarts"] >= 10
    assert report["requests"]["retried"] >= 1
    assert report["requests"]["succeeded"] == report["requests"]["sent"]


@pytest.mark.parametrize("values,q,expected", [
    ([], 50, None),
    ([3.0], 99, 3.0),
    ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
    ([float(i) for i in range(1, 101)], 99, 99.0),
    ([float(i) for i in range(1, 101)], 50, 50.0),
    ([5.0, 1.0, 3.0], 100, 5.0),
])
def test_percentile(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


def test_latency_summary() -> None:
    assert latency_summary([0.5, 1.5, 1.0]) == {"n": 3, "p50": 1.0, "p99": 1.5}
    assert latency_summary([]) == {"n": 0, "p50": None, "p99": None}


def _report(**changes: object) -> dict[str, object]:
    report: dict[str, object] = {
        "requests": {"lost": 0, "mismatched_transcripts": 0},
        "final_pool": {"all_ready": True}, "faults_injected_total": 5, "children_left": 0,
    }
    report.update(changes)
    return report


@pytest.mark.parametrize("report,broken", [
    (_report(), set()),
    (_report(requests={"lost": 1, "mismatched_transcripts": 0}), {"no_request_lost"}),
    (_report(requests={"lost": 0, "mismatched_transcripts": 2}), {"no_transcript_differs"}),
    (_report(final_pool={"all_ready": False}), {"pool_whole_at_end"}),
    (_report(faults_injected_total=0), {"faults_were_injected"}),
    (_report(children_left=1), {"no_child_left"}),
])
def test_judge(report: dict[str, object], broken: set[str]) -> None:
    checks = judge(report)
    assert {name for name, ok in checks.items() if not ok} == broken


def test_judge_without_children_count() -> None:
    assert "no_child_left" not in judge(_report(children_left=None))


def test_judge_without_faults_demands_no_failure() -> None:
    clean = _report(fault_rate_per_s=0, faults_injected_total=0,
                    requests={"lost": 0, "mismatched_transcripts": 0, "failed_by_code": {}},
                    rolling_restarts={"done": 3, "failed": []})
    checks = judge(clean)
    assert "faults_were_injected" not in checks
    assert all(checks.values()) and checks["rolling_restarts_succeeded"]
    failed = _report(fault_rate_per_s=0, faults_injected_total=0,
                     requests={"lost": 0, "mismatched_transcripts": 0,
                               "failed_by_code": {"unavailable": 1}},
                     rolling_restarts={"done": 3, "failed": ["500: boom"]})
    checks = judge(failed)
    assert not checks["no_request_failed"] and not checks["rolling_restarts_succeeded"]
