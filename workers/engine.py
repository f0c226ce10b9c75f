"""The one place that imports faster_whisper. Runs in the worker process only."""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from supervisor.protocol import WorkerSpec

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """The upload is not audio the worker can use (undecodable, empty, too long)."""


class OptionsError(ValueError):
    """A decoding option the model rejected."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when CTranslate2 sees a GPU, else the CPU."""
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def resolve_compute_type(compute_type: str, device: str) -> str:
    """``auto`` is int8 on the CPU and float16 on CUDA."""
    if compute_type != "auto":
        return compute_type
    return "float16" if device == "cuda" else "int8"


@dataclass
class Decoded:
    audio: np.ndarray[Any, np.dtype[np.float32]]
    seconds: float
    decode_seconds: float


class Engine:
    """A loaded WhisperModel and the operations a job may ask of it."""

    def __init__(self, spec: WorkerSpec) -> None:
        import tqdm
        from faster_whisper import WhisperModel

        # tqdm's default lock is a multiprocessing semaphore, registered with the
        # parent's resource tracker and leaked whenever a worker is killed. A
        # worker is single-process: a thread lock is all it needs.
        tqdm.tqdm.set_lock(threading.RLock())

        self.spec = spec
        self.device = resolve_device(spec.device)
        self.compute_type = resolve_compute_type(spec.compute_type, self.device)
        index: int | list[int] = list(spec.device_index)
        if len(spec.device_index) == 1:
            index = spec.device_index[0]
        started = time.monotonic()
        self.model = WhisperModel(
            spec.model_path,
            device=self.device,
            device_index=index,
            compute_type=self.compute_type,
            cpu_threads=spec.cpu_threads,
        )
        self.load_seconds = time.monotonic() - started
        self._silero: Any = None

    # ------------------------------------------------------------------ audio

    def decode(self, data: bytes) -> Decoded:
        """Decode any container/codec PyAV reads into 16 kHz mono float32."""
        from faster_whisper import decode_audio

        started = time.monotonic()
        if not data:
            raise AudioError("the uploaded file is empty")
        declared = declared_seconds(data)
        if declared is not None and declared > self.spec.max_audio_seconds + 1:
            # Refuse before decoding: a few MB of compressed silence can decode into
            # gigabytes of samples.
            raise AudioError(
                f"the audio is {declared:.1f} s long, over the limit of "
                f"{self.spec.max_audio_seconds:g} s"
            )
        try:
            audio = decode_audio(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
        except Exception as exc:  # noqa: BLE001 - PyAV raises many types on hostile media
            raise AudioError(f"could not decode the audio: {exc}") from None
        if audio.size == 0:
            raise AudioError("the uploaded file holds no audio samples")
        seconds = audio.size / SAMPLE_RATE
        if seconds > self.spec.max_audio_seconds:
            raise AudioError(
                f"the audio is {seconds:.1f} s long, over the limit of "
                f"{self.spec.max_audio_seconds:g} s"
            )
        return Decoded(audio, seconds, time.monotonic() - started)

    # ------------------------------------------------------------------ tasks

    def run(self, task: str, audio: np.ndarray[Any, np.dtype[np.float32]],
            options: dict[str, Any]) -> dict[str, Any]:
        if task == "timestamps":
            return {"segments": self.speech_timestamps(audio, options.get("vad") or {})}
        return self.transcribe(audio, task, options)

    def transcribe(self, audio: np.ndarray[Any, np.dtype[np.float32]], task: str,
                   options: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(options)
        vad = kwargs.pop("vad", None)
        if kwargs.get("vad_filter") and vad:
            backend = vad.get("backend", "onnx")
            vad_params = {k: v for k, v in vad.items() if k != "backend"}
            if backend == "silero-vad":
                # faster-whisper's VAD is its bundled ONNX model; another backend
                # gives the speech regions as clip timestamps instead.
                kwargs["vad_filter"] = False
                spans = self.speech_timestamps(audio, vad)
                if not spans:
                    return _empty_result(audio, task)
                kwargs["clip_timestamps"] = [t for s in spans for t in (s["start"], s["end"])]
            else:
                kwargs["vad_parameters"] = vad_params
        try:
            segments_iter, info = self.model.transcribe(audio, task=task, **kwargs)
            segments = [_segment_dict(s) for s in segments_iter]
        except ValueError as exc:
            raise OptionsError(str(exc)) from None
        return {
            "task": task,
            "language": info.language,
            "language_probability": info.language_probability,
            "duration": info.duration,
            "duration_after_vad": info.duration_after_vad,
            "segments": segments,
        }

    def speech_timestamps(self, audio: np.ndarray[Any, np.dtype[np.float32]],
                          vad: dict[str, Any]) -> list[dict[str, float]]:
        """Speech regions in seconds, from the configured VAD backend."""
        backend = vad.get("backend", "onnx")
        params = {k: v for k, v in vad.items() if k != "backend"}
        if backend == "silero-vad":
            return self._silero_timestamps(audio, params)
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        chunks = get_speech_timestamps(audio, VadOptions(**params))
        return [{"start": round(c["start"] / SAMPLE_RATE, 3),
                 "end": round(c["end"] / SAMPLE_RATE, 3)} for c in chunks]

    def _silero_timestamps(self, audio: np.ndarray[Any, np.dtype[np.float32]],
                           params: dict[str, Any]) -> list[dict[str, float]]:
        try:
            import silero_vad
            import torch
        except ImportError:
            raise OptionsError(
                "vad_backend 'silero-vad' needs the optional extra: pip install 'asrpool[silero]'",
                param="vad_backend",
            ) from None
        if self._silero is None:
            torch.set_num_threads(max(1, self.spec.cpu_threads))
            self._silero = silero_vad.load_silero_vad(onnx=False)
        max_speech = params.get("max_speech_duration_s", float("inf"))
        spans = silero_vad.get_speech_timestamps(
            torch.from_numpy(audio),
            self._silero,
            threshold=params.get("threshold", 0.5),
            sampling_rate=SAMPLE_RATE,
            min_speech_duration_ms=params.get("min_speech_duration_ms", 0),
            max_speech_duration_s=max_speech,
            min_silence_duration_ms=params.get("min_silence_duration_ms", 2000),
            speech_pad_ms=params.get("speech_pad_ms", 400),
            return_seconds=False,
        )
        return [{"start": round(s["start"] / SAMPLE_RATE, 3),
                 "end": round(s["end"] / SAMPLE_RATE, 3)} for s in spans]


def declared_seconds(data: bytes) -> float | None:
    """The duration a container declares in its header, without decoding; None when
    it declares none (raw streams) or cannot be opened (the decoder then says why)."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if container.duration is not None:
                return float(container.duration) / av.time_base
            stream = next(iter(container.streams.audio), None)
            if stream is not None and stream.duration is not None and stream.time_base:
                return float(stream.duration * stream.time_base)
    except Exception:  # noqa: BLE001 - hostile media: decode_audio reports it properly
        return None
    return None


def _empty_result(audio: np.ndarray[Any, np.dtype[np.float32]], task: str) -> dict[str, Any]:
    return {"task": task, "language": "en", "language_probability": 1.0,
            "duration": audio.size / SAMPLE_RATE, "duration_after_vad": 0.0, "segments": []}


def _segment_dict(segment: Any) -> dict[str, Any]:
    words = segment.words
    return {
        "id": segment.id,
        "seek": segment.seek,
        "start": segment.start,
        "end": segment.end,
        "text": segment.text,
        "tokens": list(segment.tokens),
        "temperature": segment.temperature,
        "avg_logprob": segment.avg_logprob,
        "compression_ratio": segment.compression_ratio,
        "no_speech_prob": segment.no_speech_prob,
        "words": None if words is None else [
            {"word": w.word, "start": w.start, "end": w.end, "probability": w.probability}
            for w in words
        ],
    }
