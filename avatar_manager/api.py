"""REST routes, a drop-in for the existing avatar-manager. Envelope:
{"status": "success"|"error", "message": str, "data": ...}; bad input 400, unknown 404, capacity or a
dependency down 503. Handlers are stateless: everything lives in the store."""
from __future__ import annotations

import hmac
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, request, send_file
from flask_cors import CORS
from werkzeug.exceptions import HTTPException

from . import __version__, metrics, registration, relay, tts
from .gpus import read_gpus, unavailable_reason
from .instances import State
from .logs import setup_logging
from .pool import BadRequest, Pool, StartFailed, Unavailable
from .settings import Settings
from .store import CapacityError, NotFound, StoreError, open_store

log = logging.getLogger("avatar_manager.api")
WEB = Path(__file__).parent / "web"
# The console loads only its own files; `blob:` previews come from fetches that carry the API token.
# Any site may frame it: /?avatar=NAME&autostart=1 is meant for embedding.
CONSOLE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                  "connect-src 'self'; frame-ancestors *; base-uri 'none'; form-action 'none'")


def _open(path: str) -> bool:
    """Served without the API token: a browser must load the console to be asked for the token."""
    return path in ("/", "/health") or path.startswith("/static/")


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


def _text(body: dict, name: str, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise BadRequest(f"missing {name}")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return value


def _host() -> str:
    """Where the caller reached us: the workers are on the same host."""
    host = urlsplit(request.host_url).hostname or "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    setup_logging(None)
    store = open_store(settings)
    pool = Pool(settings, store)
    app = Flask("avatar_manager", static_folder=WEB, static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    if settings.cors_origins:
        CORS(app, origins=settings.cors_origins)

    @app.before_request
    def authenticate():
        if not settings.api_token or _open(request.path) or request.method == "OPTIONS":
            return None
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_token}".encode()):
            return _reply("missing or wrong API token (Authorization: Bearer ...)", status=401)
        return None

    @app.before_request
    def body_limit():
        # Refused from Content-Length before the body is read; a chunked body stops being read at
        # the limit. A registration's file part goes to a temporary file, not memory.
        if request.endpoint == "register":
            request.max_content_length = settings.max_avatar_file_bytes + 64 * 1024
        elif request.endpoint == "relayed":
            request.max_content_length = relay.body_limit(request.view_args["path"])

    @app.errorhandler(BadRequest)
    def bad_request(exc):
        return _reply(str(exc), status=400)

    @app.errorhandler(NotFound)
    def not_found(exc):
        return _reply(str(exc), status=404)

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
        return _reply(exc.description or exc.name, status=exc.code or 500)

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
        return jsonify({"status": "healthy", "service": "avatar-manager", "version": __version__})

    @app.get("/ready")
    def ready():
        store.ping()
        if not pool.supervised():
            return _reply("no supervisor holds the lease", status=503)
        return _reply("ready", {"store": "redis" if settings.redis_url else "sqlite"})

    @app.get("/status")
    def status():
        instances = store.list()
        active = [i for i in instances if i.state not in (State.FAILED, State.STOPPED)]
        gpus = read_gpus(settings.gpu_ids)
        host = _host()
        manager = {
            "running": sum(i.state == State.RUNNING for i in instances),
            "instances": len(active),
            "max": settings.max_avatars,
            "available": max(0, settings.max_avatars - len(active)),
            "utilization": f"{len(active)}/{settings.max_avatars}",
            "states": {s.value: sum(i.state == s for i in instances) for s in State},
            "gpu_distribution": dict(Counter(str(i.gpu) for i in active)),
            "total_connections": sum(i.connections for i in instances),
            "shared_avatars": sum(i.connections > 1 for i in instances),
            "avatar_map": {i.avatar: i.instance_id for i in active},
            "avatars": [i.to_api(host) for i in instances],
            "supervisor": store.lease_holder(time.time()),
            "version": __version__,
        }
        gpu = [g.to_api(sum(i.reserved_mb for i in active if i.gpu == g.index and i.state == State.STARTING),
                        sum(i.gpu == g.index for i in active)) for g in gpus]
        note = None
        if not gpus:
            note = unavailable_reason() or (
                f"none of GPU_IDS={','.join(map(str, settings.gpu_ids))} is a GPU that NVML reports"
                if settings.gpu_ids is not None else "NVML reports no GPU")
        return _reply("ok", {"manager": manager, "gpu": gpu, "gpu_note": note})

    @app.get("/metrics")
    def metrics_route():
        return Response(metrics.render(settings, store), mimetype="text/plain; version=0.0.4")

    @app.post("/avatar/start")
    def start():
        body = _body()
        instance, created = pool.start(_text(body, "avatar_id"), _text(body, "avatar_name", required=False))
        verb = "started" if created else "joined"
        return _reply(f"avatar {instance.avatar} {verb} ({instance.connections} connection(s))",
                      {**instance.to_api(_host()), "is_new": created})

    @app.post("/avatar/disconnect")
    def disconnect():
        body = _body()
        key = _text(body, "avatar_name", required=False) or _text(body, "avatar_id", required=False)
        if not key:
            raise BadRequest("missing avatar_name or avatar_id")
        instance = pool.disconnect(key)
        return _reply(f"avatar {instance.avatar} disconnected ({instance.connections} connection(s) left)",
                      instance.to_api(_host()))

    @app.post("/avatar/stop")
    def stop():
        body = _body()
        force = body.get("force", True)
        if not isinstance(force, bool):
            raise BadRequest("force must be true or false")
        remaining = pool.stop(_text(body, "avatar_id"), force)
        if remaining is not None:
            return _reply(f"avatar {remaining.avatar} stays up with {remaining.connections} connection(s)",
                          remaining.to_api(_host()))
        return _reply(f"avatar {body['avatar_id']} stopped")

    @app.post("/avatar/restart")
    def restart():
        instance = pool.restart(_text(_body(), "avatar_id"))
        return _reply(f"avatar {instance.avatar} restarted", instance.to_api(_host()))

    @app.post("/avatar/stop-all")
    def stop_all():
        count = pool.stop_all()
        return _reply(f"{count} avatar instance(s) stopped")

    @app.get("/avatar/list")
    def list_instances():
        instances = [i.to_api(_host()) for i in pool.list()]
        return _reply("ok", instances, count=len(instances))

    @app.get("/avatar/info/<key>")
    def info(key: str):
        return _reply("ok", pool.find(key).to_api(_host()))

    @app.get("/tts")
    def tts_servers():
        """One line per voice model: is a server of it answering on its port (started lazily)."""
        models = list(tts.table(settings.tts_ports).values())
        with ThreadPoolExecutor(len(models)) as probes:
            healths = list(probes.map(lambda m: tts.probe(m, timeout=0.5), models))
        servers = [{"model": m.name, "port": m.port, "running": h is not None,
                    "uptime_seconds": h.get("uptime_seconds") if h else None} for m, h in zip(models, healths)]
        return _reply("ok", servers, count=len(servers))

    # --- the signalling relay: LiveTalking's worker routes, reached through the manager -----------

    @app.post(f"/avatar/<key>/<any({', '.join(relay.RELAYED)}):path>")
    def relayed(key: str, path: str):
        """Answers in the worker's own format, {"code": ...}, errors included."""
        try:
            answer = relay.forward(pool.find(key), path, request.get_data(),
                                   request.content_type or "application/json")
        except (BadRequest, NotFound, relay.RelayError) as exc:
            status = 400 if isinstance(exc, BadRequest) else 404 if isinstance(exc, NotFound) else exc.status
            return jsonify({"code": -1, "msg": str(exc)}), status
        return Response(answer.body, status=answer.status, content_type=answer.content_type)

    # --- the web console ---------------------------------------------------------------------------

    @app.get("/")
    def console():
        response = send_file(WEB / "index.html", max_age=0)
        response.headers["Content-Security-Policy"] = CONSOLE_POLICY
        return response

    @app.get("/console/config")
    def console_config():
        """What the page needs to know: chat available, the STUN/TURN servers, limits."""
        return _reply("ok", {"chat": settings.chat, "ice_servers": settings.ice_servers,
                             "connect_timeout": settings.connect_timeout,
                             "tts_models": sorted(settings.tts_ports),
                             "max_upload_bytes": settings.max_avatar_file_bytes, "version": __version__})

    # --- registration ----------------------------------------------------------------------------

    @app.errorhandler(registration.RegistrationError)
    def refused(exc):
        return _reply(str(exc), status=exc.status, **exc.detail)

    @app.post("/avatar/register")
    def register():
        form = request.form
        name = form.get("avatar_name", "")
        meta = {"owner": form.get("user_id", ""), "description": form.get("description", ""),
                "tts_model": form.get("tts_model") or None, "timbre": form.get("timbre") or None,
                "engine": form.get("engine") or None}
        upload = request.files.get("file")
        if upload is None:
            raise BadRequest("missing the file (multipart field 'file')")
        registration.check_request(settings, store, name, meta["tts_model"], meta["engine"])
        if not pool.supervised():
            raise Unavailable("no supervisor is running to prepare the avatar")
        job = registration.submit(settings, store, name, meta, upload.save)
        return _job_reply(registration.wait(store, job, settings.register_wait))

    def _job_reply(job: dict):
        if job["state"] == "done":
            record = job["record"]
            return _reply(f"avatar {record['name']} registered in {record['processing_seconds']:.2f} s",
                          _with_preview(record))
        if job["state"] == "failed":
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
        job = store.get_doc("job", job_id) if job_id.isalnum() else None
        if job is None:
            raise NotFound(f"no registration job {job_id!r}")
        return _job_reply(job)

    @app.get("/avatar/avatars")
    def avatars():
        records = [_with_preview(r) for r in registration.listing(settings, store)]
        return _reply("ok", records, count=len(records))

    @app.get("/avatar/<name>/preview")
    def preview(name: str):
        pool.find_name(name)
        path = registration.preview(settings, name)
        if path is None:
            raise NotFound(f"no avatar {name!r}")
        return send_file(path, max_age=60)

    @app.delete("/avatar/<name>")
    def delete(name: str):
        pool.find_name(name)
        if not registration.exists(settings, store, name):
            raise NotFound(f"no avatar {name!r}")
        instance = store.get(name)
        if instance is not None and instance.avatar == name:  # not another avatar's instance id
            if instance.state != State.FAILED:
                return _reply(f"avatar {name!r} has a {instance.state.value} instance; stop it first", status=409)
            pool.forget_failed(name)
        registration.delete(settings, store, name)
        return _reply(f"avatar {name} deleted")

    return app
