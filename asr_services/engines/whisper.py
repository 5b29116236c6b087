"""Whisper through faster-whisper (CTranslate2), from a model folder under MODELS_DIR.

Whisper hears a whole utterance at once, so a stream keeps its audio and transcribes all of it
again after each PARTIAL_EVERY seconds of new audio for the partial: greedily, once, because a
partial is soon replaced. The final uses faster-whisper's own defaults (beam search, temperature
fallback). Transcription blocks, so it runs in a thread; CTranslate2 runs one at a time.
"""
from __future__ import annotations

import asyncio

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel

from contracts import whisper_weights
from contracts.settings import ConfigError

from ..settings import Settings
from .base import BufferedStream, Recognizer, Stream

PARTIAL_EVERY = 1.0
DRAFT = {"beam_size": 1, "temperature": 0.0}
FINAL: dict = {}


def _device(setting: str) -> str:
    if setting != "auto":
        return setting
    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


class WhisperRecognizer(Recognizer):
    name = "whisper"

    def __init__(self, settings: Settings) -> None:
        whisper_weights.check(settings.whisper_dir)   # before faster-whisper could go to the hub for a file
        device = _device(settings.whisper_device)
        compute_type = settings.whisper_compute_type or ("float16" if device == "cuda" else "int8")
        try:
            self.model = WhisperModel(str(settings.whisper_dir), device=device, compute_type=compute_type)
        except (RuntimeError, ValueError) as exc:  # CTranslate2's word for a bad file, device or type
            raise ConfigError(f"could not load the whisper model in {settings.whisper_dir.resolve()} on "
                              f"{device} ({compute_type}): {exc}") from None
        self.languages = frozenset(self.model.supported_languages)

    async def transcribe(self, pcm: bytes, language: str) -> str:
        return await asyncio.to_thread(self._run, pcm, language, FINAL)

    async def stream(self, language: str) -> Stream:
        async def draft(pcm: bytes) -> str:
            return await asyncio.to_thread(self._run, pcm, language, DRAFT)

        return BufferedStream(lambda pcm: self.transcribe(pcm, language), draft, PARTIAL_EVERY)

    def _run(self, pcm: bytes, language: str, options: dict) -> str:
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        segments, _ = self.model.transcribe(audio, language=language, **options)
        return "".join(segment.text for segment in segments).strip()   # decoding happens as they are read
