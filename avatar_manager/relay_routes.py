"""The relay's routes: LiveTalking's worker routes at /avatar/<key>/..., answered in the worker's
own format ({"code": 0, ...}; errors {"code": -1, "msg": ...}). An /offer starts the avatar when
it is not running and holds one connection for the life of the session it opens."""
from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify, request

from contracts import worker_api
from contracts.openapi import load

from . import relay, relayed_sessions
from .fleet import BadRequest, Fleet, StartFailed, Unavailable, valid_name
from .placement import CapacityError
from .store import NotFound, Store, StoreError

# The worker answers these as they are; the relay adds its own refusals.
_ERRORS = """
400: {description: "bad input (the key, or the body as the worker or the relay reads it)", content: {application/json: {schema: {$ref: '#/components/schemas/WorkerError'}}}}
401: {description: "API_TOKEN is set and the Authorization header does not carry it"}
404: {description: "no such avatar, instance or session", content: {application/json: {schema: {$ref: '#/components/schemas/WorkerError'}}}}
413: {description: "body too large"}
429: {description: "the avatar has max_session sessions already", content: {application/json: {schema: {$ref: '#/components/schemas/WorkerError'}}}}
502: {description: "the worker cannot be reached", content: {application/json: {schema: {$ref: '#/components/schemas/WorkerError'}}}}
503: {description: "not running, no capacity, or a start that failed", content: {application/json: {schema: {$ref: '#/components/schemas/WorkerError'}}}}
504: {description: "the worker did not answer in time", content: {application/json: {schema: {$ref: '#/components/schemas/WorkerError'}}}}
"""


def _with_errors(view, indent: int = 12):
    """The view's OpenAPI operation, completed with the error answers every relayed route has."""
    view.__doc__ = view.__doc__.rstrip() + _ERRORS.rstrip().replace("\n", "\n" + " " * indent) + "\n"
    return view


# Routes forwarded as they are: path -> (summary, its body in the OpenAPI document). The worker
# checks the bodies; the relay passes them on unread.
_JSON = "application/json: {schema: {$ref: '#/components/schemas/%s'}}"
_POSTS = {
    "human": ("Say text (type echo) or answer it through the LLM (type chat)", _JSON % "Human"),
    "humanaudio": ("Say an uploaded audio file",
                   "multipart/form-data: {schema: {$ref: '#/components/schemas/HumanAudio'}}"),
    "interrupt_talk": ("Stop the session's speech", _JSON % "SessionRequest"),
    "is_speaking": ("Whether the session's avatar is speaking", _JSON % "SessionRequest"),
    "record": ("Start or end recording the session (LiveTalking's start_record / end_record)",
               "application/json: {schema: {type: object}}"),
    "set_audiotype": ("Switch the session's idle audio or motion (LiveTalking's audiotype)",
                      "application/json: {schema: {type: object}}"),
}


def _post_doc(path: str, summary: str, body: str) -> str:
    return f"""Relayed to the worker's /{path}.
    ---
    post:
      summary: "{summary}"
      parameters: [{{in: path, name: key, required: true, schema: {{type: string}}, description: "avatar name or instance id"}}]
      requestBody: {{required: true, content: {{{body}}}}}
      responses:
        200: {{description: "the worker's answer", content: {{application/json: {{schema: {{type: object}}}}}}}}"""


def _worker_error(status: int, message: str, **extra) -> tuple[Response, int]:
    return jsonify({"code": -1, "msg": message, **extra}), status


def _answer(answer: relay.Answer) -> Response:
    return Response(answer.body, status=answer.status, content_type=answer.content_type)


