"""Avatar registration: from a photo or a video to a ready avatar and its record in the registry.

The manager decides and records: what it refuses before a byte is stored (check_request), one
registration of a name at a time (lock), the queue's slots, and the registry record. The worker
prepares: its `prepare --json` command (contracts.prepare: content sniffing, face detection,
quality checks, an atomic rename into place, MuseTalk's latents) runs as a child and answers with
what the record needs, so OpenCV and the decoders never load in the manager. Both paths run that
child: `python -m avatar_manager register PATH --name NAME` waits for it (register); the API
saves an upload and queues a job (one of REGISTER_WORKERS + REGISTER_QUEUE slots, else a 429),
which the supervisor runs (registration_jobs) and which records the outcome. The record carries
the digest of the folder as installed (seal_folder): hosts that do not hold the folder download it
from the API and check it against that (avatar_sync).
"""
from __future__ import annotations

import json
import math
import secrets
import shutil
import subprocess
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Callable

from contracts import asr_models, prepare, tts_models
from contracts import musetalk_weights as weights
from contracts.avatars import (DEFAULT_CONFIG, AvatarError, avatar_dir, avatar_lock, check_name, is_livetalking,
                               read_config, seal)
from contracts.bounds import Bounds
from contracts.engines import ENGINES

from . import procs
from .settings import Settings
from .store.base import Store

LOCK_TTL = 900.0          # a registration lock outlives any real registration; a crashed one frees it
JOB_KEEP = 3600.0         # finished jobs stay visible this long
MAX_ANSWER_BYTES = 1024 * 1024   # the prepare child's answer: a few facts and measures
# Decoders use a thread each per core, and glibc gives each thread up to 64 MB of address space
# of its own: without this, REGISTER_MEMORY_MB would be eaten by reservations on a many-core host.
CHILD_ENV = {"MALLOC_ARENA_MAX": "2"}


class JobState(str, Enum):
    """A registration job's state, as its store document and the API say it."""
    QUEUED = "queued"
    PREPARING = "preparing"
    DONE = "done"
    FAILED = "failed"


ENDED = frozenset({JobState.DONE, JobState.FAILED})


class RegistrationError(Exception):
    """Refused: `status` is the HTTP status (400, 409, 413, 415, 422, 429, 503), the message says why."""

    def __init__(self, status: int, message: str, **detail) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail

    def to_json(self) -> dict:
        return {"status": self.status, "message": str(self), **self.detail}


def check_request(settings: Settings, store: Store, name: str, meta: dict) -> None:
    """What can be refused before any byte of the file is stored (`meta`: as prepare_request's)."""
    engine = meta.get("engine")
    try:
        check_name(name)
        if meta.get("tts_model"):
            tts_models.canonical_model(meta["tts_model"])
        if meta.get("asr_model"):
            asr_models.canonical_model(meta["asr_model"])
        if meta.get("language"):
            asr_models.check_language(meta["language"])
        if engine and engine not in ENGINES:
            raise ValueError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    except ValueError as exc:
        raise RegistrationError(400, str(exc)) from None
    if engine == "musetalk":
        absent = weights.missing(weights.models_dir())
        if absent:  # its latents are made at registration, and no worker could run it anyway
            raise RegistrationError(503, f"the musetalk engine has no weights here (MODELS_DIR="
                                         f"{weights.models_dir().resolve()} lacks {', '.join(absent)}); run "
                                         f"'{weights.DOWNLOAD_COMMAND}' first, or register it for the puppet engine")
    if exists(settings, store, name):
        raise RegistrationError(409, f"avatar {name!r} exists already; DELETE /avatar/{name} first")


def exists(settings: Settings, store: Store, name: str) -> bool:
    return store.get_doc("avatar", name) is not None or avatar_dir(settings.data_dir, name).exists()


def lock(store: Store, name: str, holder: str, ttl: float = LOCK_TTL) -> None:
    """Two registrations of one name never interleave: the second is refused while the first runs."""
    if not store.claim_doc("registering", name, {"holder": holder}, ttl, time.time()):
        raise RegistrationError(409, f"a registration of {name!r} is in progress")


def unlock(store: Store, name: str, holder: str | None = None) -> None:
    """Free the name; with `holder`, only while that holder has it (a job ending late must not
    free the lock of the next registration of the same name)."""
    if holder is not None and (store.get_doc("registering", name) or {}).get("holder") != holder:
        return
    store.delete_doc("registering", name)


def prepare_argv() -> list[str]:
    """The worker's prepare command: fixed flags only, what the user wrote goes in on stdin."""
    return [sys.executable, *prepare.ARGV]


