"""supervisor/config.py: defaults, TOML loading, validation, overrides, helpers."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from supervisor.config import (
    Config,
    ConfigError,
    ModelConfig,
    Overrides,
    PoolConfig,
    ServerConfig,
    VadOptions,
    apply_overrides,
    config_from_mapping,
    load_config,
    resolve_model_source,
)

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "asrpool.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> tuple[ConfigError, Path]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value, path


# --------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    config = Config()
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8000
    assert len(config.models) == 1
    model = config.default_model
    assert model.name == "tiny.en"
    assert model.source == "tiny.en"
    assert model.aliases == ("whisper-1",)
    assert model.names == ("tiny.en", "whisper-1")
    assert model.workers == 2
    assert model.device == "auto"
    assert model.compute_type == "auto"
    assert model.cpu_threads == 0
    assert model.vad_filter is False
    assert model.vad == VadOptions()
    assert config.faults.enabled is False
    assert config.total_workers() == 2


def test_load_config_none_gives_defaults() -> None:
    assert load_config(None) == Config()


def test_model_lookup_by_name_and_alias() -> None:
    config = Config()
    assert config.model("tiny.en") is config.default_model
    assert config.model("whisper-1") is config.default_model
    assert config.model("large-v3") is None


def test_model_source_defaults_to_name() -> None:
    assert ModelConfig(name="base").source == "base"
    assert ModelConfig(name="base", source="/models/base").source == "/models/base"


# --------------------------------------------------------------------------- loading


def test_load_full_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
[server]
host = "0.0.0.0"
port = 9123
graceful_timeout = 5
log_format = "json"

[pool]
queue_size = 8
max_attempts = 2
quarantine_ttl = 10

[faults]
enabled = true

[[models]]
name = "tiny.en"
aliases = ["whisper-1", "tiny"]
workers = 3
device = "cpu"
device_index = [0, 1]
compute_type = "int8"
cpu_threads = 2
vad_filter = true

[models.vad]
threshold = 0.3
speech_pad_ms = 100

[[models]]
name = "base"
source = "/somewhere/base"
workers = 0
""")
    config = load_config(path)
    assert config.source == str(path)
    assert config.server.host == "0.0.0.0"
    assert config.server.port == 9123
    assert config.server.graceful_timeout == 5.0
    assert isinstance(config.server.graceful_timeout, float)
    assert config.server.log_format == "json"
    assert config.pool.queue_size == 8
    assert config.pool.max_attempts == 2
    assert config.pool.quarantine_ttl == 10.0
    assert config.faults.enabled is True
    first, second = config.models
    assert first.aliases == ("whisper-1", "tiny")
    assert first.workers == 3
    assert first.device == "cpu"
    assert first.device_index == (0, 1)
    assert first.compute_type == "int8"
    assert first.cpu_threads == 2
    assert first.vad_filter is True
    assert first.vad == VadOptions(threshold=0.3, speech_pad_ms=100)
    assert second.name == "base"
    assert second.source == "/somewhere/base"
    assert second.workers == 0
    assert second.aliases == ()
    assert config.model("tiny") is first
    assert config.total_workers() == 3


