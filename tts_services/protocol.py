"""Wire format of POST /tts/events: newline-delimited JSON, one event per line.

  {"type": "audio", "start": 0.0, "pcm": "<base64 s16le 16 kHz mono>",
   "phonemes": [[0.01, 0.06, "h"], ...]}        times in seconds from the start of the speech
  {"type": "end", "seconds": 1.23}               the whole text was spoken
  {"type": "error", "message": "..."}            the engine failed after audio had started

Phonemes are IPA; an engine that cannot time phonemes (all but espeak) sends an empty list.
POST /tts sends the same audio as a bare byte stream for clients that want only sound.
"""
from __future__ import annotations

import base64
import json

from .engines.base import AudioChunk, Phoneme

CONTENT_TYPE = "application/x-ndjson"
PCM_HEADERS = {"Content-Type": "application/octet-stream", "X-Audio-Format": "s16le; rate=16000; channels=1"}


def audio_event(chunk: AudioChunk, start: float) -> bytes:
    phonemes = [[round(start + p.start, 4), round(start + p.end, 4), p.symbol] for p in chunk.phonemes]
    return _line({"type": "audio", "start": round(start, 4), "pcm": base64.b64encode(chunk.pcm).decode(),
                  "phonemes": phonemes})


def end_event(seconds: float) -> bytes:
    return _line({"type": "end", "seconds": round(seconds, 4)})


def error_event(message: str) -> bytes:
    return _line({"type": "error", "message": message})


def _line(event: dict) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode() + b"\n"


def parse_audio_event(event: dict) -> AudioChunk:
    """Back to an AudioChunk whose phoneme times are relative to the chunk, as engines make them."""
    start = event["start"]
    phonemes = [Phoneme(s - start, e - start, symbol) for s, e, symbol in event.get("phonemes", [])]
    return AudioChunk(base64.b64decode(event["pcm"]), phonemes)
