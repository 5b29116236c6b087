"""What every recogniser is: 16 kHz s16le PCM in, text out, whole (transcribe) or as a stream of
audio with running hypotheses (Stream)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Awaitable, Callable

from ..protocol import BYTES_PER_SECOND


class BadRequest(ValueError):
    """The caller asked for something this model does not offer (HTTP 400, socket close 1008)."""


class Unavailable(RuntimeError):
    """Recognition cannot run now: upstream down or failing, every decoder busy (HTTP 503, socket
    close 1013)."""


class Stream(ABC):
    """One utterance, fed as it arrives."""

    @abstractmethod
    async def feed(self, pcm: bytes) -> str | None:
        """Take more audio; the running hypothesis when one was worked out, else None."""

    @abstractmethod
    async def finish(self) -> str:
        """The text of all the audio fed. The stream is done."""

    async def abandon(self) -> None:
        """Drop the utterance unfinished (its client left); a no-op after finish()."""


class Recognizer(ABC):
    """Base of every model. Subclasses set name and languages and implement transcribe."""

    name: str = ""
    languages: frozenset[str] | None = None   # the codes it knows; None: whatever it is asked

    def language(self, requested: str) -> str:
        """The model's code for a checked language code ('en-US' -> 'en'); BadRequest when the
        model does not know it."""
        code = requested.split("-")[0]
        if self.languages is not None and code not in self.languages:
            raise BadRequest(f"the {self.name} model does not recognise {requested!r}; "
                             f"it knows: {', '.join(sorted(self.languages))}")
        return code

    @abstractmethod
    async def transcribe(self, pcm: bytes, language: str) -> str:
        """The text of a whole utterance in `language` (a code from language())."""

    async def stream(self, language: str) -> Stream:
        """A new utterance: by default its audio is kept and transcribed whole at the end."""
        return BufferedStream(lambda pcm: self.transcribe(pcm, language))

    async def close(self) -> None:
        """Release network sessions or library handles."""


class BufferedStream(Stream):
    """An utterance kept whole and recognised at the end by `final`; with `draft`, recognised
    again after each `every` seconds of new audio for a running hypothesis."""

    def __init__(self, final: Callable[[bytes], Awaitable[str]],
                 draft: Callable[[bytes], Awaitable[str]] | None = None, every: float = 1.0) -> None:
        self._final = final
        self._draft = draft
        self._every_bytes = int(every * BYTES_PER_SECOND)
        self._audio = bytearray()
        self._drafted = 0   # bytes of audio the last hypothesis heard

    async def feed(self, pcm: bytes) -> str | None:
        self._audio += pcm
        if self._draft is None or len(self._audio) - self._drafted < self._every_bytes:
            return None
        self._drafted = len(self._audio)
        return await self._draft(bytes(self._audio))

    async def finish(self) -> str:
        return await self._final(bytes(self._audio)) if self._audio else ""