def child_env() -> dict[str, str]:
    """The prepare child's environment: it touches no store and guards no route, so it gets
    none of the manager's secrets."""
    return procs.child_env(**CHILD_ENV)


def prepare_request(settings: Settings, source: Path, name: str, meta: dict) -> prepare.Request:
    """What the prepare child is asked to make of `source`; `meta`: what the user chose
    (tts_model, timbre, asr_model, language, engine; absent or None where not)."""
    chosen = {"tts_model": meta.get("tts_model"), "timbre": meta.get("timbre"), "asr_model": meta.get("asr_model"),
              "language": meta.get("language"), "avatar_model": meta.get("engine")}
    overrides = {k: v for k, v in chosen.items() if v}
    engine = overrides.get("avatar_model", DEFAULT_CONFIG["avatar_model"])
    return prepare.Request(source=str(source.absolute()), name=name, data_dir=str(settings.data_dir),
                           overrides=overrides, bounds=bounds(settings), latents=engine == "musetalk")


def outcome(code: int | None, output: str) -> dict | None:
    """The prepare child's result (contracts.prepare.RESULT) from its exit status and stdout;
    RegistrationError for its refusal; None when it gave no answer (it failed, or was killed)."""
    try:
        body = json.loads(output)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    if code == 0 and all(k in body for k in prepare.RESULT):
        return {k: body[k] for k in prepare.RESULT}
    if code == prepare.REFUSED and isinstance(body.get("status"), int) and isinstance(body.get("message"), str):
        detail = {k: v for k, v in body.items() if k not in ("status", "message")}
        raise RegistrationError(body["status"], body["message"], **detail)
    return None


def make_record(name: str, meta: dict, result: dict, digest: str) -> dict:
    """The registry record of an avatar the prepare child made (`result`: its answer; `digest`:
    its folder's, from seal_folder)."""
    return {"name": name, "owner": meta.get("owner") or "", "description": meta.get("description") or "",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **result, "digest": digest}


def seal_folder(settings: Settings, name: str) -> str:
    """The digest of the folder the prepare child installed, also kept in it (contracts.avatars.seal):
    the record carries it, and hosts that download the avatar check what arrives against it
    (avatar_sync). RegistrationError 500 when the folder cannot be read."""
    try:
        with avatar_lock(settings.data_dir, name):  # not while a clip or MuseTalk's latents go into it
            return seal(avatar_dir(settings.data_dir, name))
    except (OSError, AvatarError) as exc:
        raise RegistrationError(500, f"registration failed: the prepared folder cannot be read: {exc}") from None


def register(settings: Settings, store: Store, source: Path, name: str, meta: dict) -> dict:
    """Prepare the avatar in the worker's prepare child, waiting for it, and record it (the
    operator's command line); RegistrationError when refused (nothing is left behind)."""
    check_request(settings, store, name, meta)
    request = prepare_request(settings, source, name, meta)
    try:
        # Its stderr is the operator's terminal: what it says while it works, and why it failed.
        done = subprocess.run(prepare_argv(), input=request.to_json(), stdout=subprocess.PIPE, text=True,
                              cwd=procs.ROOT, env=child_env(), timeout=settings.register_timeout)
    except subprocess.TimeoutExpired:
        raise RegistrationError(503, f"registration did not finish within REGISTER_TIMEOUT="
                                     f"{settings.register_timeout:g} s") from None
    except OSError as exc:  # fork or exec refused (no memory, no processes left)
        raise RegistrationError(503, f"registration could not start: {exc.strerror or exc}; try again later") from None
    result = outcome(done.returncode, done.stdout[:MAX_ANSWER_BYTES])
    if result is None:
        raise RegistrationError(500, f"registration failed: the prepare child {procs.how_it_ended(done)}")
    record = make_record(name, meta, result, seal_folder(settings, name))
    store.put_doc("avatar", name, record)
    return record


def bounds(settings: Settings) -> Bounds:
    """What preparing one upload may cost here."""
    return Bounds(max_pixels=settings.max_image_pixels, max_video_pixels=settings.max_video_pixels,
                  memory_mb=settings.register_memory_mb)


def listing(settings: Settings, store: Store) -> list[dict]:
    """The registry, plus avatar folders put in place by hand (registered: false)."""
    records = {r["name"]: {**r, "registered": True} for r in store.list_docs("avatar")}
    folder = settings.avatars_dir
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.name not in records and path.is_dir() and not path.name.startswith("."):
                try:
                    config = read_config(settings.data_dir, path.name)
                except (AvatarError, ValueError):
                    continue
                records[path.name] = {"name": path.name, "registered": False, "engine": config["avatar_model"],
                                      "tts_model": config["tts_model"], "timbre": config["timbre"],
                                      "asr_model": config["asr_model"], "language": config["language"],
                                      "source_type": config.get("kind", "livetalking" if is_livetalking(path) else "")}
    return [records[k] for k in sorted(records)]


