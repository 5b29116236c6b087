"""From a request body to a stream of audio: validation, language, normalisation, time limits.

Used by the HTTP server and, in-process, by the offline fallback of the client.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import AsyncIterator

from .engines.base import AudioChunk, BadRequest, TTSEngine, UpstreamUnavailable, Voice
from .text import detect_lang, normalize

_LANG = re.compile(r"^[a-z]{2,3}$")


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    voice: Voice
    lang: str


def _allowed(values) -> str:
    return ", ".join(sorted(values))


def parse_request(engine: TTSEngine, body: object, max_chars: int) -> SpeechRequest:
    """Check a /tts body {text, voice?, lang?}; BadRequest names what is allowed."""
    if not isinstance(body, dict):
        raise BadRequest('body must be a JSON object like {"text": "Hello"}')
    text, voice_name, lang = body.get("text"), body.get("voice"), body.get("lang")
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("text must be a non-empty string")
    if len(text) > max_chars:
        raise BadRequest(f"text is {len(text)} characters; the limit is {max_chars}")
    if lang is not None:
        if not isinstance(lang, str) or not _LANG.match(lang.lower()):
            raise BadRequest(f"lang must be a language code; allowed: {_allowed(engine.languages)}")
        lang = lang.lower()
        if lang not in engine.languages:
            raise BadRequest(f"unknown lang {lang!r} for {engine.name}; allowed: {_allowed(engine.languages)}")
    voice = None
    if voice_name is not None and voice_name != "":
        voice = engine.find_voice(voice_name) if isinstance(voice_name, str) else None
        if voice is None:
            names = _allowed(v.name for v in engine.voices())
            raise BadRequest(f"unknown voice {voice_name!r} for {engine.name}; allowed: {names}")
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
