"""Form fields of the audio endpoints, validated into worker options. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import InvalidParameter
from gateway.formats import RESPONSE_FORMATS
from supervisor.config import VAD_BACKENDS, ConfigError, ModelConfig, VadOptions
from supervisor.protocol import FAULT_KINDS, FAULT_WHEN, Fault

GRANULARITIES = ("segment", "word")
VAD_FIELDS = ("threshold", "min_speech_duration_ms", "max_speech_duration_s",
              "min_silence_duration_ms", "speech_pad_ms")


@dataclass(frozen=True)
class AudioParams:
    model: str | None
    response_format: str = "json"
    granularities: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


def _one(form: Mapping[str, Any], name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidParameter(name, f"'{name}' must be a text field")
    return value


def _float(form: Mapping[str, Any], name: str) -> float | None:
    raw = _one(form, name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidParameter(name, f"'{name}' must be a number, got {raw!r}") from None
    if math.isnan(value):
        raise InvalidParameter(name, f"'{name}' must be a number, got {raw!r}")
    return value


def _int(form: Mapping[str, Any], name: str) -> int | None:
    raw = _one(form, name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidParameter(name, f"'{name}' must be an integer, got {raw!r}") from None


def _bool(form: Mapping[str, Any], name: str) -> bool | None:
    raw = _one(form, name)
    if raw is None or raw == "":
        return None
    lowered = raw.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise InvalidParameter(name, f"'{name}' must be true or false, got {raw!r}")


def vad_options(form: Mapping[str, Any], defaults: VadOptions) -> dict[str, Any]:
    """VAD options from the form over the model's defaults, validated."""
    values: dict[str, Any] = {
        "backend": defaults.backend,
        "threshold": defaults.threshold,
        "min_speech_duration_ms": defaults.min_speech_duration_ms,
        "max_speech_duration_s": defaults.max_speech_duration_s,
        "min_silence_duration_ms": defaults.min_silence_duration_ms,
        "speech_pad_ms": defaults.speech_pad_ms,
    }
    backend = _one(form, "vad_backend")
    if backend:
        if backend not in VAD_BACKENDS:
            raise InvalidParameter("vad_backend",
                                   f"'vad_backend' must be one of {', '.join(VAD_BACKENDS)}")
        values["backend"] = backend
    for name in VAD_FIELDS:
        value: float | int | None
        value = _int(form, name) if name.endswith("_ms") else _float(form, name)
        if value is not None:
            values[name] = value
    try:
        VadOptions(**values)  # validates
    except ConfigError as exc:
        name = exc.key.split(".", 1)[-1]
        raise InvalidParameter(name, f"'{name}' {exc.message}") from None
    return values


def audio_params(form: Mapping[str, Any], task: str, model: ModelConfig,
                 granularities: list[str]) -> AudioParams:
    """Validate the transcription/translation fields into worker options."""
    response_format = _one(form, "response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise InvalidParameter("response_format", f"'response_format' must be one of "
                               f"{', '.join(RESPONSE_FORMATS)}, got {response_format!r}")
    for g in granularities:
        if g not in GRANULARITIES:
            raise InvalidParameter("timestamp_granularities[]",
                                   f"timestamp granularity must be segment or word, got {g!r}")
    words = "word" in granularities
    if words and response_format != "verbose_json":
        raise InvalidParameter("timestamp_granularities[]",
                               "word timestamps need response_format=verbose_json")

    options: dict[str, Any] = {}
    language = _one(form, "language")
    if language:
        if task == "translate":
            raise InvalidParameter("language", "translations take no 'language' field")
        options["language"] = language
    prompt = _one(form, "prompt")
    if prompt:
        options["initial_prompt"] = prompt
    temperature = _float(form, "temperature")
    if temperature is not None:
        if not 0.0 <= temperature <= 1.0:
            raise InvalidParameter("temperature", "'temperature' must be between 0 and 1")
        options["temperature"] = temperature
    beam_size = _int(form, "beam_size")
    if beam_size is not None:
        if not 1 <= beam_size <= 20:
            raise InvalidParameter("beam_size", "'beam_size' must be between 1 and 20")
        options["beam_size"] = beam_size
    if words:
        options["word_timestamps"] = True
    vad_filter = _bool(form, "vad_filter")
    if vad_filter is None:
        vad_filter = model.vad_filter
    if vad_filter:
        options["vad_filter"] = True
        options["vad"] = vad_options(form, model.vad)
    return AudioParams(_one(form, "model"), response_format, tuple(granularities), options)


def parse_fault(header: str) -> Fault:
    """``X-Asrpool-Fault: KIND[;when=WHEN][;arg=N]``, e.g. ``slow;arg=3``."""
    parts = [p.strip() for p in header.split(";") if p.strip()]
    if not parts or parts[0] not in FAULT_KINDS:
        raise InvalidParameter("X-Asrpool-Fault", f"fault kind must be one of "
                               f"{', '.join(FAULT_KINDS)}")
    kind, when, arg = parts[0], "during-job", 0.0
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key == "when" and value in FAULT_WHEN and value != "now":
            when = value
        elif key == "arg":
            try:
                arg = float(value)
            except ValueError:
                raise InvalidParameter("X-Asrpool-Fault", f"bad fault arg {value!r}") from None
        else:
            raise InvalidParameter("X-Asrpool-Fault", f"bad fault option {part!r}")
    if kind == "kill":
        raise InvalidParameter("X-Asrpool-Fault",
                               "'kill' is aimed at a worker: use the admin API")
    return Fault(kind, when, arg)
