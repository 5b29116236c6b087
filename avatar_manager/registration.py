"""Avatar registration: from a photo or a video to a ready avatar and its record in the registry.

One path for everyone: `python -m avatar_manager register PATH --name NAME` prepares the avatar
(lipsync_worker.avatars.prepare: content sniffing, face detection, quality checks, an atomic
rename into place) and writes the registry record. The API saves an upload and queues a job (one
of REGISTER_WORKERS + REGISTER_QUEUE slots, else a 429); the supervisor runs the same command for
it as a child of its own (registration_jobs), which finds all it needs in the job document, and
the job records the outcome.
"""
from __future__ import annotations

import math
import secrets
import shutil
import sys
import time
from dataclasses import asdict, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Callable

from lipsync_worker.avatar_config import ENGINES, AvatarError, avatar_dir, check_name, is_livetalking, read_config
from lipsync_worker.bounds import Bounds
from lipsync_worker.musetalk_model import weights

from .settings import Settings
from .store.base import Store
from .tts import model_for, table
from .workers import GPU_ENGINES

LOCK_TTL = 900.0          # a registration lock outlives any real registration; a crashed one frees it
JOB_KEEP = 3600.0         # finished jobs stay visible this long



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


def check_request(settings: Settings, store: Store, name: str, tts_model: str | None,
                  engine: str | None = None) -> None:
    """What can be refused before any byte of the file is stored."""
    try:
        check_name(name)
        if tts_model:
            model_for(table(settings.tts_ports), tts_model)
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


def _plain(value):
    return asdict(value) if is_dataclass(value) else value


def register(settings: Settings, store: Store, source: Path, name: str, *, owner: str = "", description: str = "",
             tts_model: str | None = None, timbre: str | None = None, engine: str | None = None) -> dict:
    """Prepare the avatar and record it; RegistrationError when refused (nothing is left behind)."""
    from lipsync_worker import avatars  # OpenCV: only where preparation happens
    from lipsync_worker.bounds import TooCostly
    from lipsync_worker.intake import UnsupportedMedia
    from lipsync_worker.quality import QualityError

    check_request(settings, store, name, tts_model, engine)
    overrides = {k: v for k, v in (("tts_model", tts_model), ("timbre", timbre), ("avatar_model", engine)) if v}
    started = time.monotonic()
    try:
        prepared = avatars.prepare(source, name, settings.data_dir, overrides=overrides, bounds=bounds(settings))
    except TooCostly as exc:
        raise RegistrationError(413, str(exc)) from None
    except UnsupportedMedia as exc:
        raise RegistrationError(415, str(exc), detected=exc.detected) from None
    except QualityError as exc:
        measured = {k: v for k, v in exc.metrics.items() if k != "faces_per_frame"}
        raise RegistrationError(422, str(exc), reasons=list(exc.reasons), metrics=measured) from None
    except AvatarError as exc:
        raise RegistrationError(422, str(exc)) from None
    config = read_config(settings.data_dir, name)
    ready = [engine for engine in ENGINES if engine not in GPU_ENGINES]  # nothing to prepare for these
    if config["avatar_model"] == "musetalk":
        from lipsync_worker.musetalk_model.material import prepare_with_vae
        prepare_with_vae(avatars.load(settings.data_dir, name), weights.models_dir())
        ready.append("musetalk")
    record = {
        "name": name, "owner": owner, "description": description,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_type": prepared.kind, "source_format": prepared.format,
        "frame_count": prepared.frame_count, "size": list(prepared.size),
        "faces": _plain(prepared.faces), "quality": _plain(prepared.quality),
        "tts_model": config["tts_model"], "timbre": config["timbre"], "engine": config["avatar_model"],
        "engines_ready": ready,
        "processing_seconds": round(time.monotonic() - started, 3),
    }
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
    from lipsync_worker.avatars import avatar_lock
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
    """For a job that ends without its child's word: delete its upload, unlock its name."""
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


def job_argv(job: dict) -> list[str]:
    """The command that carries the job out: only the job's id (ours, hex) is on the command line;
    the child reads the name, the upload and what the user wrote from the job document (argv is
    public to every local user, and bounded in size)."""
    return [sys.executable, "-m", "avatar_manager", "register", f"--job={job['id']}"]


def run_job(settings: Settings, store: Store, job_id: str) -> int:
    """The child's side of a job: prepare, release the name and the upload, then record the outcome
    (in that order: whoever hears it may register the name again at once). The exit status."""
    job = store.get_doc("job", job_id)
    if job is None or job["state"] in ENDED:
        print(f"register: no job {job_id!r} to run", file=sys.stderr)
        return 2
    meta = job["meta"]
    try:
        try:
            record = register(settings, store, Path(job["upload"]), job["avatar"], owner=meta.get("owner") or "",
                              description=meta.get("description") or "", tts_model=meta.get("tts_model"),
                              timbre=meta.get("timbre"), engine=meta.get("engine"))
        finally:
            unlock(store, job["avatar"], holder=f"job:{job_id}")
            shutil.rmtree(Path(job["upload"]).parent, ignore_errors=True)
    except RegistrationError as exc:
        finish_job(store, job, error=exc.to_json())
        print(f"register: {exc}", file=sys.stderr)
        return 2
    finish_job(store, job, record=record)
    return 0


def prune_jobs(store: Store, now: float, jobs: list[dict]) -> None:
    """Forget finished jobs after JOB_KEEP; `jobs`: the job documents as just read."""
    for job in jobs:
        if job["state"] in ENDED and now - job["updated"] > JOB_KEEP:
            store.delete_doc("job", job["id"])