def blueprint(fleet: Fleet, store: Store) -> Blueprint:
    routes = Blueprint("relay", __name__)
    streams = relay.Streams(fleet.settings.api_token)

    @routes.before_request
    def body_limit():
        request.max_content_length = relay.body_limit(request.path.rsplit("/", 1)[-1])

    @routes.errorhandler(BadRequest)
    @routes.errorhandler(NotFound)
    @routes.errorhandler(relay.RelayError)
    def refused(exc):
        status = 400 if isinstance(exc, BadRequest) else 404 if isinstance(exc, NotFound) else exc.status
        return _worker_error(status, str(exc))

    @routes.errorhandler(CapacityError)
    @routes.errorhandler(Unavailable)
    def unavailable(exc):
        reason = ("capacity" if isinstance(exc, CapacityError) else
                  "start_failed" if isinstance(exc, StartFailed) else "unavailable")
        return _worker_error(503, str(exc), reason=reason)

    @routes.errorhandler(StoreError)
    def store_down(exc):
        return _worker_error(503, f"the store is unavailable: {exc}", reason="unavailable")

    @routes.post("/avatar/<key>/offer")
    @_with_errors
    def offer(key: str):
        """Open a WebRTC session with the avatar, starting it first when it is not running. The
        session holds one connection of the instance until it closes, fails or expires.
        ---
        post:
          summary: "Open a WebRTC session (starts the avatar when needed)"
          parameters: [{in: path, name: key, required: true, schema: {type: string}, description: "avatar name or instance id"}]
          requestBody: {required: true, content: {application/json: {schema: {$ref: '#/components/schemas/Offer'}}}}
          responses:
            200:
              description: "the worker's SDP answer and the session's id"
              content: {application/json: {schema: {$ref: '#/components/schemas/Answer'}}}
        """
        body = request.get_data()
        valid_name(key)
        try:
            load(worker_api.OfferSchema(), request.get_json(silent=True))
        except (ValueError, RecursionError) as exc:
            raise BadRequest(f'expected {{"sdp": "<SDP offer>", "type": "offer"}}: {exc}') from None
        try:  # the key may be the id of a running instance, whatever its avatar's name
            avatar = fleet.find(key).avatar
        except NotFound:
            avatar = None
        instance, _ = fleet.start(key, avatar)
        try:
            answer = relay.forward(instance, "offer", body, "application/json", fleet.settings.api_token)
        except relay.RelayError:
            relayed_sessions.release(store, instance.avatar, instance.token)
            raise
        sessionid = answer.sessionid()
        if sessionid is None:  # refused by the worker: the connection goes back at once
            relayed_sessions.release(store, instance.avatar, instance.token)
        else:
            try:
                relayed_sessions.hold(store, instance, sessionid)
            except StoreError:
                # Without its document nothing would ever give the connection back.
                relayed_sessions.release(store, instance.avatar, instance.token)
                raise
        return _answer(answer)

    def forwarding(path: str, summary: str, body: str):
        def view(key: str):
            return _answer(relay.forward(fleet.find(key), path, request.get_data(),
                                         request.content_type or "application/json", fleet.settings.api_token))
        view.__name__ = path
        view.__doc__ = _post_doc(path, summary, body)
        return _with_errors(view, indent=8)

    for path, (summary, body) in _POSTS.items():
        routes.add_url_rule(f"/avatar/<key>/{path}", endpoint=path, view_func=forwarding(path, summary, body),
                            methods=["POST"])

    def stream(key: str, path: str, params: dict[str, str]) -> Response:
        upstream = streams.open(fleet.find(key), path, params)
        worker = upstream.response
        if worker.status_code != 200:  # the worker's refusal, as it is
            try:
                return Response(worker.content, status=worker.status_code,
                                content_type=worker.headers.get("Content-Type", "application/json"))
            finally:
                upstream.close()
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        for name in ("Content-Length", "Content-Disposition"):
            if name in worker.headers:
                headers[name] = worker.headers[name]
        response = Response(upstream.chunks(), status=200, headers=headers,
                            content_type=worker.headers.get("Content-Type", "application/octet-stream"))
        # Called by the server when the client goes, the worker ends, or nothing was sent at all.
        response.call_on_close(upstream.close)
        return response

    @routes.get("/avatar/<key>/sse")
    @_with_errors
    def events(key: str):
        """The worker's event stream (text/event-stream), streamed through while the client stays.
        ---
        get:
          summary: "The avatar's events: connected, speaking_started, text, reply, reply_end, speaking_ended, closed"
          parameters:
            - {in: path, name: key, required: true, schema: {type: string}, description: "avatar name or instance id"}
            - {in: query, name: sessionid, required: false, schema: {type: integer, minimum: 0}, description: "only this session's events"}
          responses:
            200: {description: "event: NAME / data: JSON lines, and ': keep-alive' every 15 s", content: {text/event-stream: {schema: {type: string}}}}
        """
        sessionid = request.args.get("sessionid")
        if sessionid is not None and not (sessionid.isascii() and sessionid.isdigit()):
            raise BadRequest("sessionid must be the number /offer returned")
        return stream(key, "sse", {} if sessionid is None else {"sessionid": sessionid})

    @routes.get("/avatar/<key>/record/<sessionid>")
    @_with_errors
    def recording(key: str, sessionid: str):
        """The session's recording, an MP4 file, streamed through.
        ---
        get:
          summary: "Download the session's recording (MP4)"
          parameters:
            - {in: path, name: key, required: true, schema: {type: string}, description: "avatar name or instance id"}
            - {in: path, name: sessionid, required: true, schema: {type: integer, minimum: 0}}
          responses:
            200: {description: "the recording", content: {video/mp4: {schema: {type: string, format: binary}}}}
        """
        if not (sessionid.isascii() and sessionid.isdigit()):
            raise BadRequest("sessionid must be the number /offer returned")
        return stream(key, f"record/{sessionid}", {})

    return routes


def register(app: Flask, fleet: Fleet, store: Store) -> None:
    app.register_blueprint(blueprint(fleet, store))
