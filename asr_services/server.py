"""HTTP routes of one ASR server: GET /asr (a WebSocket: asr_services.protocol), POST /transcribe,
GET /health, /metrics and /openapi.json.

With API_TOKEN set (the host agent hands it to the servers it starts) every route but /health and
/openapi.json wants it (contracts/auth.py); a WebSocket is refused before its upgrade."""
from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.helpers import parse_mimetype

from contracts import auth
from contracts.asr_models import DEFAULT_LANGUAGE, LANGUAGE, SAMPLE_RATE, check_language
from contracts.errors import ErrorSchema, error, json_errors
from contracts.openapi import aiohttp_document, error_responses
from contracts.service_routes import add_metrics_and_document

from .engines.base import Recognizer, Unavailable
from .metrics import Metrics
from .protocol import BYTES_PER_SECOND, MAX_MESSAGE_BYTES
from .schemas import HealthSchema, TranscriptSchema
from .session import Session
from .settings import Settings

log = logging.getLogger("asr_services")

OPEN_PATHS = ("/health", "/openapi.json")   # they reveal nothing a caller could act on
PCM_TYPES = ("application/octet-stream", "audio/L16")
# aiohttp closes a socket with 1009 and no word of why on a message over its own limit: it reads
# messages a few times over ours, so that the session can say what the limit is.
WS_READ_LIMIT = 4 * MAX_MESSAGE_BYTES


def _pcm_type_problem(content_type: str) -> str | None:
    """What is wrong with a body's Content-Type for 16 kHz mono s16le PCM, or None."""
    mime = parse_mimetype(content_type)
    given = f"{mime.type}/{mime.subtype}".lower()
    if given not in (t.lower() for t in PCM_TYPES):
        return f"send the audio as {' or '.join(PCM_TYPES)} (s16le, {SAMPLE_RATE} Hz, mono); got {content_type!r}"
    if mime.parameters.get("rate", str(SAMPLE_RATE)) != str(SAMPLE_RATE) or mime.parameters.get("channels", "1") != "1":
        return f"the audio must be {SAMPLE_RATE} Hz mono; got {content_type!r}"
    return None


