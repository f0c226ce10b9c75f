"""End to end: a real server, real workers, the real model, over HTTP."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time

import httpx
import openai
import pytest

from tests.conftest import Reference
from tests.helpers import (
    DEFAULT_CONFIG,
    FIXTURES,
    Server,
    assert_openai_error,
    process_gone,
    running_server,
    wait_until,
)


@pytest.mark.parametrize("fixture", ["speech.wav", "speech.flac", "speech.ogg"])
def test_json_equals_in_process(server: Server, reference: Reference, fixture: str) -> None:
    response = server.post_audio(fixture, data={"model": "tiny.en"})
    assert response.status_code == 200, response.text
    assert response.json() == {"text": reference.text(fixture)}
    assert response.headers["x-request-id"]


def test_text_format(server: Server, reference: Reference) -> None:
    response = server.post_audio("short.wav", data={"response_format": "text"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == reference.text("short.wav") + "\n"


def test_verbose_json_equals_in_process(server: Server, reference: Reference) -> None:
    response = server.post_audio("speech.wav", data={"response_format": "verbose_json",
                                                     "timestamp_granularities[]": "word"})
    assert response.status_code == 200, response.text
    body = response.json()
    segments, info = reference.transcribe("speech.wav", word_timestamps=True)
    assert body["task"] == "transcribe"
    assert body["language"] == info.language
    assert body["duration"] == pytest.approx(info.duration)
    assert body["text"] == "".join(s.text for s in segments).strip()
    assert [s["text"] for s in body["segments"]] == [s.text for s in segments]
    for got, want in zip(body["segments"], segments):
        assert set(got) == {"id", "seek", "start", "end", "text", "tokens", "temperature",
                            "avg_logprob", "compression_ratio", "no_speech_prob"}
        assert got["tokens"] == list(want.tokens)
        assert got["start"] == pytest.approx(want.start)
        assert got["end"] == pytest.approx(want.end)
    words = [w for s in segments for w in s.words]
    assert [w["word"] for w in body["words"]] == [w.word for w in words]
    assert body["words"][0]["start"] == pytest.approx(words[0].start)


def test_verbose_json_segments_only(server: Server, reference: Reference) -> None:
    response = server.post_audio("short.wav", data={"response_format": "verbose_json"})
    body = response.json()
    assert "words" not in body
    assert body["text"] == reference.text("short.wav")
    assert len(body["segments"]) >= 1


def test_srt_and_vtt(server: Server, reference: Reference) -> None:
    srt = server.post_audio("short.wav", data={"response_format": "srt"}).text
    vtt = server.post_audio("short.wav", data={"response_format": "vtt"}).text
    text = reference.text("short.wav")
    assert srt.startswith("1\n00:00:00,000 --> ")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")
    assert text.split()[0] in srt and text.split()[-1] in vtt


def test_options_reach_the_model(server: Server, reference: Reference) -> None:
    response = server.post_audio("speech.wav", data={"temperature": "0", "beam_size": "1"})
    assert response.json()["text"] == reference.text("speech.wav", temperature=0.0, beam_size=1)


def test_translation_endpoint(server: Server, reference: Reference) -> None:
    # tiny.en is English-only: faster-whisper transcribes whatever the task.
    response = server.post_audio("short.wav", path="/v1/audio/translations")
    assert response.status_code == 200, response.text
    assert response.json()["text"] == reference.text("short.wav", task="translate")


def test_model_alias(server: Server, reference: Reference) -> None:
    response = server.post_audio("short.wav", data={"model": "whisper-1"})
    assert response.json() == {"text": reference.text("short.wav")}


def test_models_and_health(server: Server) -> None:
    models = httpx.get(server.url + "/v1/models").json()
    assert models["object"] == "list"
    assert {m["id"] for m in models["data"]} == {"tiny.en", "whisper-1"}
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/ready")
    assert ready.status_code == 200
    assert len(ready.json()["workers"]) == 2


# ------------------------------------------------------------------------- bad input

BAD_UPLOADS = [
    ("garbage.bin", {}, 400, "file", "invalid_audio"),
    ("not_audio.txt", {}, 400, "file", "invalid_audio"),
    ("speech.wav", {"response_format": "xml"}, 400, "response_format", None),
    ("speech.wav", {"temperature": "1.5"}, 400, "temperature", None),
    ("speech.wav", {"temperature": "hot"}, 400, "temperature", None),
    ("speech.wav", {"beam_size": "0"}, 400, "beam_size", None),
    ("speech.wav", {"timestamp_granularities[]": "word"}, 400, "timestamp_granularities[]",
     None),
    ("speech.wav", {"timestamp_granularities[]": "char",
                    "response_format": "verbose_json"}, 400, "timestamp_granularities[]", None),
    ("speech.wav", {"model": "whisper-large-v9"}, 404, "model", "model_not_found"),
]


@pytest.mark.parametrize("fixture,data,status,param,code", BAD_UPLOADS)
def test_bad_input_is_refused_and_no_worker_dies(server: Server, fixture: str,
                                                 data: dict[str, str], status: int, param: str,
                                                 code: str | None) -> None:
    before = server.worker_pids()
    response = server.post_audio(fixture, data=data)
    assert_openai_error(response, status, param=param, code=code)
    assert server.worker_pids() == before


def test_empty_file(server: Server) -> None:
    before = server.worker_pids()
    response = httpx.post(server.url + "/v1/audio/transcriptions",
                          files={"file": ("empty.wav", b"")})
    assert_openai_error(response, 400, param="file", code="invalid_audio")
    assert server.worker_pids() == before


def test_missing_file_field(server: Server) -> None:
    response = httpx.post(server.url + "/v1/audio/transcriptions",
                          files={"audio": ("speech.wav", b"RIFF")}, data={"model": "tiny.en"})
    assert_openai_error(response, 400, param="file", code="missing_file")


def test_not_multipart(server: Server) -> None:
    response = httpx.post(server.url + "/v1/audio/transcriptions", json={"file": "x"})
    assert_openai_error(response, 400, param="file", code="invalid_content_type")


def test_upload_over_limit_refused_before_read(server: Server) -> None:
    before = server.worker_pids()
    big = b"\0" * (26 * 1024 * 1024)
    response = httpx.post(server.url + "/v1/audio/transcriptions",
                          files={"file": ("big.wav", big)}, timeout=60)
    assert_openai_error(response, 413, param="file", code="upload_too_large")
    assert server.worker_pids() == before


def test_streamed_upload_over_limit(server: Server) -> None:
    """No Content-Length: the body is cut off once it passes the limit."""
    def body() -> object:
        yield b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n"
        for _ in range(30):
            yield b"\0" * (1024 * 1024)
        yield b"\r\n--x--\r\n"

    response = httpx.post(server.url + "/v1/audio/transcriptions", content=body(),
                          headers={"content-type": "multipart/form-data; boundary=x"},
                          timeout=60)
    assert_openai_error(response, 413, code="upload_too_large")


def test_unknown_route_and_method(server: Server) -> None:
    assert_openai_error(httpx.get(server.url + "/v1/nothing"), 404)
    assert_openai_error(httpx.get(server.url + "/v1/audio/transcriptions"), 405)


def test_fault_header_refused_when_faults_disabled(server: Server) -> None:
    before = server.worker_pids()
    response = server.post_audio("short.wav", headers={"X-Asrpool-Fault": "segv"})
    assert_openai_error(response, 403, code="faults_disabled")
    assert server.worker_pids() == before


# ------------------------------------------------------------------------- crashes


def test_sigsegv_on_busy_worker_is_retried(server: Server, reference: Reference) -> None:
    """SIGSEGV the worker running a request: the client still gets its transcript."""
    before = server.worker_pids()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # temperature 0: no sampling fallback, so the answer is deterministic.
        future = pool.submit(server.post_audio, "long.wav", data={"temperature": "0"})
        busy = wait_until(
            lambda: [w for w in server.ready_body()["workers"] if w["state"] == "busy"],
            30, "a busy worker")
        victim = busy[0]
        os.kill(victim["pid"], signal.SIGSEGV)
        response = future.result(timeout=90)
    assert response.status_code == 200, response.text
    assert response.json()["text"] == reference.text("long.wav", temperature=0.0)
    wait_until(lambda: process_gone(victim["pid"]), 10, "the victim to be reaped")
    wait_until(server.is_ready, 30, "/ready 200 again")
    after = wait_until(lambda: len(server.worker_pids()) == 2 and server.worker_pids(), 30,
                       "two running workers")
    assert after[victim["id"]] != victim["pid"]  # the slot was respawned
    assert set(after) == set(before)
    server.remember_children()
    assert "SIGSEGV" in server.log()


def test_openai_sdk(server: Server, reference: Reference) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with open(FIXTURES / "speech.wav", "rb") as fh:
        result = client.audio.transcriptions.create(model="whisper-1", file=fh)
    assert result.text == reference.text("speech.wav")
    with open(FIXTURES / "speech.wav", "rb") as fh:
        verbose = client.audio.transcriptions.create(
            model="tiny.en", file=fh, response_format="verbose_json",
            timestamp_granularities=["word"])
    segments, _ = reference.transcribe("speech.wav", word_timestamps=True)
    assert verbose.text == "".join(s.text for s in segments).strip()
    assert [w.word for w in verbose.words] == [w.word for s in segments for w in s.words]
    assert verbose.words[-1].end == pytest.approx(segments[-1].words[-1].end)


def test_full_queue_gets_503_with_retry_after(reference: Reference) -> None:
    """One worker, a queue of one: a third concurrent request is refused, not lost."""
    config = DEFAULT_CONFIG.replace("[pool]", "[pool]\nqueue_size = 1").replace(
        "workers = 2", "workers = 1")
    with running_server(config) as server, concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(server.post_audio, "long.wav", data={"temperature": "0"})
        wait_until(lambda: server.status()["in_flight"] == 1, 30, "a running job")
        queued = pool.submit(server.post_audio, "short.wav")
        wait_until(lambda: server.status()["queue_depth"] == 1, 30, "a queued job")
        refused = server.post_audio("speech.wav")
        error = assert_openai_error(refused, 503, code="queue_full")
        assert "queue is full" in error["message"]
        assert int(refused.headers["retry-after"]) >= 1
        assert running.result(timeout=90).json()["text"] == reference.text("long.wav",
                                                                            temperature=0.0)
        assert queued.result(timeout=90).json()["text"] == reference.text("short.wav")


def test_audio_longer_than_allowed_is_refused_before_decoding() -> None:
    """Four hours of FLAC silence (under 1 MB) would decode into ~900 MB of samples:
    its header's duration refuses it, fast, and no worker is hurt."""
    config = DEFAULT_CONFIG.replace("[pool]", "[pool]\nmax_audio_seconds = 600")
    with running_server(config) as small:
        started = time.monotonic()
        response = small.post_audio("four_hours_silence.flac")
        error = assert_openai_error(response, 400, param="file", code="invalid_audio")
        assert "14400.0 s long, over the limit of 600 s" in error["message"]
        assert time.monotonic() - started < 5
        assert all(w["restarts"] == 0 and w["rss_mb"] < 600 for w in small.status()["workers"])


def test_clients_that_give_up_free_their_place_in_the_queue(reference: Reference) -> None:
    """Queued jobs of clients that disconnected never run."""
    config = DEFAULT_CONFIG.replace("workers = 2", "workers = 1")
    with running_server(config) as server, concurrent.futures.ThreadPoolExecutor(3) as pool:
        running = pool.submit(server.post_audio, "long.wav", data={"temperature": "0"})
        wait_until(lambda: server.status()["in_flight"] == 1, 30, "a running job")
        impatient = [pool.submit(server.post_audio, "short.wav", timeout=0.5)
                     for _ in range(2)]
        for future in impatient:
            with pytest.raises(httpx.TimeoutException):
                future.result(timeout=30)
        wait_until(lambda: server.status()["queue_depth"] == 0, 10, "the queue to empty")
        assert running.result(timeout=90).status_code == 200
        status = wait_until(lambda: server.status()["in_flight"] == 0 and server.status(), 30,
                            "idle")
        assert status["workers"][0]["jobs_done"] == 1  # the abandoned jobs never ran
        assert server.post_audio("short.wav").json()["text"] == reference.text("short.wav")
