"""From a request body to a stream of audio: validation, language, normalisation, time limits.

Used by the HTTP server and, in-process, by the offline fallback of the client.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator

from contracts.openapi import load

from .engines.base import AudioChunk, BadRequest, TTSEngine, UpstreamUnavailable, Voice
from .schemas import speech_schema
from .text import detect_lang, normalize


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    voice: Voice
    lang: str


def parse_request(engine: TTSEngine, body: object, max_chars: int) -> SpeechRequest:
    """Check a /tts body {text, voice?, lang?}; BadRequest names what is allowed."""
    try:
        fields = load(speech_schema(engine, max_chars)(), body)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    text, voice, lang = fields["text"], fields["voice"], fields["lang"]
    if lang is None:
        detected = detect_lang(text)
        if voice is not None:
            lang = voice.lang if voice.lang in engine.languages else detected
        else:
            lang = detected if detected in engine.languages else engine.voices()[0].lang
    if voice is None:
        voice = next((v for v in engine.voices() if v.lang == lang), engine.voices()[0])
    return SpeechRequest(text, voice, lang)


async def speak(engine: TTSEngine, request: SpeechRequest, timeout: float) -> AsyncIterator[AudioChunk]:
    """Audio chunks of the request; UpstreamUnavailable if the engine stays silent `timeout` s."""
    chunks = engine.synthesize(normalize(request.text, request.lang), request.voice, request.lang)
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(anext(chunks), timeout)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                raise UpstreamUnavailable(f"{engine.name} produced no audio for {timeout:g} s") from None
            yield chunk
    finally:
        await chunks.aclose()
