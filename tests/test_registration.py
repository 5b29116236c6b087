"""Avatar registration over the API and from the command line, with real files and a real manager."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pillow_heif
import psutil
import pytest
import requests
from PIL import Image

from avatar_manager import registration
from avatar_manager.registration_jobs import RegistrationJobs
from avatar_manager.settings import Settings
from avatar_manager.store.sqlite import SqliteStore
from conftest import ROOT
from harness.processes import wait_for

PORTRAIT = ROOT / "assets" / "astronaut.png"


def portrait() -> np.ndarray:
    return cv2.imread(str(PORTRAIT))


def encoded(image: np.ndarray, ext: str = ".jpg") -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def video_bytes(tmp_path, seconds: float = 2.0) -> bytes:
    path = tmp_path / "clip.mp4"
    face = portrait()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (face.shape[1], face.shape[0]))
    for i in range(int(seconds * 25)):
        writer.write(np.roll(face, i % 5, axis=1))
    writer.release()
    return path.read_bytes()


def heic_bytes() -> bytes:
    pillow_heif.register_heif_opener()
    out = io.BytesIO()
    Image.open(PORTRAIT).convert("RGB").save(out, format="HEIF")
    return out.getvalue()


def register(m, name: str, data: bytes, filename: str = "photo.jpg", **fields) -> requests.Response:
    return requests.post(m.url + "/avatar/register", headers=m.headers, timeout=120,
                         data={"avatar_name": name, **fields}, files={"file": (filename, data)})


def nothing_written(m, name: str) -> None:
    assert not (m.data_dir / "avatars" / name).exists()
    # Only the name's lock file may stay (contracts.avatars.avatar_lock says why).
    debris = [p for p in (m.data_dir / "avatars").glob(f".{name}*") if p.suffix != ".lock"]
    assert not debris
    uploads = m.data_dir / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())
    assert name not in [a["name"] for a in m.get("/avatar/avatars").json()["data"]]


@pytest.fixture
def real(manager):
    """A manager with the real lip-sync worker."""
    return manager()


def test_a_photo_registers_previews_starts_and_is_deleted_once_stopped(real):
    m = real
    answer = register(m, "astro", encoded(portrait()), user_id="u1", description="the astronaut")
    assert answer.status_code == 200, answer.text
    record = answer.json()["data"]
    assert record["name"] == "astro" and record["owner"] == "u1" and record["source_type"] == "image"
    assert record["quality"]["verdict"] in ("good", "fair") and record["processing_seconds"] > 0
    assert record["faces"]
    listed = m.get("/avatar/avatars").json()["data"]
    assert [a["name"] for a in listed] == ["astro"] and listed[0]["registered"]
    preview = m.get(listed[0]["preview_url"])
    assert preview.status_code == 200 and preview.headers["Content-Type"].startswith("image/")
    assert cv2.imdecode(np.frombuffer(preview.content, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (512, 512)

    started = m.start_avatar("astro_user_1")
    assert started.status_code == 200, started.text
    health = requests.get(f"http://127.0.0.1:{started.json()['data']['port']}/health", timeout=5).json()
    assert health["avatar"] == "astro"
    refused = requests.delete(m.url + "/avatar/astro", timeout=10)
    assert refused.status_code == 409 and "stop it first" in refused.json()["message"]
    assert m.post("/avatar/stop", {"avatar_id": "astro"}).status_code == 200
    deleted = requests.delete(m.url + "/avatar/astro", timeout=10)
    assert deleted.status_code == 200, deleted.text
    nothing_written(m, "astro")
    assert requests.delete(m.url + "/avatar/astro", timeout=10).status_code == 404


def test_a_video_registers_and_starts(real, tmp_path):
    m = real
    answer = register(m, "clip", video_bytes(tmp_path), filename="clip.mp4")
    assert answer.status_code == 200, answer.text
    record = answer.json()["data"]
    assert record["source_type"] == "video" and record["frame_count"] > 1
    started = m.start_avatar("clip")
    assert started.status_code == 200, started.text


def test_heic_is_converted_even_under_a_jpg_name(manager):
    m = manager(WORKER_MODULE="tests.fake_worker")
    answer = register(m, "phone", heic_bytes(), filename="IMG_0001.jpg")
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["source_format"] == "heic"


@pytest.mark.parametrize("case, status, words", [
    ("text", 415, "text/plain"),
    ("truncated", 422, "truncated"),
    ("no_face", 422, "no face"),
    ("two_faces", 422, "2 faces"),
])
def test_bad_files_are_refused_with_a_reason_and_nothing_is_written(manager, case, status, words):
    m = manager(WORKER_MODULE="tests.fake_worker")
    face = portrait()
    data = {
        "text": b"this is not a picture at all, only text\n" * 20,
        "truncated": encoded(face)[:6000],
        "no_face": encoded(np.full_like(face, 128)),
        "two_faces": encoded(np.hstack([face, face])),
    }[case]
    answer = register(m, "bad", data)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["message"]
    nothing_written(m, "bad")


@pytest.mark.parametrize("name", ["../x", "a/b", "a b", "$(id)", "x" * 65, ""])
def test_bad_names_are_refused_before_the_upload_is_stored(manager, name):
    m = manager(WORKER_MODULE="tests.fake_worker")
    answer = register(m, name, encoded(portrait()))
    assert answer.status_code == 400, answer.text
    uploads = m.data_dir / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())
    assert not (m.data_dir / "avatars").exists() or not [p for p in (m.data_dir / "avatars").iterdir()
                                                         if p.suffix != ".lock"]


def test_an_oversized_upload_is_refused_with_413(manager):
    m = manager(WORKER_MODULE="tests.fake_worker", MAX_AVATAR_FILE_SIZE="0.05")  # 50 KB
    answer = register(m, "big", os.urandom(200_000))
    assert answer.status_code == 413, answer.text
    assert answer.json()["status"] == "error"
    nothing_written(m, "big")


def test_missing_file_unknown_models_and_a_bad_language_are_bad_requests(manager):
    m = manager(WORKER_MODULE="tests.fake_worker")
    no_file = requests.post(m.url + "/avatar/register", data={"avatar_name": "x"}, timeout=10)
    assert no_file.status_code == 400 and "file" in no_file.json()["message"]
    voice = register(m, "x", encoded(portrait()), tts_model="festival")
    assert voice.status_code == 400 and "festival" in voice.json()["message"]
    ears = register(m, "x", encoded(portrait()), asr_model="kaldi")
    assert ears.status_code == 400 and "unknown ASR model 'kaldi'" in ears.json()["message"]
    language = register(m, "x", encoded(portrait()), language="English")
    assert language.status_code == 400 and "language 'English'" in language.json()["message"]
    engine = register(m, "x", encoded(portrait()), engine="wav2lip")
    assert engine.status_code == 400 and "wav2lip" in engine.json()["message"]
    nothing_written(m, "x")


def test_a_slow_registration_is_a_job_to_poll_and_blocks_a_second_of_the_same_name(manager, tmp_path):
    m = manager(WORKER_MODULE="tests.fake_worker", REGISTER_WAIT="0")
    first = register(m, "vid", video_bytes(tmp_path, seconds=4), filename="v.mp4")
    assert first.status_code == 202, first.text
    job = first.json()["data"]
    second = register(m, "vid", encoded(portrait()))
    assert second.status_code == 409
    done = wait_for(lambda: (r := m.get(job["status_url"])).status_code != 202 and r, timeout=120,
                    what="the registration job")
    assert done.status_code == 200, done.text
    assert done.json()["data"]["source_type"] == "video"
    again = register(m, "vid", encoded(portrait()))
    assert again.status_code == 409 and "exists" in again.json()["message"]


def test_concurrent_registrations_of_one_name_never_interleave(manager):
    m = manager(WORKER_MODULE="tests.fake_worker")
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(register(m, "twin", encoded(portrait()))))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [200, 409, 409, 409]
    assert (m.data_dir / "avatars" / "twin" / "config.json").is_file()


def test_operators_register_from_the_command_line(tmp_path):
    env = {**os.environ, "AVATAR_DATA_DIR": str(tmp_path / "data"), "LOG_DIR": str(tmp_path / "logs")}
    command = [sys.executable, "-m", "avatar_manager", "register", str(PORTRAIT), "--name", "cli"]
    refused = subprocess.run([*command, "--language", "Klingon"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "language 'Klingon'" in refused.stderr
    assert not (tmp_path / "data" / "avatars" / "cli").exists()
    done = subprocess.run([*command, "--tts-model", "espeak", "--asr-model", "whisper", "--language", "fa"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert (record["name"], record["asr_model"], record["language"]) == ("cli", "whisper", "fa")
    config = json.loads((tmp_path / "data" / "avatars" / "cli" / "config.json").read_text())
    assert (config["asr_model"], config["language"]) == ("whisper", "fa")
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "exists" in again.stderr


# --- the supervisor's side of a job, in this process: its child watched from the loop ---------------

# A child that takes its time and ignores SIGTERM: killing it must not wait for it.
STUBBORN = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"]


@pytest.fixture
def jobs_here(tmp_path, monkeypatch):
    """(settings, store, jobs): RegistrationJobs on a SQLite store, its prepare child STUBBORN."""
    settings = Settings.from_env({"AVATAR_DATA_DIR": str(tmp_path / "data"), "LOG_DIR": str(tmp_path / "logs"),
                                  "REGISTER_TIMEOUT": "1", "REGISTER_WORKERS": "1", "STOP_TIMEOUT": "10"})
    store = SqliteStore(settings.data_dir / "manager.sqlite3")
    monkeypatch.setattr(registration, "prepare_argv", lambda: STUBBORN)
    jobs = RegistrationJobs(settings, store, lambda: False, lambda: None)
    yield settings, store, jobs
    jobs.shutdown()
    store.close()


def queue(settings, store, name: str) -> dict:
    return registration.submit(settings, store, name, {}, lambda path: path.write_bytes(PORTRAIT.read_bytes()))


def released(settings, store, job: dict) -> bool:
    """The job's upload is gone and its name unlocked."""
    return not Path(job["upload"]).parent.exists() and store.get_doc("registering", job["avatar"]) is None


