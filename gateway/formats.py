"""Transcription results in the OpenAI response formats."""

from __future__ import annotations

from typing import Any

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


def full_text(result: dict[str, Any]) -> str:
    """The concatenated segment texts, stripped (faster-whisper's own convention)."""
    return "".join(s["text"] for s in result["segments"]).strip()


def _timestamp(seconds: float, decimal: str) -> str:
    ms = round(max(0.0, seconds) * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


def to_srt(result: dict[str, Any]) -> str:
    blocks = []
    for i, s in enumerate(result["segments"], start=1):
        blocks.append(f"{i}\n{_timestamp(s['start'], ',')} --> {_timestamp(s['end'], ',')}\n"
                      f"{s['text'].strip()}\n")
    return "\n".join(blocks)


def to_vtt(result: dict[str, Any]) -> str:
    blocks = ["WEBVTT\n"]
    for s in result["segments"]:
        blocks.append(f"{_timestamp(s['start'], '.')} --> {_timestamp(s['end'], '.')}\n"
                      f"{s['text'].strip()}\n")
    return "\n".join(blocks)


SEGMENT_FIELDS = ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                  "compression_ratio", "no_speech_prob")


def to_verbose_json(result: dict[str, Any], *, words: bool) -> dict[str, Any]:
    """OpenAI's verbose_json: segments always, words when they were asked for."""
    body: dict[str, Any] = {
        "task": result["task"],
        "language": result["language"],
        "duration": result["duration"],
        "text": full_text(result),
        "segments": [{k: s[k] for k in SEGMENT_FIELDS} for s in result["segments"]],
    }
    if words:
        body["words"] = [
            {"word": w["word"], "start": w["start"], "end": w["end"]}
            for s in result["segments"] for w in (s["words"] or [])
        ]
    return body
