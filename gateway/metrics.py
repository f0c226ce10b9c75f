"""Prometheus metrics, owned by the gateway process.

Workers report their timings in their replies; the pool reports its events
(restarts, retries, quarantines) to :meth:`Metrics.observe`; the pool's
state (workers by state, queue depth, in flight) is read at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from supervisor.pool import Pool
from supervisor.worker_handle import WorkerState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: from a few ms of overhead to many minutes of audio.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
           300.0, 600.0)


class PoolCollector(Collector):
    """Gauges read from the pool when Prometheus scrapes."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        workers = GaugeMetricFamily("asrpool_workers", "Workers by model and state",
                                    labels=["model", "state"])
        for model in self.pool.models:
            handles = self.pool.handles(model)
            for state in WorkerState:
                count = sum(1 for h in handles if h.state is state)
                workers.add_metric([model, state.value], count)
        yield workers
        depth = GaugeMetricFamily("asrpool_queue_depth", "Jobs waiting for a worker",
                                  labels=["model"])
        for model, slot in self.pool.models.items():
            depth.add_metric([model], len(slot.queue))
        yield depth
        yield GaugeMetricFamily("asrpool_in_flight", "Jobs running on a worker",
                                value=self.pool.in_flight())
        yield GaugeMetricFamily("asrpool_quarantined_inputs", "Inputs refused as poison",
                                value=len(self.pool.quarantine.entries()))


class Metrics:
    def __init__(self, pool: Pool) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("asrpool_requests", "Requests by endpoint, model and status",
                                ["endpoint", "model", "status"], registry=r)
        self.request_duration = Histogram(
            "asrpool_request_duration_seconds", "Time from request to response",
            ["endpoint", "model"], buckets=BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "asrpool_queue_wait_seconds", "Time a job waited for a worker (all attempts)",
            ["model"], buckets=BUCKETS, registry=r)
        self.inference = Histogram(
            "asrpool_inference_seconds", "Model time of a job in its worker",
            ["model"], buckets=BUCKETS, registry=r)
        self.audio_seconds = Counter("asrpool_audio_seconds", "Seconds of audio processed",
                                     ["model"], registry=r)
        self.restarts = Counter("asrpool_worker_restarts", "Worker restarts by cause",
                                ["model", "reason"], registry=r)
        self.retries = Counter("asrpool_retries", "Jobs retried after their worker died",
                               ["model", "reason"], registry=r)
        self.quarantines = Counter("asrpool_quarantines", "Inputs put in quarantine",
                                   ["model"], registry=r)
        self.faults = Counter("asrpool_faults_injected", "Faults injected by kind",
                              ["model", "kind"], registry=r)
        r.register(PoolCollector(pool))
        pool.observers.append(self.observe)

    def observe(self, event: str, data: dict[str, Any]) -> None:
        """The pool's event hook. Called on the event loop."""
        model = data.get("model", "")
        if event == "worker_restart":
            self.restarts.labels(model, data.get("reason", "unknown")).inc()
        elif event == "job_retried":
            self.retries.labels(model, data.get("reason", "unknown")).inc()
        elif event == "quarantined":
            self.quarantines.labels(model).inc()
        elif event == "fault_injected":
            self.faults.labels(model, data.get("kind", "")).inc()

    def observe_request(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, model, str(status)).inc()
        self.request_duration.labels(endpoint, model).observe(seconds)

    def observe_job(self, model: str, *, queue_wait: float | None, inference: float | None,
                    audio: float | None) -> None:
        if queue_wait is not None:
            self.queue_wait.labels(model).observe(queue_wait)
        if inference is not None:
            self.inference.labels(model).observe(inference)
        if audio is not None:
            self.audio_seconds.labels(model).inc(audio)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """Counts and times every request to the audio API, whatever its outcome (a
    400 refused before any job exists counts too)."""

    PREFIX = "/v1/audio/"
    #: Label values are bounded: unknown paths under the prefix count as "other".
    ENDPOINTS = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations",
                           "/v1/audio/speech/timestamps"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.PREFIX):
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            app = scope.get("app")
            metrics: Metrics | None = getattr(getattr(app, "state", None), "metrics", None)
            if metrics is not None:
                model = scope.get("state", {}).get("model") or ""
                endpoint = scope["path"] if scope["path"] in self.ENDPOINTS else "other"
                metrics.observe_request(endpoint, model, status, time.monotonic() - started)


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE)


routes = [Route("/metrics", metrics_endpoint, methods=["GET"])]
