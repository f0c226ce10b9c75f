"""The admin API against a real server: auth, status, restart, scale, inject."""

from __future__ import annotations

import concurrent.futures
import os
import stat
from pathlib import Path

import httpx

from tests.helpers import (
    DEFAULT_CONFIG,
    Server,
    assert_openai_error,
    running_server,
    wait_until,
)


def test_admin_needs_the_token(server: Server) -> None:
    url = server.url + "/admin/status"
    error = assert_openai_error(httpx.get(url), 401, code="invalid_token")
    assert error["type"] == "authentication_error"
    assert_openai_error(httpx.get(url, headers={"Authorization": "Bearer wrong"}), 401)
    assert_openai_error(httpx.get(url, headers={"Authorization": server.token()}), 401)
    assert_openai_error(httpx.post(server.url + "/admin/restart", json={"all": True}), 401)
    assert httpx.get(url, headers={"Authorization": f"Bearer {server.token()}"}
                     ).status_code == 200


def test_generated_token_file_is_private(server: Server) -> None:
    path = Path(server.env["ASRPOOL_RUNTIME_DIR"]) / f"admin-{server.port}.json"
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600
    assert len(server.token()) >= 32


def test_status_lists_every_worker(server: Server) -> None:
    status = server.status()
    assert status["ready"] is True
    assert status["queue_depth"] == 0
    assert status["in_flight"] == 0
    assert status["quarantined"] == []
    assert len(status["workers"]) == 2
    for worker in status["workers"]:
        assert worker["state"] in ("ready", "busy")
        assert worker["model"] == "tiny.en"
        assert worker["device"] == "cpu"
        assert isinstance(worker["pid"], int)
        assert worker["rss_mb"] > 10
        assert {"id", "restarts", "jobs_done", "last_exit", "uptime", "job_age"} <= set(worker)


def test_graceful_restart_of_one_worker(server: Server) -> None:
    before = {w["id"]: w["pid"] for w in server.status()["workers"]}
    victim = min(before)
    response = server.admin("POST", "/admin/restart", {"workers": [victim]})
    assert response.status_code == 200, response.text
    (new_id,) = response.json()["restarted"]
    after = {w["id"]: w["pid"] for w in server.status()["workers"]}
    assert victim not in after and new_id in after
    assert len(after) == 2
    wait_until(lambda: victim not in server.worker_pids(), 10, "the old worker to go")


def test_forced_restart_keeps_the_slot(server: Server) -> None:
    workers = {w["id"]: w for w in server.status()["workers"]}
    victim = min(workers)
    response = server.admin("POST", "/admin/restart", {"workers": [victim], "force": True})
    assert response.status_code == 200, response.text
    after = {w["id"]: w for w in server.status()["workers"]}
    assert after[victim]["pid"] != workers[victim]["pid"]
    assert after[victim]["restarts"] == workers[victim]["restarts"] + 1
    assert after[victim]["state"] == "ready"
    server.remember_children()


def test_bad_admin_requests(server: Server) -> None:
    assert_openai_error(server.admin("POST", "/admin/restart", {"workers": [999]}), 404,
                        code="worker_not_found")
    assert_openai_error(server.admin("POST", "/admin/restart", {}), 400, param="workers")
    assert_openai_error(server.admin("POST", "/admin/scale", {"workers": -1}), 400,
                        param="workers")
    assert_openai_error(server.admin("POST", "/admin/scale",
                                     {"workers": 1, "model": "nope"}), 404, param="model")


def test_inject_refused_when_faults_disabled(server: Server) -> None:
    before = server.worker_pids()
    response = server.admin("POST", "/admin/inject",
                            {"worker": min(before), "fault": "segv"})
    assert_openai_error(response, 403, code="faults_disabled")
    assert server.worker_pids() == before


def test_metrics(server: Server) -> None:
    assert server.post_audio("short.wav").status_code == 200
    assert server.post_audio("garbage.bin").status_code == 400
    response = httpx.get(server.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    path = "/v1/audio/transcriptions"
    assert f'asrpool_requests_total{{endpoint="{path}",model="tiny.en",status="200"}}' in text
    assert f'asrpool_requests_total{{endpoint="{path}",model="tiny.en",status="400"}}' in text
    for name in ("asrpool_request_duration_seconds_bucket", "asrpool_queue_wait_seconds_count",
                 "asrpool_inference_seconds_sum", "asrpool_audio_seconds_total",
                 'asrpool_workers{model="tiny.en",state="ready"}', "asrpool_queue_depth",
                 "asrpool_in_flight", "asrpool_quarantined_inputs"):
        assert name in text, name
    # The forced restart earlier in this module counted as a restart by its cause.
    assert 'asrpool_worker_restarts_total{model="tiny.en",reason="SIGKILL"}' in text


def test_metric_labels_are_bounded(server: Server) -> None:
    for i in range(3):
        httpx.post(server.url + f"/v1/audio/nothing{i}", files={"file": ("a.wav", b"x")})
    text = httpx.get(server.url + "/metrics").text
    assert 'endpoint="other"' in text
    assert "nothing0" not in text


def test_scale_to_zero_fails_queued_requests_and_back() -> None:
    config = DEFAULT_CONFIG.replace("workers = 2", "workers = 1")
    with running_server(config) as server, concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(server.post_audio, "long.wav")
        wait_until(lambda: server.status()["in_flight"] == 1, 30, "a running job")
        queued = pool.submit(server.post_audio, "short.wav")
        wait_until(lambda: server.status()["queue_depth"] == 1, 30, "a queued job")
        response = server.admin("POST", "/admin/scale", {"workers": 0})
        assert response.status_code == 200, response.text
        assert running.result(timeout=90).status_code == 200  # it ran to its end
        assert_openai_error(queued.result(timeout=30), 503)  # not left waiting
        assert server.worker_pids() == {}
        assert httpx.get(server.url + "/ready").status_code == 503
        assert server.admin("POST", "/admin/scale", {"workers": 1}).status_code == 200
        assert server.post_audio("short.wav").status_code == 200
        server.remember_children()
