"""HTTP routes of one TTS server: POST /tts, POST /tts/events, GET /voices, /health, /metrics.

With API_TOKEN set (the manager hands it to the servers it starts) every route but /health and
/openapi.json wants it (contracts/auth.py)."""
from __future__ import annotations

import json
import logging
import time
from typing import AsyncIterator, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from contracts import auth
from contracts.errors import ErrorSchema, error, json_errors
from contracts.limits import MAX_JSON_BYTES
from contracts.openapi import aiohttp_document, error_responses
from contracts.service_routes import add_metrics_and_document

from . import protocol
from .engines.base import AudioChunk, BadRequest, TTSEngine, UpstreamUnavailable
from .schemas import HealthSchema, VoiceSchema, VoicesSchema, speech_schema
from .settings import Settings
from .speech import SpeechRequest, parse_request, speak

log = logging.getLogger("tts_services")

OPEN_PATHS = ("/health", "/openapi.json")   # they reveal nothing a caller could act on


class Metrics:
    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tts_requests_total", "TTS requests by outcome", ["model", "outcome"],
                                registry=self.registry)
        self.first_audio = Histogram("tts_first_audio_seconds", "Request to first audio chunk", ["model"],
                                     buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                     registry=self.registry)
        self.audio = Counter("tts_audio_seconds_total", "Seconds of audio produced", ["model"],
                             registry=self.registry)
        self.active = Gauge("tts_streams_active", "Responses being streamed", ["model"], registry=self.registry)
        self.model = model

    def outcome(self, name: str) -> None:
        self.requests.labels(self.model, name).inc()


async def read_json(request: web.Request) -> object:
    """The body as JSON, whatever its content type (curl -d sends a form type); BadRequest when
    its bytes are not JSON text, 413 (from aiohttp) when it is over the size limit."""
    try:
        raw = await request.read()
    except web.RequestPayloadError as exc:  # e.g. Content-Encoding: gzip on bytes that are not gzip
        reason = getattr(exc.__cause__, "message", None) or str(exc)
        raise BadRequest(f"body could not be read: {reason}") from None
    charset = request.charset or "utf-8"
    try:
        text = raw.decode(charset)
    except LookupError:
        raise BadRequest(f"unknown charset {charset!r}; send JSON in UTF-8") from None
    except ValueError:  # UnicodeDecodeError, or a charset name Python refuses outright
        raise BadRequest(f"body is not valid {charset!r} text; send JSON in UTF-8") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # bad JSON, an integer over Python's digit limit, deep nesting
        raise BadRequest('body must be JSON like {"text": "Hello"}') from None