def test_empty_file_gives_defaults_with_source(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    config = load_config(path)
    assert config.source == str(path)
    assert config.server == ServerConfig()
    assert config.pool == PoolConfig()
    assert config.models == Config().models


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("bogus = 1\n", "bogus"),
        ("source = 'x'\n", "source"),
        ("[server]\nhots = 'x'\n", "server.hots"),
        ("[pool]\nbogus = 1\n", "pool.bogus"),
        ("[faults]\nenable = true\n", "faults.enable"),
        ("[[models]]\nname = 'a'\nwrkers = 2\n", "models[0].wrkers"),
        ("[[models]]\nname = 'a'\n[[models]]\nname = 'b'\nbogus = 1\n", "models[1].bogus"),
        ("[[models]]\nname = 'a'\n[models.vad]\nthreshhold = 0.3\n", "models[0].vad.threshhold"),
    ],
)
def test_unknown_key_names_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    error, path = load_error(tmp_path, text)
    assert error.key == key
    assert error.source == str(path)
    assert "unknown key" in error.message
    assert key in str(error)
    assert str(path) in str(error)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        # wrong types
        ("[server]\nport = '8000'\n", "server.port"),
        ("[server]\nport = 80.5\n", "server.port"),
        ("[server]\nport = true\n", "server.port"),
        ("[server]\nhost = 1\n", "server.host"),
        ("[server]\ngraceful_timeout = 'soon'\n", "server.graceful_timeout"),
        ("[server]\ngraceful_timeout = true\n", "server.graceful_timeout"),
        ("[faults]\nenabled = 1\n", "faults.enabled"),
        ("[[models]]\nname = 'a'\nworkers = '2'\n", "models[0].workers"),
        ("[[models]]\nname = 'a'\nvad_filter = 'yes'\n", "models[0].vad_filter"),
        ("[[models]]\nname = 'a'\naliases = 'whisper-1'\n", "models[0].aliases"),
        ("[[models]]\nname = 'a'\naliases = ['x', 2]\n", "models[0].aliases[1]"),
        ("[[models]]\nname = 'a'\ndevice_index = [0, 'x']\n", "models[0].device_index[1]"),
        ("[[models]]\nname = 'a'\nvad = 1\n", "models[0].vad"),
        ("[[models]]\nname = 'a'\n[models.vad]\nthreshold = 'high'\n", "models[0].vad.threshold"),
        ("server = 1\n", "server"),
        ("[models]\nname = 'a'\n", "models"),
        ("models = []\n", "models"),
        # out of range
        ("[server]\nport = -1\n", "server.port"),
        ("[server]\nport = 65536\n", "server.port"),
        ("[server]\nmax_upload_bytes = 0\n", "server.max_upload_bytes"),
        ("[server]\ngraceful_timeout = -1\n", "server.graceful_timeout"),
        ("[server]\nlog_format = 'xml'\n", "server.log_format"),
        ("[server]\nlog_level = 'loud'\n", "server.log_level"),
        ("[pool]\nqueue_size = 0\n", "pool.queue_size"),
        ("[pool]\nmax_attempts = -2\n", "pool.max_attempts"),
        ("[pool]\nkill_grace = -0.5\n", "pool.kill_grace"),
        ("[pool]\nquarantine_ttl = -1\n", "pool.quarantine_ttl"),
        ("[[models]]\nname = ''\n", "models[0].name"),
        ("[[models]]\nname = 'a'\nworkers = -1\n", "models[0].workers"),
        ("[[models]]\nname = 'a'\n[[models]]\nname = 'b'\nworkers = -1\n", "models[1].workers"),
        ("[[models]]\nname = 'a'\ndevice = 'tpu'\n", "models[0].device"),
        ("[[models]]\nname = 'a'\ndevice_index = []\n", "models[0].device_index"),
        ("[[models]]\nname = 'a'\ndevice_index = [-1]\n", "models[0].device_index"),
        ("[[models]]\nname = 'a'\ncompute_type = 'int4'\n", "models[0].compute_type"),
        ("[[models]]\nname = 'a'\ncpu_threads = -1\n", "models[0].cpu_threads"),
        ("[[models]]\nname = 'a'\n[models.vad]\nthreshold = 0\n", "models[0].vad.threshold"),
        ("[[models]]\nname = 'a'\n[models.vad]\nthreshold = 1.5\n", "models[0].vad.threshold"),
        ("[[models]]\nname = 'a'\n[models.vad]\nbackend = 'webrtc'\n", "models[0].vad.backend"),
        ("[[models]]\nname = 'a'\n[models.vad]\nspeech_pad_ms = -1\n",
         "models[0].vad.speech_pad_ms"),
        ("[[models]]\nname = 'a'\n[models.vad]\nmax_speech_duration_s = 0\n",
         "models[0].vad.max_speech_duration_s"),
        # duplicate names
        ("[[models]]\nname = 'a'\n[[models]]\nname = 'a'\n", "models"),
        ("[[models]]\nname = 'a'\naliases = ['x']\n[[models]]\nname = 'x'\n", "models"),
    ],
)
def test_bad_value_names_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    error, path = load_error(tmp_path, text)
    assert error.key == key
    assert error.source == str(path)
    assert str(error).startswith(f"{path}: {key}: ")


def test_duplicate_name_message_names_the_name(tmp_path: Path) -> None:
    error, _ = load_error(tmp_path, "[[models]]\nname = 'a'\n[[models]]\nname = 'a'\n")
    assert "'a'" in error.message


def test_empty_models_list_via_mapping() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"models": []}, "somewhere.toml")
    assert info.value.key == "models"
    assert str(info.value).startswith("somewhere.toml: models: ")


def test_empty_models_tuple_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        Config(models=())
    assert info.value.key == "models"


def test_invalid_toml(tmp_path: Path) -> None:
    error, path = load_error(tmp_path, "[server\nport = 1\n")
    assert error.key == "config"
    assert "not valid TOML" in error.message
    assert str(path) in str(error)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "config"
    assert "not found" in info.value.message
    assert str(path) in str(info.value)


def test_config_error_str_without_source() -> None:
    error = ConfigError("pool.x", "must be > 0")
    assert str(error) == "pool.x: must be > 0"
    assert isinstance(error, ValueError)


def test_vad_infinite_default_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "[[models]]\nname = 'a'\n[models.vad]\nmax_speech_duration_s = inf\n")
    assert math.isinf(load_config(path).models[0].vad.max_speech_duration_s)


def test_shipped_default_config_loads() -> None:
    path = ROOT / "configs" / "default.toml"
    assert path.is_file(), f"{path} is missing"
    config = load_config(path)
    assert config.source == str(path)
    assert config.models


# --------------------------------------------------------------------------- overrides


def two_model_config() -> Config:
    return Config(models=(
        ModelConfig(name="tiny.en", aliases=("whisper-1",), workers=2),
        ModelConfig(name="base", workers=1, device="cpu"),
    ))