def create_app(recognizer: Recognizer, settings: Settings) -> web.Application:
    max_bytes = int(settings.max_utterance_seconds * BYTES_PER_SECOND)
    too_long = (f"the audio is longer than {settings.max_utterance_seconds:g} s ({max_bytes} bytes; "
                "ASR_MAX_UTTERANCE_SECONDS)")
    app = web.Application(client_max_size=max_bytes)
    metrics = Metrics(recognizer.name)
    started = time.monotonic()

    def refuse(status: int, outcome: str, message: str) -> web.Response:
        metrics.outcome("transcribe", outcome)
        return error(status, message)

    async def asr(request: web.Request) -> web.StreamResponse:
        """Stream speech and get its text as it is recognised.
        ---
        get:
          summary: 'WebSocket: speech in, partial and final transcripts out'
          description: |
            Binary messages carry s16le mono 16 kHz PCM (whole samples, at most 65536 bytes each); the
            text message {"type": "end"} ends an utterance. The server answers with JSON text messages:
            {"type": "partial", "text": "..."} each time its running hypothesis changes (not every model
            has one), {"type": "final", "text": "...", "seconds": s, "reason": "end"} after an end, or
            with reason "limit" when an utterance reached ASR_MAX_UTTERANCE_SECONDS and the server ended
            it itself. After a final the socket takes the next utterance. A wrong message, a language
            the model does not know, or a socket idle past ASR_IDLE_TIMEOUT gets
            {"type": "error", "message": "..."} and the close code 1008; a message over the size limit
            1009; a recogniser that cannot work now (upstream down, every decoder busy) 1013.
          parameters:
          - Language
          responses:
            101: {description: The socket is open}
            400: {$ref: '#/components/responses/BadRequest'}
            426: {$ref: '#/components/responses/NotWebSocket'}
        """
        try:
            language = check_language(request.query.get("language", DEFAULT_LANGUAGE))
        except ValueError as exc:
            metrics.outcome("asr", "bad_request")
            return error(400, str(exc))
        ws = web.WebSocketResponse(max_msg_size=WS_READ_LIMIT)
        if not ws.can_prepare(request).ok:
            return error(426, "GET /asr is a WebSocket: connect with a WebSocket client")
        await ws.prepare(request)
        await Session(ws, recognizer, metrics, settings.max_utterance_seconds, settings.idle_timeout).run(language)
        return ws

    async def transcribe(request: web.Request) -> web.Response:
        """Recognise a whole utterance.
        ---
        post:
          summary: Recognise one utterance sent whole
          parameters:
          - Language
          requestBody:
            required: true
            description: s16le mono 16 kHz PCM, an even number of bytes, up to ASR_MAX_UTTERANCE_SECONDS long
            content:
              application/octet-stream:
                schema: {type: string, format: binary}
              audio/L16:
                schema: {type: string, format: binary}
          responses:
            200:
              description: What was said
              content:
                application/json:
                  schema: Transcript
            400: {$ref: '#/components/responses/BadRequest'}
            413: {$ref: '#/components/responses/TooLarge'}
            415: {$ref: '#/components/responses/NotPcm'}
            503: {$ref: '#/components/responses/Unavailable'}
        """
        try:
            language = recognizer.language(check_language(request.query.get("language", DEFAULT_LANGUAGE)))
        except ValueError as exc:   # a malformed code, or one the model does not know (BadRequest)
            return refuse(400, "bad_request", str(exc))
        problem = _pcm_type_problem(request.headers.get("Content-Type", ""))
        if problem:
            return refuse(415, "bad_request", problem)
        try:
            pcm = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return refuse(413, "too_large", too_long)
        except web.RequestPayloadError as exc:   # e.g. Content-Encoding: gzip on bytes that are not gzip
            return refuse(400, "bad_request", f"the body could not be read: {exc}")
        if not pcm or len(pcm) % 2:
            return refuse(400, "bad_request", f"the body must be s16le PCM: a non-empty, even number of "
                                              f"bytes; got {len(pcm)}")
        try:
            text = await metrics.recognise(recognizer.transcribe(pcm, language), len(pcm))
        except Unavailable as exc:
            log.warning("%s unavailable: %s", recognizer.name, exc)
            return refuse(503, "unavailable", str(exc))
        metrics.outcome("transcribe", "ok")
        return web.json_response({"text": text, "language": language, "seconds": round(len(pcm) / BYTES_PER_SECOND, 3)})

    async def health(request: web.Request) -> web.Response:
        """Liveness.
        ---
        get:
          summary: The server is up, which model it serves and the languages that model knows
          responses:
            200:
              description: Up
              content:
                application/json:
                  schema: Health
        """
        languages = sorted(recognizer.languages) if recognizer.languages is not None else None
        return web.json_response({"status": "ok", "model": recognizer.name, "languages": languages,
                                  "uptime_seconds": round(time.monotonic() - started, 1)})

    async def close_recognizer(app: web.Application) -> None:
        await recognizer.close()

    app.middlewares.append(json_errors(too_long))
    app.middlewares.append(auth.middleware(settings.api_token, OPEN_PATHS, lambda message: error(401, message)))
    app.router.add_get("/asr", asr)
    app.router.add_post("/transcribe", transcribe)
    app.router.add_get("/health", health)
    add_metrics_and_document(app, metrics.registry, lambda app: document(app, recognizer, settings))
    app.on_cleanup.append(close_recognizer)
    return app


def document(app: web.Application, recognizer: Recognizer, settings: Settings) -> dict:
    """The OpenAPI document of this server: the languages its model knows included."""
    known = f"this model knows {', '.join(sorted(recognizer.languages))}" if recognizer.languages else "any"
    language = {"name": "language", "in": "query", "required": False,
                "description": f"A language code such as en, fa or en-US; {known}.",
                "schema": {"type": "string", "pattern": LANGUAGE.pattern, "default": DEFAULT_LANGUAGE}}
    spec = aiohttp_document(app, f"ASR server ({recognizer.name})", "1.0",
                            [TranscriptSchema, ErrorSchema, HealthSchema], {"Language": language})
    spec["components"]["responses"] = error_responses({
        "BadRequest": "The language is not a language code or not one this model knows, or the body is not PCM",
        "TooLarge": f"The audio is longer than {settings.max_utterance_seconds:g} s",
        "NotPcm": "The Content-Type is not application/octet-stream or audio/L16 (16 kHz, mono)",
        "NotWebSocket": "GET /asr was asked without a WebSocket upgrade",
        "Unavailable": "The audio cannot be recognised now (the upstream server down or failing, every decoder busy)",
        "Unauthorized": auth.REFUSAL})
    if settings.api_token:
        auth.document(spec, OPEN_PATHS, {"$ref": "#/components/responses/Unauthorized"})
    return spec