def preview(settings: Settings, name: str) -> Path | None:
    """The avatar's first frame."""
    path = avatar_dir(settings.data_dir, name)
    for frames in (path / "frames", path / "full_imgs"):
        if frames.is_dir():
            images = sorted(p for p in frames.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
            if images:
                return images[0]
    return None


def delete(settings: Settings, store: Store, name: str) -> None:
    """Remove the folder and the record. The caller checks no instance of it runs."""
    path = avatar_dir(settings.data_dir, name)
    with avatar_lock(settings.data_dir, name):  # not while a preparation swaps the folder
        if path.exists():
            # Renamed aside first, so a start never sees half a folder.
            trash = path.with_name(f".{name}.deleted.{time.monotonic_ns()}")
            path.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
    store.delete_doc("avatar", name)


# --- jobs: a registration the API queued and the supervisor runs --------------------------------

def uploads_dir(settings: Settings) -> Path:
    return settings.data_dir / "uploads"


def claim_ttl(settings: Settings) -> float:
    """How long a job's claims (its slot, its name) last: its wait behind every other slot, its own
    run, and a minute; a crashed supervisor's claims expire after it."""
    turns = math.ceil((settings.register_workers + settings.register_queue) / settings.register_workers)
    return turns * settings.register_timeout + 60.0


def _claim_slot(settings: Settings, store: Store, job_id: str) -> int:
    for slot in range(settings.register_workers + settings.register_queue):
        if store.claim_doc("registration_slot", str(slot), {"job": job_id}, claim_ttl(settings), time.time()):
            return slot
    raise RegistrationError(429, f"{settings.register_workers + settings.register_queue} registrations are "
                                 f"running or waiting (REGISTER_WORKERS={settings.register_workers}, "
                                 f"REGISTER_QUEUE={settings.register_queue}); try again in a minute")


def release(store: Store, job: dict) -> None:
    """For a job that ends: delete its upload folder (with the child's request and answer),
    unlock its name."""
    shutil.rmtree(Path(job["upload"]).parent, ignore_errors=True)
    unlock(store, job["avatar"], holder=f"job:{job['id']}")


def free_slot(store: Store, job: dict) -> None:
    """The job no longer runs nor waits: its place in the queue is free."""
    if job.get("slot") is not None:  # a job queued before slots existed has none
        store.delete_doc("registration_slot", str(job["slot"]))


def submit(settings: Settings, store: Store, name: str, meta: dict, save: Callable[[Path], None]) -> dict:
    """Lock the name, take a slot in the queue (RegistrationError 429 when none is free), store the
    upload (`save` writes it to the path given) and queue a job for the supervisor; on any failure
    nothing stays behind."""
    job_id = secrets.token_hex(8)
    lock(store, name, f"job:{job_id}", claim_ttl(settings))
    folder = uploads_dir(settings) / job_id
    slot = None
    try:
        slot = _claim_slot(settings, store, job_id)
        folder.mkdir(parents=True)
        save(folder / "upload")
        if (folder / "upload").stat().st_size > settings.max_avatar_file_bytes:
            raise RegistrationError(413, f"the file is larger than MAX_AVATAR_FILE_SIZE="
                                         f"{settings.max_avatar_file_bytes / 2**20:g} MB")
        now = time.time()
        job = {"id": job_id, "avatar": name, "state": JobState.QUEUED, "created": now, "updated": now, "slot": slot,
               "upload": str(folder / "upload"), "meta": meta, "record": None, "error": None}
        store.put_doc("job", job_id, job)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        unlock(store, name)
        if slot is not None:
            store.delete_doc("registration_slot", str(slot))
        raise
    return job


def wait(store: Store, job: dict, timeout: float) -> dict:
    """The job once finished, or as it stands after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while job["state"] not in ENDED and time.monotonic() < deadline:
        time.sleep(0.05)
        job = store.get_doc("job", job["id"]) or job
    return job


def finish_job(store: Store, job: dict, record: dict | None = None, error: dict | None = None) -> dict:
    job = {**job, "state": JobState.DONE if record is not None else JobState.FAILED, "updated": time.time(),
           "record": record, "error": error}
    store.put_doc("job", job["id"], job)
    return job


def prune_jobs(store: Store, now: float, jobs: list[dict]) -> None:
    """Forget finished jobs after JOB_KEEP; `jobs`: the job documents as just read."""
    for job in jobs:
        if job["state"] in ENDED and now - job["updated"] > JOB_KEEP:
            store.delete_doc("job", job["id"])
