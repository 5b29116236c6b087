"""LiveTalking's /set_audiotype (a clip shown at rest) and /record (an MP4 of what the viewer is
sent), added to the worker's application by server.create_app."""
from __future__ import annotations

from typing import Callable

from aiohttp import web

from contracts.worker_api import RecordSchema, SessionRequestSchema, SetAudiotypeSchema

from .avatars import Avatar
from .clips import IDLE_TYPES
from .middleware import ClientError, checked, read_json
from .recording import Conflict, Missing, Recorder
from .session import Session


def add_playback_routes(app: web.Application, avatar: Avatar, recorder: Recorder,
                        find: Callable[[int], Session]) -> None:
    """The routes, the recorder's folder removed at cleanup; find(sessionid) answers 404 for an
    unknown session."""
    known = ", ".join(repr(name) for name in (*IDLE_TYPES, *sorted(avatar.clips)))

    async def set_audiotype(request: web.Request) -> web.Response:
        """Play one of the avatar's clips while the session is not speaking (LiveTalking's custom states).
        ---
        post:
          summary: Show a clip (a wave, a nod, ...) at rest, or the idle animation again
          description: >
            The clip loops ping-pong while the session is silent; speech is lip-synced on the avatar's
            own frames as always. "idle", 0 and 1 return to the avatar's own idle animation.
          requestBody:
            required: true
            content:
              application/json:
                schema: SetAudiotype
          responses:
            200:
              description: the clip plays from the next frame
              content:
                application/json:
                  schema: Done
            400:
              description: the body is malformed, or the avatar has no such clip (the answer lists them)
              content:
                application/json:
                  schema: Error
            404: {$ref: '#/components/responses/NoSession'}
            413: {$ref: '#/components/responses/TooLarge'}
        """
        body = checked(SetAudiotypeSchema, await read_json(request))
        name = body["audiotype"]
        if name not in IDLE_TYPES and name not in avatar.clips:
            raise ClientError(400, f"avatar {avatar.name} has no clip {name!r}; known audiotypes: {known} "
                                   f"(add one with 'python -m lipsync_worker prepare-clip')")
        session = find(body["sessionid"])
        if name in IDLE_TYPES:
            session.clip.stop()
        else:
            session.clip.play(name, avatar.clips[name], restart=body["reinit"])
        return web.json_response({"code": 0, "msg": "ok"})

    async def record(request: web.Request) -> web.Response:
        """Start or end a recording of what the session's viewer is sent.
        ---
        post:
          summary: Record the session's video and audio into an MP4 (H.264 and AAC)
          description: >
            One recording at a time per session, at most RECORD_MAX_SECONDS and RECORD_MAX_BYTES
            (reaching either ends it). end_record returns once the file is complete; download it
            with GET /record/{sessionid}.
          requestBody:
            required: true
            content:
              application/json:
                schema: Record
          responses:
            200:
              description: started, or ended (with how long it is)
              content:
                application/json:
                  schema: Recorded
            400:
              description: the body is malformed
              content:
                application/json:
                  schema: Error
            404: {$ref: '#/components/responses/NoSession'}
            409:
              description: start_record while recording, or end_record while not recording
              content:
                application/json:
                  schema: Error
            413: {$ref: '#/components/responses/TooLarge'}
        """
        body = checked(RecordSchema, await read_json(request))
        session = find(body["sessionid"])
        try:
            if body["type"] == "start_record":
                recorder.start(session)
                return web.json_response({"code": 0, "msg": "ok"})
            recording = await recorder.end(session)
        except Conflict as exc:
            raise ClientError(409, str(exc)) from None
        return web.json_response({"code": 0, "msg": "ok", "data": {
            "seconds": recording.seconds, "dropped_frames": recording.dropped, "state": recording.state}})

    async def download(request: web.Request) -> web.FileResponse:
        """The session's last finished recording.
        ---
        get:
          summary: Download the session's last finished recording
          parameters:
            - name: sessionid
              in: path
              required: true
              schema:
                type: integer
                minimum: 0
          responses:
            200:
              description: the MP4 (H.264 video, AAC audio)
              content:
                video/mp4:
                  schema:
                    type: string
                    format: binary
            400:
              description: sessionid is not a number
              content:
                application/json:
                  schema: Error
            404:
              description: no such session, or no finished recording (none made, it failed, or it expired)
              content:
                application/json:
                  schema: Error
            409:
              description: the session is still recording
              content:
                application/json:
                  schema: Error
        """
        session = find(checked(SessionRequestSchema, dict(request.match_info))["sessionid"])
        try:
            path = recorder.file(session)
        except Conflict as exc:
            raise ClientError(409, str(exc)) from None
        except Missing as exc:
            raise ClientError(404, str(exc)) from None
        return web.FileResponse(path, headers={
            "Content-Type": "video/mp4",
            "Content-Disposition": f'attachment; filename="record-{session.id}.mp4"'})

    async def remove_recordings(app: web.Application) -> None:
        recorder.close()  # after on_shutdown closed every session, and with it its recording

    app.router.add_post("/set_audiotype", set_audiotype)
    app.router.add_post("/record", record)
    app.router.add_get("/record/{sessionid}", download)
    app.on_cleanup.append(remove_recordings)
