"""The engine in this process: decoding limits, devices, and the VAD backends."""

from __future__ import annotations

import sys

import pytest

from supervisor.config import (
    EMBEDDED_MODEL,
    Config,
    ModelConfig,
    VadOptions,
    missing_extras,
    resolve_model_source,
)
from supervisor.protocol import WorkerSpec
from tests.helpers import FIXTURES
from workers.engine import AudioError, Engine, OptionsError, resolve_compute_type, resolve_device


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(WorkerSpec(0, EMBEDDED_MODEL, resolve_model_source(EMBEDDED_MODEL), "cpu",
                             (0,), "auto", 1, max_audio_seconds=5.0))


@pytest.mark.parametrize("device,compute,want", [
    ("cpu", "auto", "int8"), ("cuda", "auto", "float16"), ("cpu", "float32", "float32"),
])
def test_compute_type(device: str, compute: str, want: str) -> None:
    assert resolve_compute_type(compute, device) == want


def test_device_auto_is_cpu_without_gpu() -> None:
    import ctranslate2

    want = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    assert resolve_device("auto") == want
    assert resolve_device("cpu") == "cpu"


def test_engine_resolves_auto(engine: Engine) -> None:
    assert engine.device == "cpu"
    assert engine.compute_type == "int8"


def test_decode_limits(engine: Engine) -> None:
    with pytest.raises(AudioError, match="empty"):
        engine.decode(b"")
    with pytest.raises(AudioError, match="could not decode"):
        engine.decode((FIXTURES / "not_audio.txt").read_bytes())
    with pytest.raises(AudioError, match=r"6\.5 s long, over the limit of 5 s"):
        engine.decode((FIXTURES / "speech.wav").read_bytes())
    decoded = engine.decode((FIXTURES / "short.wav").read_bytes())
    assert decoded.seconds == pytest.approx(2.32, abs=0.01)


def test_missing_silero_extra_is_named(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "silero_vad", None)  # as if not installed
    audio = engine.decode((FIXTURES / "short.wav").read_bytes()).audio
    with pytest.raises(OptionsError, match=r"asrpool\[silero\]") as info:
        engine.speech_timestamps(audio, {"backend": "silero-vad"})
    assert info.value.param == "vad_backend"


def test_missing_extras_at_startup() -> None:
    silero = ModelConfig(vad=VadOptions(backend="silero-vad"))
    config = Config(models=(ModelConfig(), ModelConfig(name="b", source="tiny.en",
                                                       vad=silero.vad)))
    assert missing_extras(config, find_spec=lambda name: object()) == []
    problems = missing_extras(config, find_spec=lambda name: None)
    assert len(problems) == 1 and problems[0].startswith("models[1].vad.backend")
    assert "asrpool[silero]" in problems[0]
    assert missing_extras(Config(), find_spec=lambda name: None) == []
