"""Offline English recognition with pocketsphinx and the model its wheel ships (en-us).

A Decoder holds ~90 MB and takes ~0.3 s to build, and decodes one utterance at a time: a pool
keeps up to SPHINX_DECODERS of them and lends one to each utterance. Decoding blocks, so it runs
in a thread; each chunk is decoded as it arrives, and the decoder's hypothesis is the partial.
"""
from __future__ import annotations

import asyncio
import threading

from pocketsphinx import Decoder

from ..settings import Settings
from .base import Recognizer, Stream, Unavailable

# How long an utterance waits for a decoder when all are lent.
BUSY_WAIT_SECONDS = 5.0


def _new_decoder() -> Decoder:
    # The defaults are the wheel's US English acoustic model, language model and dictionary, at 16 kHz;
    # its ERROR lines are about the audio (too short to decode), not the server: it reports failures by raising.
    # No second, flat-lexicon pass (fwdflat): it runs when the utterance ends, 60-200 ms for a
    # sentence, which is most of the time from the end of speech to the transcript; without it
    # the end takes ~10 ms and espeak's questions are heard as well.
    return Decoder(loglevel="FATAL", fwdflat=False)


class DecoderPool:
    def __init__(self, size: int) -> None:
        self.size = size
        self._idle = [_new_decoder()]   # built now: a broken install fails at start, not on first use
        self._free = asyncio.Semaphore(size)

    async def acquire(self) -> Decoder:
        try:
            await asyncio.wait_for(self._free.acquire(), BUSY_WAIT_SECONDS)
        except TimeoutError:
            raise Unavailable(f"all {self.size} sphinx decoders are busy (SPHINX_DECODERS); try again") from None
        if self._idle:
            return self._idle.pop()
        try:
            return await asyncio.to_thread(_new_decoder)
        except BaseException:
            self._free.release()
            raise

    def release(self, decoder: Decoder) -> None:
        self._idle.append(decoder)
        self._free.release()


class DecoderStream(Stream):
    def __init__(self, pool: DecoderPool, decoder: Decoder) -> None:
        self._pool = pool
        self._decoder: Decoder | None = decoder
        # A decode whose awaiting side was cancelled still runs in its thread: the end of the
        # utterance waits for it rather than touch the decoder at the same time.
        self._busy = threading.Lock()
        decoder.start_utt()

    async def feed(self, pcm: bytes) -> str | None:
        return await asyncio.to_thread(self._process, pcm)

    async def finish(self) -> str:
        try:
            return await asyncio.to_thread(self._end)
        finally:
            self._give_back()

    async def abandon(self) -> None:
        if self._decoder is not None:
            try:
                await asyncio.to_thread(self._end)
            finally:
                self._give_back()

    def _process(self, pcm: bytes) -> str:
        with self._busy:
            self._decoder.process_raw(pcm, False, False)
            return self._text()

    def _end(self) -> str:
        with self._busy:
            self._decoder.end_utt()
            return self._text()

    def _text(self) -> str:
        hypothesis = self._decoder.hyp()
        return hypothesis.hypstr if hypothesis is not None else ""

    def _give_back(self) -> None:
        if self._decoder is not None:
            self._pool.release(self._decoder)
            self._decoder = None


class SphinxRecognizer(Recognizer):
    name = "sphinx"
    languages = frozenset({"en"})

    def __init__(self, settings: Settings) -> None:
        self._pool = DecoderPool(settings.sphinx_decoders)

    async def stream(self, language: str) -> Stream:
        return DecoderStream(self._pool, await self._pool.acquire())

    async def transcribe(self, pcm: bytes, language: str) -> str:
        stream = await self.stream(language)
        try:
            await stream.feed(pcm)
            return await stream.finish()
        finally:
            await stream.abandon()
