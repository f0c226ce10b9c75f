"""The OpenAI-compatible audio endpoints and the health checks."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway import formats
from gateway.errors import APIError, ClientGone, InvalidParameter, pool_error_response
from gateway.metrics import Metrics
from gateway.params import audio_params, parse_fault, vad_options
from supervisor.config import Config, ModelConfig
from supervisor.dispatch import PendingJob
from supervisor.errors import PoolError
from supervisor.pool import Pool
from supervisor.protocol import Fault, JobDone

logger = logging.getLogger("asrpool.access")

FAULT_HEADER = "x-asrpool-fault"

T = TypeVar("T")


def _pool(request: Request) -> Pool:
    pool: Pool = request.app.state.pool
    return pool


def _config(request: Request) -> Config:
    config: Config = request.app.state.config
    return config


def request_id(request: Request) -> str:
    rid: str | None = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = rid
    return rid


async def read_upload(request: Request) -> tuple[FormData, bytes]:
    """The multipart form and the bytes of its ``file`` field."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidParameter("file", "the request must be multipart/form-data with a "
                               "'file' field", code="invalid_content_type")
    form = await request.form(max_files=1, max_fields=64)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        await form.close()
        raise InvalidParameter("file", "the 'file' field is required and must be a file "
                               "upload", code="missing_file")
    data = await upload.read()
    await form.close()
    if not data:
        raise InvalidParameter("file", "the uploaded file is empty", code="invalid_audio")
    return form, data


def _fault(request: Request) -> Fault | None:
    header = request.headers.get(FAULT_HEADER)
    if header is None:
        return None
    if not _config(request).faults.enabled:
        raise APIError(403, "fault injection is disabled on this server "
                       "(start it with --enable-faults)", code="faults_disabled",
                       type="permission_error")
    return parse_fault(header)


async def _run(request: Request, model: str | None, task: str, payload: bytes,
               options: dict[str, Any], fault: Fault | None) -> tuple[JobDone, PendingJob]:
    """Submit a job and log one line for the request, however it ends."""
    pool = _pool(request)
    started = time.monotonic()
    rid = request_id(request)
    request.state.model = model
    status = 200
    job: PendingJob | None = None
    done: JobDone | None = None
    try:
        result = await _until_disconnect(request, pool.submit(
            model or "", task, payload, options, fault=fault, request_id=rid))
        done, job = result
        return result
    except PoolError as exc:
        status = pool_error_response(exc).status_code
        raise
    except ClientGone:
        status = 499
        raise
    finally:
        total = time.monotonic() - started
        name = model or pool.config.default_model.name
        logger.info(
            "request %s %s model=%s status=%s worker=%s attempts=%s queue_wait=%.3f "
            "inference=%.3f audio=%.2f total=%.3f",
            rid, request.url.path, name, status, job.worker_id if job else None,
            job.attempt if job else 0, job.queue_wait if job else 0.0,
            done.inference_seconds if done else 0.0, done.audio_seconds if done else 0.0,
            total,
        )
        metrics: Metrics = request.app.state.metrics
        metrics.observe_job(name, queue_wait=job.queue_wait if job else None,
                            inference=done.inference_seconds if done else None,
                            audio=done.audio_seconds if done else None)


async def _read_job(request: Request) -> tuple[FormData, bytes, Fault | None, ModelConfig]:
    """What every audio endpoint starts with: the form and file, a fault header, and
    the model the request names."""
    form, payload = await read_upload(request)
    fault = _fault(request)
    name = form.get("model")
    model = _pool(request).resolve(name if isinstance(name, str) else None)
    request.state.model = model.name
    return form, payload, fault, model


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, but give it up if the client disconnects first: its job is
    then cancelled (skipped if still queued; its answer discarded if running)."""
    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientGone
    return task.result()


async def _audio_task(request: Request, task: str) -> Response:
    form, payload, fault, model = await _read_job(request)
    granularities = [g for key in ("timestamp_granularities[]", "timestamp_granularities")
                     for g in form.getlist(key) if isinstance(g, str)]
    params = audio_params(form, task, model, granularities)
    done, job = await _run(request, model.name, task, payload, params.options, fault)
    response = _render(done.result, params.response_format, params.granularities)
    response.headers.update(job_headers(job, done))
    return response


def job_headers(job: PendingJob, done: JobDone) -> dict[str, str]:
    """Which worker answered, after how many attempts (retries are visible), and
    where the time went (Server-Timing, in milliseconds)."""
    timing = (f"queue;dur={job.queue_wait * 1000:.1f}, "
              f"decode;dur={done.decode_seconds * 1000:.1f}, "
              f"inference;dur={done.inference_seconds * 1000:.1f}")
    return {"x-asrpool-worker": str(job.worker_id), "x-asrpool-attempts": str(job.attempt),
            "server-timing": timing}


def _render(result: dict[str, Any], response_format: str, granularities: tuple[str, ...]
            ) -> Response:
    if response_format == "text":
        return PlainTextResponse(formats.full_text(result) + "\n")
    if response_format == "srt":
        return PlainTextResponse(formats.to_srt(result))
    if response_format == "vtt":
        return PlainTextResponse(formats.to_vtt(result), media_type="text/vtt")
    if response_format == "verbose_json":
        return JSONResponse(formats.to_verbose_json(result, words="word" in granularities))
    return JSONResponse({"text": formats.full_text(result)})


async def transcriptions(request: Request) -> Response:
    return await _audio_task(request, "transcribe")


async def translations(request: Request) -> Response:
    return await _audio_task(request, "translate")


async def speech_timestamps(request: Request) -> Response:
    """Speech segments found by the VAD, in seconds."""
    form, payload, fault, model = await _read_job(request)
    options = {"vad": vad_options(form, model.vad)}
    done, job = await _run(request, model.name, "timestamps", payload, options, fault)
    return JSONResponse(done.result["segments"], headers=job_headers(job, done))


async def list_models(request: Request) -> Response:
    config = _config(request)
    created = int(_pool(request).started_at)
    data = [{"id": name, "object": "model", "created": created, "owned_by": "asrpool"}
            for m in config.models for name in m.names]
    return JSONResponse({"object": "list", "data": data})


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    pool = _pool(request)
    is_ready = pool.ready()
    body = {
        "ready": is_ready,
        "draining": pool.draining,
        "workers": [{"id": h.id, "pid": h.pid if h.alive else None, "model": h.model,
                     "state": h.state.value}
                    for h in sorted(pool.workers.values(), key=lambda h: h.id)],
    }
    return JSONResponse(body, status_code=200 if is_ready else 503)


routes = [
    Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
    Route("/v1/audio/translations", translations, methods=["POST"]),
    Route("/v1/audio/speech/timestamps", speech_timestamps, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
]
