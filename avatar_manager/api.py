"""REST routes, a drop-in for the existing avatar-manager. Envelope:
{"status": "success"|"error", "message": str, "data": ...}; bad input 400, unknown 404, capacity or a
dependency down 503. Handlers are stateless: everything lives in the store."""
from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from flask import Flask, Request, Response, jsonify, request, send_file
from flask_cors import CORS
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.routing import BaseConverter
from werkzeug.wsgi import LimitedStream

from contracts.avatars import AvatarError, avatar_dir
from contracts import auth
from contracts.cors import ANY as ANY_ORIGIN
from contracts.openapi import flask_document, load

from . import __version__, avatar_sync, hosts, metrics, registration, relay_routes, schemas
from .gpus import read_gpus, unavailable_reason
from .instances import State
from .lease import FLEET
from .model_servers import TTS, probe, table
from .logs import setup_logging
from .fleet import BadRequest, Conflict, Fleet, StartFailed, Unavailable, valid_name
from .placement import CapacityError
from .settings import Settings
from .store import NotFound, StoreError, open_store

log = logging.getLogger("avatar_manager.api")
WEB = Path(__file__).parent / "web"
# The console loads only its own files; `blob:` previews come from fetches that carry the API token.
# Any site may frame it: /?avatar=NAME&autostart=1 is meant for embedding.
CONSOLE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                  "connect-src 'self'; frame-ancestors *; base-uri 'none'; form-action 'none'")


def _open(path: str) -> bool:
    """Served without the API token: a browser must load the console to be asked for the token."""
    return path in ("/", "/health", "/openapi.json") or path.startswith("/static/")


def _reply(message: str, data=None, status: int = 200, **extra) -> tuple[Response, int]:
    body = {"status": "success" if status < 400 else "error", "message": message}
    if data is not None:
        body["data"] = data
    body.update(extra)
    return jsonify(body), status


def _body() -> dict:
    request.get_data()  # whatever its content type, a body over the limit is a 413, not a 400
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # nested deeper than the JSON parser goes
        body = None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object, e.g. {\"avatar_id\": \"demo_user_1\"}")
    return body


def _load(schema) -> dict:
    """The JSON body checked against its schema (avatar_manager.schemas); 400 saying what is wrong."""
    try:
        return load(schema, _body())
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _flag(name: str) -> bool:
    """A query flag: 1/true or 0/false (absent: false)."""
    value = request.args.get(name, "0")
    if value not in ("0", "1", "true", "false"):
        raise BadRequest(f"{name} must be 1 or 0 (or true or false), not {value!r}")
    return value in ("1", "true")


def _document(app: Flask, settings: Settings) -> dict:
    """The manager's OpenAPI document; it names the bearer token only where API_TOKEN is set."""
    document = flask_document(app, "Avatar manager", __version__, schemas.SCHEMAS)
    components = document.setdefault("components", {})
    components["responses"] = schemas.RESPONSES
    if settings.api_token:
        components["securitySchemes"] = {auth.SCHEME_NAME: {"type": "http", "scheme": "bearer"}}
        document["security"] = [{auth.SCHEME_NAME: []}]
    return document


class _Request(Request):
    """werkzeug stops reading a chunked body at the size limit and returns what it read, so a body
    over the limit would be parsed cut short (a 400): a byte beyond the limit makes it a 413."""

    def get_data(self, *args, **kwargs):
        data = super().get_data(*args, **kwargs)
        stream = self.stream
        if (self.content_length is None and isinstance(stream, LimitedStream) and stream.is_exhausted
                and self.environ["wsgi.input"].read(1)):
            raise RequestEntityTooLarge()
        return data


