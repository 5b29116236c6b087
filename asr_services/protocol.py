"""Wire format of the WebSocket GET /asr?language=xx, shared by the server and its client.

Client to server:
  binary                       s16le mono 16 kHz PCM, whole samples, at most MAX_MESSAGE_BYTES
  {"type": "end"}              the utterance is over: answer with its final

Server to client, JSON text:
  {"type": "partial", "text": "..."}                 the running hypothesis, each time it changes
  {"type": "final", "text": "...", "seconds": s, "reason": "end" | "limit"}
      the utterance's text; "limit": the server ended an utterance that reached its length
      limit itself, and the audio after it begins the next one
  {"type": "error", "message": "..."}                then the server closes the socket

After a final the socket takes the next utterance. Close codes: 1008 a message or the language
was wrong, or the socket sat idle too long; 1009 a message over MAX_MESSAGE_BYTES; 1013 the
recogniser cannot work now (try again later).
"""
from __future__ import annotations

from contracts.asr_models import SAMPLE_RATE

MAX_MESSAGE_BYTES = 64 * 1024
BYTES_PER_SECOND = 2 * SAMPLE_RATE
END = {"type": "end"}


def partial(text: str) -> dict:
    return {"type": "partial", "text": text}


def final(text: str, seconds: float, reason: str) -> dict:
    return {"type": "final", "text": text, "seconds": round(seconds, 3), "reason": reason}


def error(message: str) -> dict:
    return {"type": "error", "message": message}
