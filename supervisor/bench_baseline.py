"""The design asrpool replaces, kept as the benchmark's comparator.

One WhisperModel in the API process, every ``transcribe()`` under a global
``threading.Lock`` (run from Starlette's thread pool so the event loop stays
free), with the time each request waited for the lock. It serves the same
``/v1/audio/transcriptions`` JSON answer as asrpool, through the same engine code,
so the benchmark compares designs, not decoders.

Run: ``python -m supervisor.bench_baseline --port P --threads N``.
"""

from __future__ import annotations

import argparse
import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from supervisor.config import EMBEDDED_MODEL, resolve_model_source
from supervisor.protocol import WorkerSpec
from workers.engine import Engine


def create_app(threads: int) -> Starlette:
    spec = WorkerSpec(worker_id=0, model_name=EMBEDDED_MODEL,
                      model_path=resolve_model_source(EMBEDDED_MODEL), device="cpu",
                      device_index=(0,), compute_type="int8", cpu_threads=threads,
                      max_audio_seconds=3 * 3600.0)
    engine = Engine(spec)
    lock = threading.Lock()

    def transcribe(data: bytes, options: dict[str, object]) -> tuple[dict[str, object], float]:
        asked = time.monotonic()
        with lock:
            waited = time.monotonic() - asked
            decoded = engine.decode(data)
            return engine.transcribe(decoded.audio, "transcribe", options), waited

    async def transcriptions(request: Request) -> Response:
        form = await request.form()
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return JSONResponse({"error": {"message": "file is required"}}, status_code=400)
        data = await upload.read()
        options: dict[str, object] = {}
        temperature = form.get("temperature")
        if isinstance(temperature, str) and temperature:
            options["temperature"] = float(temperature)
        result, waited = await run_in_threadpool(transcribe, data, options)
        text = "".join(str(s["text"]) for s in result["segments"]).strip()  # type: ignore[attr-defined]
        return JSONResponse({"text": text}, headers={"x-lock-wait": f"{waited:.4f}"})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True})

    return Starlette(routes=[Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
                             Route("/ready", ready)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    uvicorn.run(create_app(args.threads), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
