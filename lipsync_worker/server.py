"""HTTP routes of a worker, LiveTalking-compatible: /offer /human /humanaudio /interrupt_talk
/is_speaking, plus /health, /metrics, /sse (events), /openapi.json and a test page at /.

Answers are {"code": 0, ...}; errors {"code": -1, "msg": "..."} with a 4xx status.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import aiohttp_cors
from aiohttp import web

from asr_services.client import ASRClient, ASRError
from contracts import auth
from contracts.limits import MAX_AUDIO_BYTES, MAX_FORM_BYTES, MAX_JSON_BYTES
from contracts.openapi import aiohttp_document, error_responses, load
from contracts.service_routes import add_metrics_and_document
from contracts.worker_api import (SCHEMAS, EventsQuerySchema, HumanAudioSchema, HumanSchema, OfferSchema,
                                  SessionRequestSchema)
from tts_services.audio import AudioTooLong, decode_file
from tts_services.engines.base import AudioChunk

from .avatars import Avatar
from .listening import Listener
from .llm import ChatLLM
from .media import Stage
from .metrics import METRICS
from .middleware import ClientError, access_log, checked, errors, read_form, read_json, require_token
from .playback_routes import add_playback_routes
from .recording import Recorder
from .session import CapacityError, Session, Sessions, chat_reply, sentence
from .settings import WorkerSettings
from .speech import SAMPLE_RATE, text_seconds
from .turns import Turn
from .udp_ports import bind_in_range

log = logging.getLogger("lipsync_worker")

PAGE = Path(__file__).parent / "web" / "index.html"
KEEPALIVE = b": keep-alive\n\n"
CORS_HEADERS = ("Content-Type", "Authorization")
PAGE_PATHS = ("/", "/index.html", "/webrtcapi.html")   # LiveTalking's page names: bookmarks keep working
# What answers without the API token: these reveal nothing a caller could act on.
OPEN_PATHS = ("/health", "/openapi.json", *PAGE_PATHS)
# The error answers routes share, referred to as '#/components/responses/NAME'.
ERROR_RESPONSES = error_responses({
    "BadBody": "a bad body",
    "NoSession": "no such session",
    "Stalled": "the body stopped arriving",
    "TooLarge": f"body larger than {MAX_JSON_BYTES} bytes",
    "Unauthorized": auth.REFUSAL,
})
UNAUTHORIZED = {"$ref": "#/components/responses/Unauthorized"}


def _ok(**data) -> web.Response:
    return web.json_response({"code": 0, **data})


def enable_cors(app: web.Application, origins: list[str]) -> None:
    """Preflights answered on every route, and Access-Control-Allow-Origin on answers to the
    allowed origins only (none when the list is empty). Call it once every route is added."""
    options = aiohttp_cors.ResourceOptions(allow_headers=CORS_HEADERS)
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in list(app.router.routes()):
        cors.add(route)


def create_app(settings: WorkerSettings, avatar: Avatar, stage: Stage, sessions: Sessions, tts,
               voice: str | None, llm: ChatLLM | None) -> web.Application:
    app = web.Application(client_max_size=MAX_FORM_BYTES,
                          middlewares=[access_log, errors, require_token(settings.api_token, OPEN_PATHS)])
    app["failed"] = False
    started = time.monotonic()
    engine = stage.engine

    def find(session_id: int) -> Session:
        session = sessions.get(session_id)
        if session is None:
            raise ClientError(404, f"no session {session_id}: it closed, expired, or never existed")
        return session

    asr = ASRClient(settings.asr_server, settings.api_token)

    def speak(text: str):
        return tts.stream(text, voice=voice)

    def no_room(session: Session, seconds: float, interrupting: bool = False) -> str | None:
        """Why `seconds` more speech would take the session's queue past MAX_QUEUED_SPEECH_SECONDS,
        or None. An idle session (or one being interrupted) takes any single request: its size is
        bounded by MAX_TEXT_CHARS or MAX_AUDIO_SECONDS already."""
        queued = 0.0 if interrupting else session.queued_seconds
        limit = settings.max_queued_speech_seconds
        if queued and queued + seconds > limit:
            return (f"session {session.id} has {queued:.0f} s of speech still to say and this adds "
                    f"~{seconds:.0f} s, past MAX_QUEUED_SPEECH_SECONDS={limit:g}")
        return None

    def check_room(session: Session, seconds: float, interrupting: bool = False) -> None:
        """429 when there is no room (no_room)."""
        why = no_room(session, seconds, interrupting)
        if why is not None:
            raise ClientError(429, f"{why}; send it when more has been said, or with interrupt: true")

    def respond(session: Session, text: str, kind: str, turn: Turn | None = None) -> None:
        """Say `text` (echo), or an LLM's reply to it (chat)."""
        seconds = text_seconds(text)  # a chat turn is reckoned by its question; its reply counts as it is made
        if kind == "echo":
            session.talk(sentence(text, speak(text)), "echo", seconds, turn)
        else:
            session.talk(chat_reply(llm, session, text, speak, turn), "chat", seconds, turn)

    def answer_speech(session: Session, text: str, turn: Turn) -> None:
        why = no_room(session, text_seconds(text))
        if why is not None:
            session.publish("error", message=f"{why}: not answered")
            return
        respond(session, text, session.mode, turn)

    def listen(session: Session, track) -> None:
        listener = Listener(session, track, settings.vad, asr, settings.language, answer_speech)
        session.listening = asyncio.create_task(listener.run())

    sessions.listen = listen

    def chat_needs_llm() -> None:
        if llm is None:
            raise ClientError(400, "chat needs an LLM: set LLM_URL (an OpenAI-compatible API base), "
                                   "LLM_MODEL and LLM_API_KEY for this worker")

    async def offer(request: web.Request) -> web.Response:
        """Start a WebRTC session: the browser's SDP offer in, the worker's answer out.
        ---
        post:
          summary: Open a session (a WebRTC peer connection)
          requestBody:
            required: true
            content:
              application/json:
                schema: Offer
          responses:
            200:
              description: the SDP answer and the new session's number
              content:
                application/json:
                  schema: Answer
            400: {description: not an SDP offer, content: {application/json: {schema: Error}}}
            408: {$ref: '#/components/responses/Stalled'}
            413: {$ref: '#/components/responses/TooLarge'}
            429:
              description: max_session sessions open, or MAX_CONNECTING_PER_CLIENT offers from this address connecting
              content: {application/json: {schema: Error}}
            503: {description: the engine is still loading, content: {application/json: {schema: Error}}}
        """
        try:
            body = load(OfferSchema(), await read_json(request))
        except ValueError as exc:
            raise ClientError(400, f'expected {{"sdp": "<SDP offer>", "type": "offer"}}: {exc}') from None
        mode = body["mode"] or ("chat" if llm is not None else "echo")
        if mode == "chat":
            chat_needs_llm()
        barge_in = settings.barge_in if body["barge_in"] is None else body["barge_in"]
        if not engine.ready:
            raise ClientError(503, f"the {engine.name} engine is still loading; try again when /health says ready")
        try:
            session = await sessions.offer(body["sdp"], body["type"], request.remote or "", mode, barge_in)
        except CapacityError as exc:
            raise ClientError(429, str(exc)) from None
        except ValueError as exc:
            raise ClientError(400, f"invalid SDP offer: {exc}") from None
        description = session.pc.localDescription
        return web.json_response({"sdp": description.sdp, "type": description.type, "sessionid": session.id})

    async def human(request: web.Request) -> web.Response:
        """Say a text, or an LLM's reply to it.
        ---
        post:
          summary: Speak (echo) or answer (chat) a text
          requestBody:
            required: true
            content:
              application/json:
                schema: Human
          responses:
            200: {description: queued; speech starts with its first sentence, content: {application/json: {schema: Done}}}
            400: {description: "a bad body, text too long, or chat without an LLM", content: {application/json: {schema: Error}}}
            404: {$ref: '#/components/responses/NoSession'}
            408: {$ref: '#/components/responses/Stalled'}
            413: {$ref: '#/components/responses/TooLarge'}
            429:
              description: the session has MAX_QUEUED_SPEECH_SECONDS of speech queued already
              content: {application/json: {schema: Error}}
        """
        body = checked(HumanSchema, await read_json(request))
        session = find(body["sessionid"])
        text, kind = body["text"], body["type"]
        if len(text) > settings.max_text_chars:
            raise ClientError(400, f"text is {len(text)} characters; the limit is {settings.max_text_chars}")
        if kind == "chat":
            chat_needs_llm()
        check_room(session, text_seconds(text), interrupting=body["interrupt"])
        if body["interrupt"]:
            session.interrupt()
        respond(session, text, kind)
        return _ok(msg="ok")

    async def human_audio(request: web.Request) -> web.Response:
        """Say what an audio file says, lips and all; or (type chat) answer what it says.
        ---
        post:
          summary: Speak an uploaded audio file, or answer the speech in it
          requestBody:
            required: true
            content:
              multipart/form-data:
                schema: HumanAudio
          responses:
            200: {description: queued (type chat - what was heard; nothing is said when that is empty), content: {application/json: {schema: Heard}}}
            400: {description: "not a form with sessionid and a readable audio file, or chat without an LLM", content: {application/json: {schema: Error}}}
            404: {$ref: '#/components/responses/NoSession'}
            408: {description: the form did not arrive in time, content: {application/json: {schema: Error}}}
            413:
              description: file larger than 20 MB, or longer than MAX_AUDIO_SECONDS (120 s)
              content: {application/json: {schema: Error}}
            429:
              description: the session has MAX_QUEUED_SPEECH_SECONDS of speech queued already
              content: {application/json: {schema: Error}}
            503: {description: "type chat: the speech recognition server is unavailable", content: {application/json: {schema: Error}}}
        """
        form = await read_form(request)
        fields = checked(HumanAudioSchema, {k: form[k] for k in ("sessionid", "file", "type") if k in form})
        session = find(fields["sessionid"])
        if fields["type"] == "chat":
            chat_needs_llm()
        upload = fields["file"]
        if isinstance(upload, str):
            raise ClientError(400, "file: must be an uploaded wav, mp3 or ogg file, not a text field")
        if upload.file.seek(0, os.SEEK_END) > MAX_AUDIO_BYTES:
            raise ClientError(413, f"audio file larger than {MAX_AUDIO_BYTES // (1024 * 1024)} MB")
        upload.file.seek(0)
        check_room(session, 0.0)   # a full queue is refused before any decoding
        limit = settings.max_audio_seconds
        try:
            # From aiohttp's temporary file of the upload: the compressed file is never all in memory.
            pcm = await asyncio.to_thread(decode_file, upload.file, limit)
        except AudioTooLong:
            raise ClientError(413, f"{upload.filename or 'file'}: longer than MAX_AUDIO_SECONDS={limit:g}") from None
        except ValueError as exc:
            raise ClientError(400, f"{upload.filename or 'file'}: {exc}") from None
        session = find(fields["sessionid"])   # it may have closed while the file was decoded
        if fields["type"] == "chat":
            try:
                text = await asr.transcribe(pcm, settings.language)
            except ASRError as exc:
                raise ClientError(503, f"speech recognition unavailable: {exc}") from None
            session = find(fields["sessionid"])
            session.publish("transcript", text=text)
            if text.strip():
                check_room(session, text_seconds(text))
                respond(session, text, "chat")
            return _ok(msg="ok", data={"text": text})
        seconds = len(pcm) / 2 / SAMPLE_RATE
        check_room(session, seconds)

        async def chunks():
            yield AudioChunk(pcm)

        session.talk(sentence("", chunks()), "audio", seconds)
        return _ok(msg="ok")

    async def interrupt_talk(request: web.Request) -> web.Response:
        """Silence a session from the next frame on.
        ---
        post:
          summary: Stop speaking and drop what is queued
          requestBody:
            required: true
            content:
              application/json:
                schema: SessionRequest
          responses:
            200: {description: silenced, content: {application/json: {schema: Done}}}
            400: {$ref: '#/components/responses/BadBody'}
            404: {$ref: '#/components/responses/NoSession'}
            408: {$ref: '#/components/responses/Stalled'}
            413: {$ref: '#/components/responses/TooLarge'}
        """
        find(checked(SessionRequestSchema, await read_json(request))["sessionid"]).interrupt()
        return _ok(msg="ok")

    async def is_speaking(request: web.Request) -> web.Response:
        """Whether a session is speaking or has speech queued.
        ---
        post:
          summary: Is the avatar speaking in this session?
          requestBody:
            required: true
            content:
              application/json:
                schema: SessionRequest
          responses:
            200: {description: the answer, content: {application/json: {schema: Speaking}}}
            400: {$ref: '#/components/responses/BadBody'}
            404: {$ref: '#/components/responses/NoSession'}
            408: {$ref: '#/components/responses/Stalled'}
            413: {$ref: '#/components/responses/TooLarge'}
        """
        session = find(checked(SessionRequestSchema, await read_json(request))["sessionid"])
        return _ok(data=session.speaking)

    async def events(request: web.Request) -> web.StreamResponse:
        """What happens in the sessions, as server-sent events.
        ---
        get:
          summary: Session events (server-sent events)
          description: >
            Each event is `event: NAME` and `data: {"sessionid": N, "time": UNIX_SECONDS, ...}`:
            connected; speaking_started; text {kind: echo|chat|audio, text} as a sentence's speech
            begins; reply {delta} as an LLM reply streams; reply_end {text}; speaking_ended
            {interrupted}; closed {reason}. From a viewer's microphone: speech_started {barge_in:
            whether it silenced the avatar}; speech_ended {seconds, ignored: too short to be a
            turn}; transcript_partial {text} as it is recognised; transcript {text}, the final one
            (empty when nothing was recognised, and then nothing is answered); error {message}.
            The same events, as JSON with the name in "event", go to every WebRTC data channel the
            viewer opened. A `: keep-alive` comment comes every 15 s. A reader that falls far
            behind is disconnected. With sessionid, only that session's events, and the stream
            ends after its `closed`.
          parameters:
            - in: query
              name: sessionid
              required: false
              description: keep only this session's events
              schema: {type: string, pattern: "^[0-9]{1,18}$"}
          responses:
            200:
              description: the event stream
              content:
                text/event-stream:
                  schema: {type: string}
            400: {description: sessionid is not a number, content: {application/json: {schema: Error}}}
            404: {$ref: '#/components/responses/NoSession'}
        """
        sessionid = checked(EventsQuerySchema, dict(request.query))["sessionid"]
        if sessionid is not None:
            find(sessionid)
        subscriber = sessions.events.subscribe(sessionid)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        try:
            await response.prepare(request)
            await response.write(KEEPALIVE)  # the headers go out now, not with the first event
            while True:
                try:
                    event = await asyncio.wait_for(subscriber.get(), settings.sse_keepalive)
                except asyncio.TimeoutError:
                    await response.write(KEEPALIVE)
                    continue
                if event is None:
                    break
                await response.write(event.encode())
                if sessionid is not None and event.name == "closed":
                    break
        except ConnectionResetError:
            pass  # the reader went away
        finally:
            sessions.events.unsubscribe(subscriber)
        return response

    async def health(request: web.Request) -> web.Response:
        """Liveness, readiness and identity of this worker.
        ---
        get:
          summary: Health, instance token and load
          description: >
            Open to anyone. Where an API token is set, only a caller that sends it gets more than
            status and ready: the instance token is what the supervisor checks the worker by.
          responses:
            200: {description: the worker's state, content: {application/json: {schema: Health}}}
        """
        state = {"status": "ok" if engine.ready else "warming", "ready": engine.ready}
        if not auth.authorized(request.headers.get("Authorization"), settings.api_token):
            return web.json_response(state)
        return web.json_response({
            **state, "instance_token": settings.instance_token, "pid": os.getpid(),
            "avatar": avatar.name, "engine": settings.model, "sessions": len(sessions),
            "max_session": settings.max_session,
            "speaking_sessions": sum(s.speaking for s in sessions), "fps": stage.fps,
            "uptime_seconds": round(time.monotonic() - started, 1),
        })

    def measure() -> None:
        METRICS.fps.set(stage.fps)
        METRICS.speaking.set(sum(s.speaking for s in sessions))
        for kind in ("video", "audio"):
            METRICS.queue_depth.labels(kind).set(sum(getattr(s, kind).depth for s in sessions))

    async def page(request: web.Request) -> web.FileResponse:
        """The worker's own test page (also at LiveTalking's /webrtcapi.html and /index.html).
        ---
        get:
          summary: A test page that connects, speaks and interrupts
          responses:
            200:
              description: the page
              content:
                text/html:
                  schema: {type: string}
        """
        return web.FileResponse(PAGE)

    def document(app: web.Application) -> dict:
        spec = aiohttp_document(app, "lip-sync worker", "1.0", SCHEMAS)
        spec["components"]["responses"] = ERROR_RESPONSES
        if settings.api_token:
            auth.document(spec, OPEN_PATHS, UNAUTHORIZED)
        return spec

    async def warm_up() -> None:
        begun = time.monotonic()
        try:
            await stage.load(avatar)
        except Exception:
            # The supervisor sees the worker exit while starting, with this in the log it shows.
            log.exception("the %s engine could not be loaded; stopping", engine.name)
            app["failed"] = True
            os.kill(os.getpid(), signal.SIGTERM)
            return
        log.info("%s engine ready in %.1f s", engine.name, time.monotonic() - begun)

    async def start_clock(app: web.Application) -> None:
        app["clock"] = asyncio.create_task(stage.run())
        # A model engine loads while /health answers "warming"; a light one is ready before the port opens.
        app["warm_up"] = asyncio.create_task(warm_up())
        if not engine.slow:
            await app["warm_up"]

    async def shutdown(app: web.Application) -> None:
        app["clock"].cancel()
        app["warm_up"].cancel()
        await sessions.close_all()  # also ends every /sse stream, so stopping never waits for readers

    app.router.add_post("/offer", offer)
    app.router.add_post("/human", human)
    app.router.add_post("/humanaudio", human_audio)
    app.router.add_post("/interrupt_talk", interrupt_talk)
    app.router.add_post("/is_speaking", is_speaking)
    app.router.add_get("/sse", events)
    app.router.add_get("/health", health)
    for path in PAGE_PATHS:
        app.router.add_get(path, page)
    add_metrics_and_document(app, METRICS.registry, document, measure)
    # /set_audiotype and /record (playback_routes.py)
    add_playback_routes(app, avatar, Recorder(settings.record_max_seconds, settings.record_max_bytes,
                                              settings.record_retention_seconds), find)
    if settings.webrtc_ports:
        async def restrict_udp_ports(app: web.Application) -> None:
            bind_in_range(settings.webrtc_ports)
            # A session takes one port on each local address (aiortc bundles audio and video),
            # so a range narrower than max_session runs out first.
            if len(settings.webrtc_ports) < settings.max_session:
                log.warning("WEBRTC_PORT_RANGE has %d ports, fewer than --max_session %d: sessions past "
                            "that many will find no free port and fail to connect",
                            len(settings.webrtc_ports), settings.max_session)
        app.on_startup.append(restrict_udp_ports)
    app.on_startup.append(start_clock)
    app.on_shutdown.append(shutdown)
    enable_cors(app, settings.cors_origins)  # last: it covers the routes added so far
    return app