def test_a_registration_past_its_time_is_killed_and_never_holds_the_loop(jobs_here):
    settings, store, jobs = jobs_here
    job = queue(settings, store, "slow")
    jobs.tick(time.time())
    (pid,) = jobs.pids()
    slowest, deadline = 0.0, time.monotonic() + 30
    while (current := store.get_doc("job", job["id"]))["state"] not in registration.ENDED:
        assert time.monotonic() < deadline, current
        began = time.monotonic()
        jobs.tick(time.time())
        slowest = max(slowest, time.monotonic() - began)
        time.sleep(0.05)
    assert current["error"] == {"status": 503, "message": "registration did not finish within REGISTER_TIMEOUT=1 s"}
    assert slowest < 1.0  # never STOP_TIMEOUT (10 s) for a child that ignores SIGTERM
    assert jobs.pids() == set() and not psutil.pid_exists(pid)  # killed and reaped
    assert released(settings, store, job)
    assert store.get_doc("registration_slot", str(job["slot"])) is None


def test_a_shutdown_stops_the_running_job_and_leaves_the_queued_one(jobs_here):
    settings, store, jobs = jobs_here
    running, waiting = queue(settings, store, "first"), queue(settings, store, "second")
    jobs.tick(time.time())
    (pid,) = jobs.pids()
    began = time.monotonic()
    jobs.shutdown()
    assert time.monotonic() - began < 5
    assert not psutil.pid_exists(pid) and jobs.pids() == set()
    stopped = store.get_doc("job", running["id"])
    assert stopped["state"] == registration.JobState.FAILED and "shutting down" in stopped["error"]["message"]
    assert released(settings, store, running)
    assert store.get_doc("job", waiting["id"])["state"] == registration.JobState.QUEUED  # for the next leader
