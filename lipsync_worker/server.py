"""HTTP routes of a worker, LiveTalking-compatible: /offer /human /humanaudio /interrupt_talk
/is_speaking, plus /health, /metrics and a test page at /.

Answers are {"code": 0, ...}; errors {"code": -1, "msg": "..."} with a 4xx status.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tts_services.audio import decode_file
from tts_services.engines.base import AudioChunk

from .avatars import Avatar
from .limits import MAX_AUDIO_BYTES, MAX_FORM_BYTES, MAX_JSON_BYTES
from .llm import ChatLLM
from .media import Stage
from .metrics import METRICS
from .session import CapacityError, Session, Sessions, chat_reply
from .settings import WorkerSettings

log = logging.getLogger("lipsync_worker")

PAGE = Path(__file__).parent / "web" / "index.html"


class ClientError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _ok(**data) -> web.Response:
    return web.json_response({"code": 0, **data})


async def _json(request: web.Request) -> dict:
    if (request.content_length or 0) > MAX_JSON_BYTES:
        raise ClientError(413, f"body larger than {MAX_JSON_BYTES} bytes")
    try:
        body = await request.json()
    except json.JSONDecodeError:
        raise ClientError(400, "body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ClientError(400, "body must be a JSON object")
    return body


def create_app(settings: WorkerSettings, avatar: Avatar, stage: Stage, sessions: Sessions, tts,
               voice: str | None, llm: ChatLLM | None) -> web.Application:
    app = web.Application(client_max_size=MAX_FORM_BYTES)
    app["failed"] = False
    started = time.monotonic()
    engine = stage.engine

    def session_of(body_or_form) -> Session:
        raw = body_or_form.get("sessionid")
        try:
            session_id = int(raw)
        except (TypeError, ValueError):
            raise ClientError(400, "sessionid must be the number /offer returned") from None
        session = sessions.get(session_id)
        if session is None:
            raise ClientError(404, f"no session {session_id}: it closed, expired, or never existed")
        return session

    def speak(text: str):
        return tts.stream(text, voice=voice)

    async def offer(request: web.Request) -> web.Response:
        body = await _json(request)
        sdp, kind = body.get("sdp"), body.get("type")
        if not isinstance(sdp, str) or not sdp or kind != "offer":
            raise ClientError(400, 'expected {"sdp": "<SDP offer>", "type": "offer"}')
        if not engine.ready:
            raise ClientError(503, f"the {engine.name} engine is still loading; try again when /health says ready")
        try:
            session = await sessions.offer(sdp, kind)
        except CapacityError as exc:
            raise ClientError(429, str(exc)) from None
        except ValueError as exc:
            raise ClientError(400, f"invalid SDP offer: {exc}") from None
        description = session.pc.localDescription
        return web.json_response({"sdp": description.sdp, "type": description.type, "sessionid": session.id})

    async def human(request: web.Request) -> web.Response:
        body = await _json(request)
        session = session_of(body)
        text, kind = body.get("text"), body.get("type", "echo")
        if kind not in ("echo", "chat"):
            raise ClientError(400, f"type must be 'echo' or 'chat', not {kind!r}")
        if not isinstance(text, str) or not text.strip():
            raise ClientError(400, "text must be a non-empty string")
        if len(text) > settings.max_text_chars:
            raise ClientError(400, f"text is {len(text)} characters; the limit is {settings.max_text_chars}")
        if kind == "chat" and llm is None:
            raise ClientError(400, "chat needs an LLM: set LLM_URL (an OpenAI-compatible API base), "
                                   "LLM_MODEL and LLM_API_KEY for this worker")
        if body.get("interrupt"):
            session.interrupt()
        if kind == "echo":
            session.talk(lambda: speak(text), "echo")
        else:
            session.talk(chat_reply(llm, session, text, speak), "chat")
        return _ok(msg="ok")

    async def human_audio(request: web.Request) -> web.Response:
        try:
            form = await request.post()
        except ValueError as exc:
            raise ClientError(400, f"expected multipart form data with sessionid and file: {exc}") from None
        session = session_of(form)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ClientError(400, "the form needs a 'file' field holding a wav, mp3 or ogg file")
        data = upload.file.read(MAX_AUDIO_BYTES + 1)
        if len(data) > MAX_AUDIO_BYTES:
            raise ClientError(413, f"audio file larger than {MAX_AUDIO_BYTES // (1024 * 1024)} MB")
        try:
            pcm = await asyncio.to_thread(decode_file, data)
        except ValueError as exc:
            raise ClientError(400, f"{upload.filename or 'file'}: {exc}") from None

        async def chunks():
            yield AudioChunk(pcm)

        session.talk(chunks, "audio")
        return _ok(msg="ok")

    async def interrupt_talk(request: web.Request) -> web.Response:
        session_of(await _json(request)).interrupt()
        return _ok(msg="ok")

    async def is_speaking(request: web.Request) -> web.Response:
        return _ok(data=session_of(await _json(request)).speaking)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({
            "status": "ok" if engine.ready else "warming", "ready": engine.ready, "instance_token": settings.instance_token, "pid": os.getpid(),
            "avatar": avatar.name, "engine": settings.model, "sessions": len(sessions),
            "max_session": settings.max_session,
            "speaking_sessions": sum(s.speaking for s in sessions), "fps": stage.fps,
            "uptime_seconds": round(time.monotonic() - started, 1),
        })

    async def metrics(request: web.Request) -> web.Response:
        METRICS.fps.set(stage.fps)
        METRICS.speaking.set(sum(s.speaking for s in sessions))
        for kind in ("video", "audio"):
            METRICS.queue_depth.labels(kind).set(sum(getattr(s, kind).depth for s in sessions))
        return web.Response(body=generate_latest(METRICS.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGE)

    @web.middleware
    async def errors(request: web.Request, handler):
        try:
            return await handler(request)
        except ClientError as exc:
            return web.json_response({"code": -1, "msg": str(exc)}, status=exc.status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return web.json_response({"code": -1, "msg": exc.reason}, status=exc.status)

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
        await sessions.close_all()

    app.middlewares.append(errors)
    app.router.add_post("/offer", offer)
    app.router.add_post("/human", human)
    app.router.add_post("/humanaudio", human_audio)
    app.router.add_post("/interrupt_talk", interrupt_talk)
    app.router.add_post("/is_speaking", is_speaking)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", page)
    app.on_startup.append(start_clock)
    app.on_shutdown.append(shutdown)
    return app