class _AvatarName(BaseConverter):
    """/avatar/<avatar:name>: any segment but the fixed routes' words, so that DELETE /avatar/start
    is a 405 (and OPTIONS /avatar/start does not offer DELETE), not the deletion of an avatar."""
    regex = rf"(?!(?:{'|'.join(schemas.ROUTE_WORDS)})$)[^/]+"


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    setup_logging(None)
    store = open_store(settings)
    fleet = Fleet(settings, store)
    app = Flask("avatar_manager", static_folder=WEB, static_url_path="/static")
    app.request_class = _Request
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    app.url_map.converters["avatar"] = _AvatarName
    if settings.cors_origins:  # none: no CORS headers at all, so browsers keep other origins out
        # Every route, preflights included; the console and backends send the token in Authorization.
        CORS(app, origins=settings.cors_origins, send_wildcard=settings.cors_origins == [ANY_ORIGIN],
             allow_headers=["Authorization", "Content-Type"], max_age=600)

    @app.before_request
    def authenticate():
        if not settings.api_token or _open(request.path) or request.method == "OPTIONS":
            return None
        if not auth.authorized(request.headers.get("Authorization"), settings.api_token):
            return _reply(auth.REFUSAL, status=401)
        return None

    @app.before_request
    def body_limit():
        # Refused from Content-Length before the body is read; a chunked body stops being read at
        # the limit. A registration's file part goes to a temporary file, not memory.
        if request.endpoint == "register":
            request.max_content_length = settings.max_avatar_file_bytes + 64 * 1024

    @app.errorhandler(BadRequest)
    def bad_request(exc):
        return _reply(str(exc), status=400)

    @app.errorhandler(NotFound)
    def not_found(exc):
        return _reply(str(exc), status=404)

    @app.errorhandler(Conflict)
    def conflict(exc):
        return _reply(str(exc), status=409)

    @app.errorhandler(CapacityError)
    @app.errorhandler(Unavailable)
    def unavailable(exc):
        # Which 503 it is, for clients that explain it (the console) without parsing the message.
        reason = ("capacity" if isinstance(exc, CapacityError) else
                  "start_failed" if isinstance(exc, StartFailed) else "unavailable")
        return _reply(str(exc), status=503, reason=reason)

    @app.errorhandler(StoreError)
    def store_down(exc):
        log.error("%s", exc)
        return _reply(f"the store is unavailable: {exc}", status=503)

    @app.errorhandler(HTTPException)
    def http_error(exc):
        response, status = _reply(exc.description or exc.name, status=exc.code or 500)
        if "Allow" in dict(exc.get_headers()):  # a 405 says which methods the path takes
            response.headers["Allow"] = dict(exc.get_headers())["Allow"]
        return response, status

    @app.errorhandler(Exception)
    def internal(exc):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _reply(f"internal error: {type(exc).__name__}", status=500)

    @app.after_request
    def no_sniffing(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.get("/health")
    def health():
        """Liveness; never needs the token.
        ---
        get:
          summary: "Liveness"
          security: []
          responses:
            200: {description: "the manager process answers", content: {application/json: {schema: Health}}}
        """
        return jsonify({"status": "healthy", "service": "avatar-manager", "version": __version__})

    @app.get("/ready")
    def ready():
        """---
        get:
          summary: "Readiness: the store answers and a host agent is live"
          responses:
            200: {description: "ready", content: {application/json: {schema: ReadyReply}}}
            401: {$ref: '#/components/responses/Unauthorized'}
            503: {$ref: '#/components/responses/Unavailable'}
        """
        store.ping()
        if not fleet.supervised():
            return _reply("no host agent is live (no supervisor holds a host's lease)", status=503)
        return _reply("ready", {"store": "redis" if settings.redis_url else "sqlite"})

    @app.get("/status")
    def status():
        """---
        get:
          summary: "The fleet: instances (FAILED ones too), capacity, GPUs"
          responses:
            200: {description: "the status", content: {application/json: {schema: StatusReply}}}
            401: {$ref: '#/components/responses/Unauthorized'}
            503: {$ref: '#/components/responses/Unavailable'}
        """
        instances = store.list()
        active = [i for i in instances if i.state not in (State.FAILED, State.STOPPED)]
        gpus = read_gpus(settings.gpu_ids, sensors=True)
        host = settings.public_host  # never the request's Host header: clients forge it
        now, known = store.clock(), hosts.all_hosts(store)
        capacity = sum(h.max_instances for h in known if h.live(now)) or settings.max_avatars
        manager = {
            "running": sum(i.state == State.RUNNING for i in instances),
            "instances": len(active),
            "max": capacity,
            "available": max(0, capacity - len(active)),
            "utilization": f"{len(active)}/{capacity}",
            "states": {s.value: sum(i.state == s for i in instances) for s in State},
            "gpu_distribution": dict(Counter(str(i.gpu) for i in active)),
            "total_connections": sum(i.connections for i in instances),
            "shared_avatars": sum(i.connections > 1 for i in instances),
            "avatar_map": {i.avatar: i.instance_id for i in active},
            "avatars": [i.to_api(host) for i in instances],
            "supervisor": store.lease_holder(FLEET),
            "version": __version__,
        }
        fleet_hosts = [{"id": h.id, "state": "live" if h.live(now) else "lost", "address": h.address,
                        "public_host": h.public_host, "max": h.max_instances,
                        "instances": sum(i.host == h.id for i in active), "gpus": h.gpu_detail,
                        "gpu_note": h.gpu_error, "lease_seconds_left": round(max(0.0, h.expires - now), 1)}
                       for h in known]
        gpu = [g.to_api(sum(i.reserved_mb for i in active if i.gpu == g.index and i.state == State.STARTING),
                        sum(i.gpu == g.index for i in active)) for g in gpus]
        note = None
        if not gpus:
            note = unavailable_reason() or (
                f"none of GPU_IDS={','.join(map(str, settings.gpu_ids))} is a GPU that NVML reports"
                if settings.gpu_ids is not None else "NVML reports no GPU")
        return _reply("ok", {"manager": manager, "gpu": gpu, "gpu_note": note, "hosts": fleet_hosts})

    @app.get("/metrics")
    def metrics_route():
        """---
        get:
          summary: "Prometheus metrics"
          responses:
            200: {description: "Prometheus text format", content: {text/plain: {schema: {type: string}}}}
            401: {$ref: '#/components/responses/Unauthorized'}
            503: {$ref: '#/components/responses/Unavailable'}
        """
        return Response(metrics.render(settings, store), mimetype="text/plain; version=0.0.4")

    @app.post("/avatar/start")
    def start():
        """Join the avatar's instance or start one. At MAX_AVATARS the instance idle the longest
        is stopped to make room; 503 (reason capacity) only when none is idle.
        ---
        post:
          summary: "Join or start an avatar"
          requestBody: {required: true, content: {application/json: {schema: Start}}}
          responses:
            200: {description: "running; is_new for the start that created it", content: {application/json: {schema: StartReply}}}
            400: {$ref: '#/components/responses/BadRequest'}
            401: {$ref: '#/components/responses/Unauthorized'}
            404: {$ref: '#/components/responses/NotFound'}
            413: {$ref: '#/components/responses/TooLarge'}
            503: {$ref: '#/components/responses/Unavailable'}
        """
        body = _load(schemas.StartSchema())
        instance, created = fleet.start(body["avatar_id"], body["avatar_name"])
        verb = "started" if created else "joined"
        return _reply(f"avatar {instance.avatar} {verb} ({instance.connections} connection(s))",
                      {**instance.to_api(settings.public_host), "is_new": created})

    @app.post("/avatar/disconnect")
    def disconnect():
        """---
        post:
          summary: "One user leaves: connections - 1 (at 0 it stays warm for IDLE_TIMEOUT)"
          requestBody: {required: true, content: {application/json: {schema: {allOf: [{$ref: '#/components/schemas/Disconnect'}], anyOf: [{required: [avatar_name]}, {required: [avatar_id]}]}}}}
          responses:
            200: {description: "the instance after", content: {application/json: {schema: InstanceReply}}}
            400: {$ref: '#/components/responses/BadRequest'}
            401: {$ref: '#/components/responses/Unauthorized'}
            404: {$ref: '#/components/responses/NotFound'}
            413: {$ref: '#/components/responses/TooLarge'}
            503: {$ref: '#/components/responses/Unavailable'}
        """
        body = _load(schemas.DisconnectSchema())
        key = body["avatar_name"] or body["avatar_id"]
        instance = fleet.disconnect(key)
        return _reply(f"avatar {instance.avatar} disconnected ({instance.connections} connection(s) left)",
                      instance.to_api(settings.public_host))

    @app.post("/avatar/stop")
    def stop():
        """---
        post:
          summary: "Stop an instance (by its id or its avatar's name)"
          requestBody: {required: true, content: {application/json: {schema: Stop}}}
          responses:
            200: {description: "stopped (or, force false, the instance that stays up)", content: {application/json: {schema: StopReply}}}
            400: {$ref: '#/components/responses/BadRequest'}
            401: {$ref: '#/components/responses/Unauthorized'}
            404: {$ref: '#/components/responses/NotFound'}
            409: {$ref: '#/components/responses/Conflict'}
            413: {$ref: '#/components/responses/TooLarge'}
            503: {$ref: '#/components/responses/Unavailable'}
        """
        body = _load(schemas.StopSchema())
        remaining = fleet.stop(body["avatar_id"], body["force"])
        if remaining is not None:
            return _reply(f"avatar {remaining.avatar} stays up with {remaining.connections} connection(s)",
                          remaining.to_api(settings.public_host))
        return _reply(f"avatar {body['avatar_id']} stopped")

    @app.post("/avatar/restart")
    def restart():
        """---
        post:
          summary: "A new process on the same port; clears FAILED"
          requestBody: {required: true, content: {application/json: {schema: Restart}}}
          responses:
            200: {description: "running again", content: {application/json: {schema: InstanceReply}}}
            400: {$ref: '#/components/responses/BadRequest'}
            401: {$ref: '#/components/responses/Unauthorized'}
            404: {$ref: '#/components/responses/NotFound'}
            413: {$ref: '#/components/responses/TooLarge'}
            503: {$ref: '#/components/responses/Unavailable'}
        """
        instance = fleet.restart(_load(schemas.RestartSchema())["avatar_id"])
        return _reply(f"avatar {instance.avatar} restarted", instance.to_api(settings.public_host))

    @app.post("/avatar/stop-all")
    def stop_all():
        """---
        post:
          summary: "Stop every instance"
          responses:
            200: {description: "how many were stopped", content: {application/json: {schema: Message}}}
            401: {$ref: '#/components/responses/Unauthorized'}
            503: {$ref: '#/components/responses/Unavailable'}
        """
        count = fleet.stop_all()
        return _reply(f"{count} avatar instance(s) stopped")

    @app.get("/avatar/list")
    def list_instances():
        """The instances that serve, each with a port and a process (what a backend resyncs
        from); ?all=1: every record, FAILED ones too.
        ---
        get:
          summary: "Running instances (all=1: every record)"
          parameters:
            - {in: query, name: all, required: false, schema: {type: string, enum: ["0", "1", "true", "false"]}, description: "1: FAILED and process-less records too"}
          responses:
            200: {description: "the instances; count beside data", content: {application/json: {schema: InstanceList}}}
            400: {$ref: '#/components/responses/BadRequest'}
            401: {$ref: '#/components/responses/Unauthorized'}
            503: {$ref: '#/components/responses/Unavailable'}
        """
        instances = [i.to_api(settings.public_host) for i in fleet.list(everything=_flag("all"))]
        return _reply("ok", instances, count=len(instances))

    @app.get("/avatar/info/<key>")
    def info(key: str):
        """---
        get:
          summary: "One instance, by instance id (demo_user_1), a joiner's id, or avatar name (demo)"
          parameters:
            - {in: path, name: key, required: true, schema: {type: string, pattern: '^[A-Za-z0-9_-]{1,64}$'}}
          responses:
            200: {description: "the instance", content: {application/json: {schema: InstanceReply}}}
            400: {$ref: '#/components/responses/BadRequest'}
            401: {$ref: '#/components/responses/Unauthorized'}
            404: {$ref: '#/components/responses/NotFound'}
            503: {$ref: '#/components/responses/Unavailable'}
        """
        return _reply("ok", fleet.find(key).to_api(settings.public_host))

    @app.get("/tts")
    def tts_servers():
        """One line per voice model: is a server of it answering on its port (started lazily).
        ---
        get:
          summary: "The voice servers"
          responses:
            200: {description: "one per voice model", content: {application/json: {schema: TtsReply}}}
            401: {$ref: '#/components/responses/Unauthorized'}
        """
        models = list(table(TTS, settings.tts_ports).values())
        with ThreadPoolExecutor(len(models)) as probes:
            healths = list(probes.map(lambda m: probe(m, timeout=0.5), models))
        servers = [{"model": m.name, "port": m.port, "running": h is not None,
                    "uptime_seconds": h.get("uptime_seconds") if h else None} for m, h in zip(models, healths)]
        return _reply("ok", servers, count=len(servers))

    # --- the signalling relay: LiveTalking's worker routes, reached through the manager -----------

    relay_routes.register(app, fleet, store)

    # --- the web console ---------------------------------------------------------------------------

    @app.get("/")
    def console():
        """---
        get:
          summary: "The web console"
          security: []
          responses:
            200: {description: "its page", content: {text/html: {schema: {type: string}}}}
        """
        response = send_file(WEB / "index.html", max_age=0)
        response.headers["Content-Security-Policy"] = CONSOLE_POLICY
        return response

    @app.get("/console/config")
    def console_config():
        """What the page needs to know: chat available, the STUN/TURN servers, limits.
        ---
        get:
          summary: "The web console's settings"
          responses:
            200: {description: "its settings", content: {application/json: {schema: ConsoleConfigReply}}}
            401: {$ref: '#/components/responses/Unauthorized'}
        """
        return _reply("ok", {"chat": settings.chat, "ice_servers": settings.ice_servers,
                             "connect_timeout": settings.connect_timeout,
                             "tts_models": sorted(settings.tts_ports), "asr_models": sorted(settings.asr_ports),
                             "max_upload_bytes": settings.max_avatar_file_bytes, "version": __version__})

    # --- registration ----------------------------------------------------------------------------

    @app.errorhandler(registration.RegistrationError)
    def refused(exc):
        return _reply(str(exc), status=exc.status, **exc.detail)

    @app.post("/avatar/register")
    def register():
        """Prepare an avatar from a photo or a video; answers within REGISTER_WAIT, else 202 and a job.
        ---
        post:
          summary: "Register an avatar"
          requestBody: {required: true, content: {multipart/form-data: {schema: Register}}}
          responses:
            200: {description: "registered", content: {application/json: {schema: AvatarReply}}}
            202: {description: "still preparing after REGISTER_WAIT: poll status_url", content: {application/json: {schema: JobReply}}}
            400: {$ref: '#/components/responses/BadRequest'}
            401: {$ref: '#/components/responses/Unauthorized'}
            409: {$ref: '#/components/responses/Conflict'}
            413: {description: "the file, or what it decodes to, is too large (MAX_AVATAR_FILE_SIZE, MAX_IMAGE_PIXELS, MAX_VIDEO_PIXELS, REGISTER_MEMORY_MB)", content: {application/json: {schema: Error}}}
            415: {description: "not a photo or a video", content: {application/json: {schema: Error}}}
            422: {description: "no usable face, or a video of under 5 frames a second; `reasons` and `metrics` say why", content: {application/json: {schema: Error}}}
            429: {description: "REGISTER_WORKERS + REGISTER_QUEUE registrations are running or waiting already: try again later", content: {application/json: {schema: Error}}}
            503: {$ref: '#/components/responses/Unavailable'}
        """
        try:
            form = load(schemas.RegisterSchema(), {**request.form.to_dict(), "file": request.files.get("file")})
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        name, upload = form["avatar_name"], form["file"]
        meta = {"owner": form["user_id"], "description": form["description"],
                **{k: form[k] or None for k in ("tts_model", "timbre", "asr_model", "language", "engine")}}
        registration.check_request(settings, store, name, meta)
        if not fleet.supervised():
            raise Unavailable("no supervisor is running to prepare the avatar")
        job = registration.submit(settings, store, name, meta, upload.save)
        return _job_reply(registration.wait(store, job, settings.register_wait))

    def _job_reply(job: dict):
        if job["state"] == registration.JobState.DONE:
            record = job["record"]
            return _reply(f"avatar {record['name']} registered in {record['processing_seconds']:.2f} s",
                          _with_preview(record))
        if job["state"] == registration.JobState.FAILED:
            error = job["error"] or {}
            return _reply(error.get("message", "registration failed"), status=error.get("status", 500),
                          **{k: v for k, v in error.items() if k not in ("status", "message")})
        return _reply(f"registering {job['avatar']} ({job['state']}); poll /avatar/jobs/{job['id']}",
                      {"job_id": job["id"], "state": job["state"], "status_url": f"/avatar/jobs/{job['id']}"},
                      status=202)

    def _with_preview(record: dict) -> dict:
        return {**record, "preview_url": f"/avatar/{record['name']}/preview"}

    @app.get("/avatar/jobs/<job_id>")
    def job_status(job_id: str):
        """A registration's outcome, as /avatar/register would have answered it.
        ---
        get:
          summary: "A registration job"
          parameters:
            - {in: path, name: job_id, required: true, schema: {type: string}}
          responses:
            200: {description: "registered", content: {application/json: {schema: AvatarReply}}}
            202: {description: "still preparing after REGISTER_WAIT: poll status_url", content: {application/json: {schema: JobReply}}}
            400: {$ref: '#/components/responses/BadRequest'}
            401: {$ref: '#/components/responses/Unauthorized'}
            404: {$ref: '#/components/responses/NotFound'}
            409: {$ref: '#/components/responses/Conflict'}
            413: {description: "what the file decodes to is too large (MAX_IMAGE_PIXELS, MAX_VIDEO_PIXELS, REGISTER_MEMORY_MB)", content: {application/json: {schema: Error}}}
            415: {description: "not a photo or a video", content: {application/json: {schema: Error}}}
            422: {description: "no usable face, or a video of under 5 frames a second; `reasons` and `metrics` say why", content: {application/json: {schema: Error}}}
            503: {$ref: '#/components/responses/Unavailable'}
        """
        job = store.get_doc("job", job_id) if job_id.isalnum() else None
        if job is None:
            raise NotFound(f"no registration job {job_id!r}")
        return _job_reply(job)

    @app.get("/avatar/avatars")
    def avatars():
        """---
        get:
          summary: "The registered avatars, and folders put in place by hand"
          responses:
            200: {description: "the avatars; count beside data", content: {application/json: {schema: AvatarList}}}
            401: {$ref: '#/components/responses/Unauthorized'}
            503: {$ref: '#/components/responses/Unavailable'}
        """
        records = [_with_preview(r) for r in registration.listing(settings, store)]
        return _reply("ok", records, count=len(records))

    @app.get("/avatar/<name>/preview")
    def preview(name: str):
        """---
        get:
          summary: "The avatar's first frame"
          parameters:
            - {in: path, name: name, required: true, schema: {type: string, pattern: '^[A-Za-z0-9_-]{1,64}$'}}
          responses:
            200: {description: "an image", content: {image/png: {schema: {type: string, format: binary}}, image/jpeg: {schema: {type: string, format: binary}}}}
            400: {$ref: '#/components/responses/BadRequest'}
            401: {$ref: '#/components/responses/Unauthorized'}
            404: {$ref: '#/components/responses/NotFound'}
        """
        valid_name(name)
        path = registration.preview(settings, name)
        if path is None:
            raise NotFound(f"no avatar {name!r}")
        return send_file(path, max_age=60)

    @app.get("/avatar/<name>/folder")
    def folder(name: str):
        """A registered avatar's prepared folder, for a host that does not hold it (avatar_sync):
        served from this API's AVATAR_DATA_DIR, where registered avatars live.
        ---
        get:
          summary: "A registered avatar's folder, as a tar"
          parameters:
            - {in: path, name: name, required: true, schema: {type: string, pattern: '^[A-Za-z0-9_-]{1,64}$'}}
          responses:
            200:
              description: "an uncompressed tar of the folder: its files and folders, paths relative to it. Check it against the digest before using it"
              headers:
                X-Avatar-Digest: {description: "the digest the registry keeps for the avatar (sha256:HEX over its paths and contents)", schema: {type: string}}
              content: {application/x-tar: {schema: {type: string, format: binary}}}
            400: {$ref: '#/components/responses/BadRequest'}
            401: {$ref: '#/components/responses/Unauthorized'}
            404: {$ref: '#/components/responses/NotFound'}
            503: {$ref: '#/components/responses/Unavailable'}
        """
        valid_name(name)
        digest = (store.get_doc("avatar", name) or {}).get("digest")
        if not digest:  # a folder put in place by hand is not distributed
            raise NotFound(f"no registered avatar {name!r} (avatars registered before digests: register them again)")
        path = avatar_dir(settings.data_dir, name)
        try:
            length, pieces = avatar_sync.folder_tar(path)
        except FileNotFoundError:
            raise Unavailable(f"avatar {name!r} is registered, but its folder is not in this API's AVATAR_DATA_DIR "
                              f"({settings.data_dir}): the API serves registered avatars from there") from None
        except (AvatarError, OSError) as exc:
            raise Unavailable(f"avatar {name!r}: its folder cannot be read here: {exc}") from None
        return Response(pieces, mimetype=avatar_sync.TAR_TYPE, headers={
            "Content-Length": str(length), avatar_sync.DIGEST_HEADER: digest, "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="{name}.tar"'})

    @app.delete("/avatar/<avatar:name>")
    def delete(name: str):
        """---
        delete:
          summary: "Delete an avatar (its instance must be stopped, or FAILED)"
          parameters:
            - {in: path, name: name, required: true, schema: {type: string, pattern: '^[A-Za-z0-9_-]{1,64}$'}}
          responses:
            200: {description: "deleted", content: {application/json: {schema: Message}}}
            400: {$ref: '#/components/responses/BadRequest'}
            401: {$ref: '#/components/responses/Unauthorized'}
            404: {$ref: '#/components/responses/NotFound'}
            409: {$ref: '#/components/responses/Conflict'}
            503: {$ref: '#/components/responses/Unavailable'}
        """
        valid_name(name)
        if not registration.exists(settings, store, name):
            raise NotFound(f"no avatar {name!r}")
        instance = store.get(name)
        if instance is not None and instance.avatar == name:  # not another avatar's instance id
            if instance.state != State.FAILED:
                return _reply(f"avatar {name!r} has a {instance.state.value} instance; stop it first", status=409)
            fleet.forget_failed(name)
        registration.delete(settings, store, name)
        return _reply(f"avatar {name} deleted")

    # --- the document of all the above ------------------------------------------------------------

    @app.get("/openapi.json")
    def openapi():
        """---
        get:
          summary: "This OpenAPI document"
          security: []
          responses:
            200: {description: "OpenAPI 3", content: {application/json: {schema: {type: object}}}}
        """
        return jsonify(document)

    document = _document(app, settings)  # every route is in place by now
    return app
