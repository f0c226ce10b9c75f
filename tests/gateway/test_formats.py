"""gateway/formats.py: the OpenAI response formats."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.formats import (
    RESPONSE_FORMATS,
    SEGMENT_FIELDS,
    full_text,
    to_srt,
    to_verbose_json,
    to_vtt,
)


def segment(i: int, start: float, end: float, text: str,
            words: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "id": i, "seek": 0, "start": start, "end": end, "text": text,
        "tokens": [50364 + i, 1000 + i], "temperature": 0.0, "avg_logprob": -0.25,
        "compression_ratio": 1.1, "no_speech_prob": 0.01,
        "words": words,
        "extra_field": "not part of the API",
    }


def result() -> dict[str, Any]:
    return {
        "task": "transcribe",
        "language": "en",
        "duration": 3725.0,
        "segments": [
            segment(0, 0.0, 1.5, " Hello there.", words=[
                {"word": " Hello", "start": 0.0, "end": 0.6, "probability": 0.9},
                {"word": " there.", "start": 0.6, "end": 1.5, "probability": 0.8},
            ]),
            segment(1, 61.25, 62.0, " How are you?", words=[
                {"word": " How", "start": 61.25, "end": 61.5, "probability": 0.9},
                {"word": " are", "start": 61.5, "end": 61.7, "probability": 0.9},
                {"word": " you?", "start": 61.7, "end": 62.0, "probability": 0.9},
            ]),
            segment(2, 3723.456, 3725.0, "  Fine.  ", words=None),
        ],
    }


def test_response_formats() -> None:
    assert set(RESPONSE_FORMATS) == {"json", "text", "srt", "vtt", "verbose_json"}


def test_full_text() -> None:
    assert full_text(result()) == "Hello there. How are you?  Fine."


def test_full_text_empty() -> None:
    assert full_text({"segments": []}) == ""
    assert full_text({"segments": [{"text": "   "}]}) == ""


def test_to_srt() -> None:
    assert to_srt(result()) == (
        "1\n"
        "00:00:00,000 --> 00:00:01,500\n"
        "Hello there.\n"
        "\n"
        "2\n"
        "00:01:01,250 --> 00:01:02,000\n"
        "How are you?\n"
        "\n"
        "3\n"
        "01:02:03,456 --> 01:02:05,000\n"
        "Fine.\n"
    )


def test_to_vtt() -> None:
    assert to_vtt(result()) == (
        "WEBVTT\n"
        "\n"
        "00:00:00.000 --> 00:00:01.500\n"
        "Hello there.\n"
        "\n"
        "00:01:01.250 --> 00:01:02.000\n"
        "How are you?\n"
        "\n"
        "01:02:03.456 --> 01:02:05.000\n"
        "Fine.\n"
    )


def test_empty_result() -> None:
    assert to_srt({"segments": []}) == ""
    assert to_vtt({"segments": []}) == "WEBVTT\n"


@pytest.mark.parametrize(
    ("seconds", "srt"),
    [
        (0.0, "00:00:00,000"),
        (0.0004, "00:00:00,000"),
        (0.0006, "00:00:00,001"),
        (0.9996, "00:00:01,000"),  # rounding carries into the seconds
        (59.9999, "00:01:00,000"),  # ... and into the minutes
        (3599.9999, "01:00:00,000"),  # ... and into the hours
        (3723.456, "01:02:03,456"),
        (36000.0, "10:00:00,000"),
        (-0.5, "00:00:00,000"),  # clamped
    ],
)
def test_srt_timestamps(seconds: float, srt: str) -> None:
    data = {"segments": [{"start": seconds, "end": seconds, "text": "x"}]}
    assert to_srt(data) == f"1\n{srt} --> {srt}\nx\n"
    vtt = srt.replace(",", ".")
    assert to_vtt(data) == f"WEBVTT\n\n{vtt} --> {vtt}\nx\n"


def test_verbose_json_without_words() -> None:
    body = to_verbose_json(result(), words=False)
    assert set(body) == {"task", "language", "duration", "text", "segments"}
    assert body["task"] == "transcribe"
    assert body["language"] == "en"
    assert body["duration"] == 3725.0
    assert body["text"] == "Hello there. How are you?  Fine."
    assert len(body["segments"]) == 3
    for seg, source in zip(body["segments"], result()["segments"]):
        assert tuple(seg) == SEGMENT_FIELDS
        assert seg == {k: source[k] for k in SEGMENT_FIELDS}
        assert "words" not in seg
        assert "extra_field" not in seg


def test_verbose_json_with_words() -> None:
    body = to_verbose_json(result(), words=True)
    assert set(body) == {"task", "language", "duration", "text", "segments", "words"}
    assert body["words"] == [
        {"word": " Hello", "start": 0.0, "end": 0.6},
        {"word": " there.", "start": 0.6, "end": 1.5},
        {"word": " How", "start": 61.25, "end": 61.5},
        {"word": " are", "start": 61.5, "end": 61.7},
        {"word": " you?", "start": 61.7, "end": 62.0},
    ]
    for seg in body["segments"]:
        assert tuple(seg) == SEGMENT_FIELDS


def test_verbose_json_words_all_none() -> None:
    data = result()
    for s in data["segments"]:
        s["words"] = None
    assert to_verbose_json(data, words=True)["words"] == []


def test_segment_fields() -> None:
    assert SEGMENT_FIELDS == ("id", "seek", "start", "end", "text", "tokens", "temperature",
                              "avg_logprob", "compression_ratio", "no_speech_prob")
