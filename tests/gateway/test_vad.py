"""Silero VAD through the API: speech timestamps, vad_filter, both backends, and a
second model with VAD on by default (routing by the model field)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import Reference
from tests.helpers import FIXTURES, Server, assert_openai_error, running_server

TWO_MODELS = """
[server]
graceful_timeout = 20

[[models]]
name = "tiny.en"
workers = 1
cpu_threads = 1

[[models]]
name = "tiny-vad"
source = "tiny.en"
workers = 1
cpu_threads = 1
vad_filter = true

[models.vad]
min_silence_duration_ms = 500
"""

KNOWN = json.loads((FIXTURES / "gaps.json").read_text())
TIGHT = {"min_silence_duration_ms": "500", "speech_pad_ms": "0"}
TIMESTAMPS = "/v1/audio/speech/timestamps"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running_server(TWO_MODELS) as s:
        yield s


def _spans(response: object) -> list[tuple[float, float]]:
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]
    return [(s["start"], s["end"]) for s in response.json()]  # type: ignore[attr-defined]


@pytest.mark.parametrize("backend", ["onnx", "silero-vad"])
def test_speech_timestamps_match_known_silences(server: Server, backend: str) -> None:
    spans = _spans(server.post_audio("gaps.wav", path=TIMESTAMPS,
                                     data={**TIGHT, "vad_backend": backend}))
    assert len(spans) == len(KNOWN["speech"])
    for (start, end), (want_start, want_end) in zip(spans, KNOWN["speech"]):
        assert abs(start - want_start) <= 0.3 and abs(end - want_end) <= 0.3, spans


@pytest.mark.parametrize("fixture,data", [
    ("gaps.wav", {}),
    ("gaps.wav", TIGHT),
    ("long.wav", TIGHT),
    ("speech.wav", {}),
])
def test_backends_agree(server: Server, fixture: str, data: dict[str, str]) -> None:
    onnx = _spans(server.post_audio(fixture, path=TIMESTAMPS,
                                    data={**data, "vad_backend": "onnx"}))
    silero = _spans(server.post_audio(fixture, path=TIMESTAMPS,
                                      data={**data, "vad_backend": "silero-vad"}))
    assert len(onnx) == len(silero) >= 1
    for a, b in zip(onnx, silero):
        assert abs(a[0] - b[0]) <= 0.1 and abs(a[1] - b[1]) <= 0.1, (onnx, silero)


@pytest.mark.parametrize("fixture", ["silence.wav", "noise.wav"])
def test_no_speech_gives_no_segments(server: Server, fixture: str) -> None:
    for backend in ("onnx", "silero-vad"):
        assert _spans(server.post_audio(fixture, path=TIMESTAMPS,
                                        data={"vad_backend": backend})) == []


def test_vad_filter_invents_no_text(server: Server, reference: Reference) -> None:
    # Without VAD, Whisper hallucinates on silence; with it, nothing is invented.
    assert reference.text("silence.wav") != ""
    for fixture in ("silence.wav", "noise.wav"):
        for backend in ("onnx", "silero-vad"):
            response = server.post_audio(fixture, data={"vad_filter": "true",
                                                        "vad_backend": backend})
            assert response.status_code == 200, response.text
            assert response.json() == {"text": ""}


@pytest.mark.parametrize("fixture", ["gaps.wav", "speech.wav", "long.wav"])
def test_vad_filter_equals_in_process(server: Server, reference: Reference,
                                      fixture: str) -> None:
    response = server.post_audio(fixture, data={"vad_filter": "true", "temperature": "0",
                                                "response_format": "verbose_json"})
    assert response.status_code == 200, response.text
    segments, _ = reference.transcribe(fixture, vad_filter=True, temperature=0.0)
    body = response.json()
    assert body["text"] == "".join(s.text for s in segments).strip()
    assert [(s["start"], s["end"]) for s in body["segments"]] == \
        [(pytest.approx(s.start), pytest.approx(s.end)) for s in segments]


def test_vad_options_reach_the_model(server: Server, reference: Reference) -> None:
    response = server.post_audio("gaps.wav", data={"vad_filter": "true", "temperature": "0",
                                                   **TIGHT})
    want = reference.text("gaps.wav", temperature=0.0, vad_filter=True,
                          vad_parameters={"min_silence_duration_ms": 500, "speech_pad_ms": 0})
    assert response.json()["text"] == want


def test_silero_backend_transcribes(server: Server) -> None:
    response = server.post_audio("gaps.wav", data={"vad_filter": "true", "temperature": "0",
                                                   "vad_backend": "silero-vad"})
    assert response.status_code == 200, response.text
    text = response.json()["text"].lower()
    assert "morning" in text and "coming" in text


def test_model_with_vad_by_default_and_routing(server: Server) -> None:
    workers = {w["id"]: w["model"] for w in server.ready_body()["workers"]}
    assert sorted(workers.values()) == ["tiny-vad", "tiny.en"]
    plain = server.post_audio("silence.wav", data={"model": "tiny.en"})
    vad = server.post_audio("silence.wav", data={"model": "tiny-vad"})
    assert plain.status_code == vad.status_code == 200
    assert workers[int(plain.headers["x-asrpool-worker"])] == "tiny.en"
    assert workers[int(vad.headers["x-asrpool-worker"])] == "tiny-vad"
    assert plain.json()["text"] != ""  # the hallucination VAD removes
    assert vad.json() == {"text": ""}
    # A request may still turn the model's default off.
    off = server.post_audio("silence.wav", data={"model": "tiny-vad", "vad_filter": "false"})
    assert off.json()["text"] == plain.json()["text"]


BAD_VAD = [
    ({"threshold": "1.5"}, "threshold"),
    ({"threshold": "0"}, "threshold"),
    ({"threshold": "loud"}, "threshold"),
    ({"speech_pad_ms": "-1"}, "speech_pad_ms"),
    ({"min_silence_duration_ms": "abc"}, "min_silence_duration_ms"),
    ({"min_speech_duration_ms": "-5"}, "min_speech_duration_ms"),
    ({"max_speech_duration_s": "0"}, "max_speech_duration_s"),
    ({"vad_backend": "webrtc"}, "vad_backend"),
]


@pytest.mark.parametrize("data,param", BAD_VAD)
def test_bad_vad_options(server: Server, data: dict[str, str], param: str) -> None:
    before = server.worker_pids()
    assert_openai_error(server.post_audio("short.wav", path=TIMESTAMPS, data=data), 400,
                        param=param)
    assert_openai_error(server.post_audio("short.wav", data={"vad_filter": "true", **data}),
                        400, param=param)
    assert server.worker_pids() == before


def test_timestamps_bad_audio(server: Server) -> None:
    assert_openai_error(server.post_audio("not_audio.txt", path=TIMESTAMPS), 400,
                        param="file", code="invalid_audio")
