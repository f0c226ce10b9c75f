"""gateway/params.py: form fields into worker options, and the fault header."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from gateway.errors import InvalidParameter
from gateway.params import AudioParams, audio_params, parse_fault, vad_options
from supervisor.config import ModelConfig, VadOptions
from supervisor.protocol import Fault

MODEL = ModelConfig()


def params(form: dict[str, Any], task: str = "transcribe", model: ModelConfig = MODEL,
           granularities: list[str] | None = None) -> AudioParams:
    return audio_params(form, task, model, granularities or [])


def invalid(form: dict[str, Any], task: str = "transcribe", model: ModelConfig = MODEL,
            granularities: list[str] | None = None) -> InvalidParameter:
    with pytest.raises(InvalidParameter) as info:
        params(form, task, model, granularities)
    return info.value


def default_vad() -> dict[str, Any]:
    return dataclasses.asdict(ModelConfig().vad)


# --------------------------------------------------------------------------- valid


def test_empty_form() -> None:
    result = params({})
    assert result == AudioParams(model=None, response_format="json", granularities=(),
                                 options={})


def test_valid_fields_map_to_options() -> None:
    result = params({
        "model": "whisper-1",
        "response_format": "verbose_json",
        "language": "en",
        "prompt": "Hello there.",
        "temperature": "0.2",
        "beam_size": "5",
    }, granularities=["segment", "word"])
    assert result.model == "whisper-1"
    assert result.response_format == "verbose_json"
    assert result.granularities == ("segment", "word")
    assert result.options == {
        "language": "en",
        "initial_prompt": "Hello there.",
        "temperature": 0.2,
        "beam_size": 5,
        "word_timestamps": True,
    }
    assert isinstance(result.options["temperature"], float)
    assert isinstance(result.options["beam_size"], int)


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
def test_every_response_format_is_accepted(fmt: str) -> None:
    assert params({"response_format": fmt}).response_format == fmt


@pytest.mark.parametrize(("raw", "value"), [("0", 0.0), ("1", 1.0), ("0.5", 0.5), (" 0.3 ", 0.3)])
def test_temperature_bounds_inclusive(raw: str, value: float) -> None:
    assert params({"temperature": raw}).options["temperature"] == value


@pytest.mark.parametrize(("raw", "value"), [("1", 1), ("20", 20)])
def test_beam_size_bounds_inclusive(raw: str, value: int) -> None:
    assert params({"beam_size": raw}).options["beam_size"] == value


def test_empty_fields_are_absent() -> None:
    form = {"language": "", "prompt": "", "temperature": "", "beam_size": "",
            "vad_filter": "", "response_format": ""}
    result = params(form)
    assert result.options == {}
    assert result.response_format == "json"


def test_segment_granularity_adds_no_word_timestamps() -> None:
    result = params({}, granularities=["segment"])
    assert "word_timestamps" not in result.options
    assert result.granularities == ("segment",)


def test_word_granularity_with_verbose_json() -> None:
    result = params({"response_format": "verbose_json"}, granularities=["word"])
    assert result.options == {"word_timestamps": True}


def test_translate_without_language() -> None:
    result = params({"prompt": "p"}, task="translate")
    assert result.options == {"initial_prompt": "p"}


def test_translate_rejects_language() -> None:
    error = invalid({"language": "de"}, task="translate")
    assert error.param == "language"
    assert error.status == 400


@pytest.mark.parametrize("raw", ["true", "True", "1", "yes", "on", " TRUE "])
def test_vad_filter_true_adds_defaults(raw: str) -> None:
    result = params({"vad_filter": raw})
    assert result.options["vad_filter"] is True
    assert result.options["vad"] == default_vad()


@pytest.mark.parametrize("raw", ["false", "0", "no", "off"])
def test_vad_filter_false(raw: str) -> None:
    assert params({"vad_filter": raw}).options == {}


def test_vad_filter_follows_model_default() -> None:
    model = ModelConfig(vad_filter=True, vad=VadOptions(threshold=0.3, speech_pad_ms=50))
    result = params({}, model=model)
    assert result.options["vad_filter"] is True
    assert result.options["vad"]["threshold"] == 0.3
    assert result.options["vad"]["speech_pad_ms"] == 50
    # The form can switch it off.
    assert params({"vad_filter": "false"}, model=model).options == {}


def test_vad_fields_override_defaults() -> None:
    result = params({
        "vad_filter": "true",
        "vad_backend": "silero-vad",
        "threshold": "0.25",
        "min_speech_duration_ms": "100",
        "max_speech_duration_s": "30",
        "min_silence_duration_ms": "500",
        "speech_pad_ms": "0",
    })
    assert result.options["vad"] == {
        "backend": "silero-vad",
        "threshold": 0.25,
        "min_speech_duration_ms": 100,
        "max_speech_duration_s": 30.0,
        "min_silence_duration_ms": 500,
        "speech_pad_ms": 0,
    }
    assert isinstance(result.options["vad"]["min_speech_duration_ms"], int)


def test_vad_options_direct() -> None:
    values = vad_options({"threshold": "0.7"}, VadOptions())
    expected = default_vad()
    expected["threshold"] = 0.7
    assert values == expected
    assert math.isinf(values["max_speech_duration_s"])


# --------------------------------------------------------------------------- invalid


@pytest.mark.parametrize(
    ("form", "granularities", "param"),
    [
        ({"response_format": "xml"}, [], "response_format"),
        ({"response_format": "JSON"}, [], "response_format"),
        ({"temperature": "1.5"}, [], "temperature"),
        ({"temperature": "-0.1"}, [], "temperature"),
        ({"temperature": "hot"}, [], "temperature"),
        ({"temperature": "nan"}, [], "temperature"),
        ({"temperature": "NaN"}, [], "temperature"),
        ({"temperature": "inf"}, [], "temperature"),
        ({"beam_size": "0"}, [], "beam_size"),
        ({"beam_size": "21"}, [], "beam_size"),
        ({"beam_size": "-1"}, [], "beam_size"),
        ({"beam_size": "x"}, [], "beam_size"),
        ({"beam_size": "2.5"}, [], "beam_size"),
        ({}, ["char"], "timestamp_granularities[]"),
        ({"response_format": "verbose_json"}, ["segment", "char"],
         "timestamp_granularities[]"),
        ({}, ["word"], "timestamp_granularities[]"),
        ({"response_format": "json"}, ["word"], "timestamp_granularities[]"),
        ({"response_format": "srt"}, ["segment", "word"], "timestamp_granularities[]"),
        ({"vad_filter": "true", "threshold": "0"}, [], "threshold"),
        ({"vad_filter": "true", "threshold": "1"}, [], "threshold"),
        ({"vad_filter": "true", "threshold": "1.5"}, [], "threshold"),
        ({"vad_filter": "true", "threshold": "nan"}, [], "threshold"),
        ({"vad_filter": "true", "threshold": "x"}, [], "threshold"),
        ({"vad_filter": "true", "speech_pad_ms": "-1"}, [], "speech_pad_ms"),
        ({"vad_filter": "true", "speech_pad_ms": "1.5"}, [], "speech_pad_ms"),
        ({"vad_filter": "true", "min_speech_duration_ms": "-5"}, [], "min_speech_duration_ms"),
        ({"vad_filter": "true", "min_silence_duration_ms": "-5"}, [],
         "min_silence_duration_ms"),
        ({"vad_filter": "true", "max_speech_duration_s": "0"}, [], "max_speech_duration_s"),
        ({"vad_filter": "true", "vad_backend": "webrtc"}, [], "vad_backend"),
        ({"vad_filter": "maybe"}, [], "vad_filter"),
        ({"prompt": b"bytes"}, [], "prompt"),  # not a text field (e.g. an upload)
        ({"model": 1}, [], "model"),
    ],
)
def test_invalid_values(form: dict[str, Any], granularities: list[str], param: str) -> None:
    error = invalid(form, granularities=granularities)
    assert error.param == param
    assert error.status == 400
    assert error.code == "invalid_parameter"
    assert error.message


def test_vad_options_direct_invalid() -> None:
    with pytest.raises(InvalidParameter) as info:
        vad_options({"threshold": "0"}, VadOptions())
    assert info.value.param == "threshold"
    assert "threshold" in info.value.message


def test_temperature_message_names_field() -> None:
    assert "'temperature'" in invalid({"temperature": "hot"}).message


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("header", "fault"),
    [
        ("segv", Fault("segv", "during-job", 0.0)),
        ("abort", Fault("abort", "during-job", 0.0)),
        (" hang ", Fault("hang", "during-job", 0.0)),
        ("slow;arg=3", Fault("slow", "during-job", 3.0)),
        ("slow; arg=0.5", Fault("slow", "during-job", 0.5)),
        ("exit;when=next-job;arg=7", Fault("exit", "next-job", 7.0)),
        ("leak;arg=100;when=during-job", Fault("leak", "during-job", 100.0)),
        ("raise;when=next-job", Fault("raise", "next-job", 0.0)),
        ("segv;", Fault("segv", "during-job", 0.0)),
    ],
)
def test_parse_fault(header: str, fault: Fault) -> None:
    parsed = parse_fault(header)
    assert parsed == fault
    assert isinstance(parsed.arg, float)


@pytest.mark.parametrize(
    "header",
    [
        "",
        ";",
        "explode",
        "SEGV",
        "kill",
        "kill;when=next-job",
        "segv;when=now",  # only the admin API injects "now"
        "segv;when=later",
        "segv;bogus=1",
        "segv;arg",
        "slow;arg=x",
        "slow;arg=",
        "arg=3",
    ],
)
def test_parse_fault_refused(header: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        parse_fault(header)
    assert info.value.param == "X-Asrpool-Fault"
    assert info.value.status == 400


def test_parse_fault_kill_message() -> None:
    with pytest.raises(InvalidParameter) as info:
        parse_fault("kill")
    assert "admin" in info.value.message