def test_overrides_empty_is_identity() -> None:
    config = two_model_config()
    assert apply_overrides(config, Overrides()) == config


def test_overrides_server_and_first_model_only() -> None:
    config = two_model_config()
    new = apply_overrides(config, Overrides(
        host="0.0.0.0", port=9000, workers=4, device="cuda", compute_type="float16",
        cpu_threads=3, log_format="json", faults_enabled=True,
    ))
    assert new.server.host == "0.0.0.0"
    assert new.server.port == 9000
    assert new.server.log_format == "json"
    assert new.faults.enabled is True
    first = new.models[0]
    assert (first.workers, first.device, first.compute_type, first.cpu_threads) == (
        4, "cuda", "float16", 3)
    assert first.name == "tiny.en"
    assert new.models[1] == config.models[1]
    # The original is untouched (frozen).
    assert config.server.port == 8000
    assert config.models[0].workers == 2


def test_override_model_replaces_first_identity_keeps_aliases() -> None:
    new = apply_overrides(two_model_config(), Overrides(model="/models/small"))
    first = new.models[0]
    assert first.name == "/models/small"
    assert first.source == "/models/small"
    assert first.aliases == ("whisper-1",)
    assert new.models[1].name == "base"


def test_override_model_same_name_keeps_source() -> None:
    config = Config(models=(ModelConfig(name="tiny.en", source="/weights/tiny"),))
    new = apply_overrides(config, Overrides(model="tiny.en"))
    assert new.models[0].source == "/weights/tiny"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (Overrides(port=70000), "server.port"),
        (Overrides(port=-1), "server.port"),
        (Overrides(log_format="xml"), "server.log_format"),
        (Overrides(workers=-1), "models.workers"),
        (Overrides(device="tpu"), "models.device"),
        (Overrides(compute_type="int4"), "models.compute_type"),
        (Overrides(cpu_threads=-2), "models.cpu_threads"),
        (Overrides(model="base"), "models"),  # collides with the second model
    ],
)
def test_bad_override_names_command_line(overrides: Overrides, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(two_model_config(), overrides)
    assert info.value.source == "command line"
    assert info.value.key == key
    assert str(info.value).startswith(f"command line: {key}: ")


# --------------------------------------------------------------------------- threads


def test_threads_for_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    model = ModelConfig(cpu_threads=3)
    assert Config(models=(model,)).threads_for(model) == 3


@pytest.mark.parametrize(
    ("cores", "workers", "expected"),
    [
        (8, (2,), 4),
        (8, (2, 2), 2),
        (16, (3, 1), 4),
        (7, (2,), 3),
        (2, (4,), 1),  # fewer cores than workers: at least 1
        (1, (3, 3), 1),
        (None, (2,), 1),  # unknown core count
        (8, (0,), 8),  # no workers: no division by zero
    ],
)
def test_threads_for_shares_cores(monkeypatch: pytest.MonkeyPatch, cores: int | None,
                                  workers: tuple[int, ...], expected: int) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    models = tuple(ModelConfig(name=f"m{i}", workers=w) for i, w in enumerate(workers))
    config = Config(models=models)
    for model in models:
        assert config.threads_for(model) == expected


# --------------------------------------------------------------------------- model source


def test_resolve_embedded_model() -> None:
    resolved = Path(resolve_model_source("tiny.en"))
    assert resolved.is_dir()
    assert (resolved / "model.bin").is_file()


def test_resolve_existing_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "models" / "small"
    target.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model_source("models/small") == str(target.resolve())
    assert resolve_model_source(str(tmp_path / "models" / ".." / "models" / "small")) == str(
        target.resolve())


@pytest.mark.parametrize("name", ["large-v3", "Systran/faster-whisper-base", "tiny"])
def test_resolve_other_names_pass_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          name: str) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_model_source(name) == name


def test_resolve_missing_path_passes_through(tmp_path: Path) -> None:
    missing = str(tmp_path / "absent")
    assert resolve_model_source(missing) == missing


def test_resolve_file_is_not_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"")
    assert resolve_model_source(str(path)) == str(path)


@pytest.mark.parametrize("data,key", [
    ({"pool": {"kill_grace": float("nan")}}, "pool.kill_grace"),
    ({"pool": {"job_deadline_per_audio_second": float("nan")}},
     "pool.job_deadline_per_audio_second"),
    ({"server": {"graceful_timeout": float("inf")}}, "server.graceful_timeout"),
    ({"pool": {"max_attempts": 11}}, "pool.max_attempts"),
    ({"models": [{"name": "m", "vad": {"threshold": float("nan")}}]},
     "models[0].vad.threshold"),
])
def test_non_finite_and_out_of_policy_values(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data, "x.toml")
    assert info.value.key == key


def test_unbounded_max_speech_duration_is_allowed() -> None:
    config = config_from_mapping({"models": [{"name": "m",
                                              "vad": {"max_speech_duration_s": float("inf")}}]})
    assert config.models[0].vad.max_speech_duration_s == float("inf")
