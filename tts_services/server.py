"""HTTP routes of one TTS server: POST /tts, POST /tts/events, GET /voices, /health, /metrics."""
from __future__ import annotations

import json
import logging
import time
from typing import AsyncIterator, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from . import protocol
from .engines.base import AudioChunk, BadRequest, TTSEngine, UpstreamUnavailable
from .settings import Settings
from .speech import SpeechRequest, parse_request, speak

log = logging.getLogger("tts_services")

MAX_BODY_BYTES = 64 * 1024


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


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"status": "error", "message": message}, status=status)


def create_app(engine: TTSEngine, settings: Settings) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    metrics = Metrics(engine.name)
    started = time.monotonic()

    async def read_request(request: web.Request) -> SpeechRequest:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            raise BadRequest('body must be JSON like {"text": "Hello"}') from None
        return parse_request(engine, body, settings.max_text_chars)

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
            return _error(400, str(exc))
        except UpstreamUnavailable as exc:
            metrics.outcome("unavailable")
            log.warning("%s unavailable: %s", engine.name, exc)
            return _error(503, str(exc))
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
        return await stream(request, protocol.PCM_HEADERS, lambda chunk, _: chunk.pcm, None, None)

    async def tts_events(request: web.Request) -> web.StreamResponse:
        return await stream(request, {"Content-Type": protocol.CONTENT_TYPE}, protocol.audio_event,
                            protocol.end_event, protocol.error_event)

    async def voices(request: web.Request) -> web.Response:
        listed = engine.voices()
        return web.json_response({"model": engine.name, "default": listed[0].name,
                                  "languages": sorted(engine.languages),
                                  "voices": [v.to_json() for v in listed]})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": engine.name,
                                  "uptime_seconds": round(time.monotonic() - started, 1)})

    async def metrics_route(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def close_engine(app: web.Application) -> None:
        await engine.close()

    @web.middleware
    async def json_errors(request: web.Request, handler):
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error(exc.status, exc.reason if exc.status != 413 else
                          f"body larger than {MAX_BODY_BYTES} bytes")

    app.middlewares.append(json_errors)
    app.router.add_post("/tts", tts)
    app.router.add_post("/tts/events", tts_events)
    app.router.add_get("/voices", voices)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_route)
    app.on_cleanup.append(close_engine)
    return app