def create_app(engine: TTSEngine, settings: Settings) -> web.Application:
    app = web.Application(client_max_size=MAX_JSON_BYTES)
    metrics = Metrics(engine.name)
    started = time.monotonic()

    async def read_request(request: web.Request) -> SpeechRequest:
        return parse_request(engine, await read_json(request), settings.max_text_chars)

    async def stream(request: web.Request, headers: dict,
                     encode: Callable[[AudioChunk, float], bytes],
                     end: Callable[[float], bytes] | None, on_error: Callable[[str], bytes] | None) -> web.StreamResponse:
        """Wait for the first chunk before answering, so that failures get a real status code."""
        t0 = time.monotonic()
        try:
            spoken = await read_request(request)
            chunks: AsyncIterator[AudioChunk] = speak(engine, spoken, settings.read_timeout)
            first = await anext(chunks, None)
        except BadRequest as exc:
            metrics.outcome("bad_request")
            return error(400, str(exc))
        except UpstreamUnavailable as exc:
            metrics.outcome("unavailable")
            log.warning("%s unavailable: %s", engine.name, exc)
            return error(503, str(exc))
        metrics.first_audio.labels(engine.name).observe(time.monotonic() - t0)
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        metrics.active.labels(engine.name).inc()
        seconds, outcome = 0.0, "ok"
        try:
            chunk = first
            while chunk is not None:
                await response.write(encode(chunk, seconds))
                seconds += chunk.seconds
                chunk = await anext(chunks, None)
            if end is not None:
                await response.write(end(seconds))
        except UpstreamUnavailable as exc:
            outcome = "failed_midway"
            log.warning("%s failed after %.2f s of audio: %s", engine.name, seconds, exc)
            if on_error is None:
                raise  # aiohttp aborts the connection: the client sees an incomplete body
            await response.write(on_error(str(exc)))
        except ConnectionResetError:
            outcome = "client_gone"
            return response
        finally:
            await chunks.aclose()
            metrics.active.labels(engine.name).dec()
            metrics.outcome(outcome)
            metrics.audio.labels(engine.name).inc(seconds)
        await response.write_eof()
        return response

    async def tts(request: web.Request) -> web.StreamResponse:
        """Speak text as a stream of raw PCM.
        ---
        post:
          summary: Speak text; audio is sent as each sentence is ready
          requestBody:
            required: true
            content:
              application/json:
                schema: Speech
          responses:
            200:
              description: 16 kHz mono signed 16-bit little-endian PCM. If the voice fails midway the
                connection is cut, so a partial answer never looks complete.
              headers:
                X-Audio-Format:
                  description: The audio's format
                  schema: {type: string, enum: ["s16le; rate=16000; channels=1"]}
              content:
                application/octet-stream:
                  schema: {type: string, format: binary}
            400: {$ref: '#/components/responses/BadRequest'}
            413: {$ref: '#/components/responses/TooLarge'}
            503: {$ref: '#/components/responses/Unavailable'}
        """
        return await stream(request, protocol.PCM_HEADERS, lambda chunk, _: chunk.pcm, None, None)

    async def tts_events(request: web.Request) -> web.StreamResponse:
        """Speak text as newline-delimited JSON events with the audio and its phonemes.
        ---
        post:
          summary: Speak text; audio and phoneme timings as NDJSON events
          requestBody:
            required: true
            content:
              application/json:
                schema: Speech
          responses:
            200:
              description: |
                One JSON object a line:
                {"type": "audio", "start": s, "pcm": base64 s16le 16 kHz mono, "phonemes": [[start, end, ipa], ...]},
                then {"type": "end", "seconds": s}; or, if the voice fails after audio started,
                {"type": "error", "message": "..."} as the last line. Times are seconds from the start.
              content:
                application/x-ndjson:
                  schema: {type: string}
            400: {$ref: '#/components/responses/BadRequest'}
            413: {$ref: '#/components/responses/TooLarge'}
            503: {$ref: '#/components/responses/Unavailable'}
        """
        return await stream(request, {"Content-Type": protocol.CONTENT_TYPE}, protocol.audio_event,
                            protocol.end_event, protocol.error_event)

    async def voices(request: web.Request) -> web.Response:
        """The voices and languages of this server's model.
        ---
        get:
          summary: Voices and languages of this model; the first voice is the default
          responses:
            200:
              description: The voices
              content:
                application/json:
                  schema: Voices
        """
        listed = engine.voices()
        return web.json_response({"model": engine.name, "default": listed[0].name,
                                  "languages": sorted(engine.languages),
                                  "voices": [v.to_json() for v in listed]})

    async def health(request: web.Request) -> web.Response:
        """Liveness.
        ---
        get:
          summary: The server is up, and which model it serves
          responses:
            200:
              description: Up
              content:
                application/json:
                  schema: Health
        """
        return web.json_response({"status": "ok", "model": engine.name,
                                  "uptime_seconds": round(time.monotonic() - started, 1)})

    async def close_engine(app: web.Application) -> None:
        await engine.close()

    app.middlewares.append(json_errors(f"body larger than {MAX_JSON_BYTES} bytes"))
    app.middlewares.append(auth.middleware(settings.api_token, OPEN_PATHS, lambda message: error(401, message)))
    app.router.add_post("/tts", tts)
    app.router.add_post("/tts/events", tts_events)
    app.router.add_get("/voices", voices)
    app.router.add_get("/health", health)
    add_metrics_and_document(app, metrics.registry, lambda app: document(app, engine, settings))
    app.on_cleanup.append(close_engine)
    return app


def document(app: web.Application, engine: TTSEngine, settings: Settings) -> dict:
    """The OpenAPI document of this server: its engine's languages and text limit included."""
    spec = aiohttp_document(app, f"TTS server ({engine.name})", "1.0",
                            [speech_schema(engine, settings.max_text_chars), ErrorSchema, VoiceSchema,
                             VoicesSchema, HealthSchema])
    spec["components"]["responses"] = error_responses({
        "BadRequest": "The body is not JSON, not an object, or a field is wrong; the message names what is allowed",
        "TooLarge": f"The body is over {MAX_JSON_BYTES} bytes",
        "Unavailable": "The voice cannot be produced now (no network, the upstream server down or silent)",
        "Unauthorized": auth.REFUSAL})
    if settings.api_token:
        auth.document(spec, OPEN_PATHS, {"$ref": "#/components/responses/Unauthorized"})
    return spec
