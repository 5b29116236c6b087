"""Uploads that cost more than they weigh: each is refused quickly, with its reason, and leaves
nothing behind; registrations never hold up a start; what a user writes never reaches argv."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import psutil
import pytest
import requests

from conftest import ROOT
from contracts.bounds import Bounds
from harness import bombs
from harness.processes import wait_for
from lipsync_worker.avatars import read_frames
from lipsync_worker.bounds import TooCostly

PORTRAIT = ROOT / "assets" / "astronaut.png"
FAKE = {"WORKER_MODULE": "tests.fake_worker"}


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bombs")
    return {
        "slow": bombs.slow_video(folder / "slow.mp4"),
        "slow_odd": bombs.slow_video(folder / "slow_odd.mov", width=513),
        "png": bombs.png_bomb(folder / "big.png"),
        "mov": bombs.mov_bomb(folder / "big.mov"),
    }


def register(m, name: str, path, **fields) -> requests.Response:
    with open(path, "rb") as f:
        return requests.post(m.url + "/avatar/register", headers=m.headers, timeout=120,
                             data={"avatar_name": name, **fields}, files={"file": (path.name, f)})


def registering(m) -> list[psutil.Process]:
    """Registration children in the manager's tree."""
    found = []
    for p in m.tree():
        try:
            if "prepare" in p.cmdline():
                found.append(p)
        except psutil.Error:
            pass
    return found


def nothing_left(m, name: str) -> None:
    """No avatar folder, no upload, no process; and the name is free again (no lock)."""
    assert not (m.data_dir / "avatars" / name).exists()
    uploads = m.data_dir / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())
    wait_for(lambda: not registering(m), timeout=10, what="the registration process to exit")
    again = register(m, name, PORTRAIT)
    assert again.status_code == 200, again.text  # not 409: the name's lock went with the refusal


@pytest.mark.parametrize("case, status, words", [
    ("slow", 422, "frames a second"),
    ("slow_odd", 422, "frames a second"),
    ("png", 413, "MAX_IMAGE_PIXELS"),
    ("mov", 413, "16000x16000"),
])
def test_each_bomb_is_refused_with_its_reason_and_leaves_nothing(manager, bomb, case, status, words):
    m = manager(**FAKE)
    answer = register(m, "bomb", bomb[case])
    assert answer.status_code == status, answer.text
    assert words in answer.json()["message"]
    nothing_left(m, "bomb")


def test_a_picture_that_needs_more_memory_than_allowed_fails_alone_with_the_reason(manager, bomb):
    # The pixel bound raised out of the way: the address-space limit is what stops it.
    m = manager(**FAKE, MAX_IMAGE_PIXELS="400000000", REGISTER_MEMORY_MB="256")
    answer = register(m, "bomb", bomb["png"])
    assert answer.status_code == 413, answer.text
    assert "needs more than 256 MB to decode" in answer.json()["message"]
    assert m.proc.poll() is None and m.get("/health").status_code == 200
    nothing_left(m, "bomb")


def test_four_bombs_at_once_never_delay_a_start(manager, bomb):
    m = manager(**FAKE)
    m.avatar("ready")
    answers: dict[str, requests.Response] = {}
    threads = [threading.Thread(target=lambda c=case: answers.__setitem__(c, register(m, f"b_{c}", bomb[c])))
               for case in ("slow", "slow_odd", "png", "mov")]
    for t in threads:
        t.start()
    started_at = time.monotonic()
    started = m.start_avatar("ready")
    assert started.status_code == 200, started.text
    assert time.monotonic() - started_at < 15  # generous: a start of the fake worker, never minutes
    for t in threads:
        t.join(timeout=120)
    assert sorted(a.status_code for a in answers.values()) == [413, 413, 422, 422], \
        {c: a.text for c, a in answers.items()}
    assert not any((m.data_dir / "avatars" / f"b_{c}").exists() for c in answers)


def test_a_full_queue_is_a_429_and_frees_up(manager, tmp_path):
    m = manager(**FAKE, REGISTER_WORKERS="1", REGISTER_QUEUE="1", REGISTER_WAIT="0")
    clip = tmp_path / "clip.mp4"
    face = cv2.imread(str(PORTRAIT))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 25, face.shape[1::-1])
    for i in range(25):  # 1 s: seconds of work (a process, face detection), long enough to hold both slots
        writer.write(np.roll(face, i % 5, axis=1))
    writer.release()
    first, second = register(m, "one", clip), register(m, "two", clip)
    assert (first.status_code, second.status_code) == (202, 202), (first.text, second.text)
    third = register(m, "three", clip)
    assert third.status_code == 429, third.text
    assert "REGISTER_QUEUE=1" in third.json()["message"]
    uploads = m.data_dir / "uploads"
    assert len(list(uploads.iterdir())) == 2  # the refused one stored nothing
    for job in (first, second):
        done = wait_for(lambda j=job: (r := m.get(j.json()["data"]["status_url"])).status_code != 202 and r,
                        timeout=120, what="a registration job")
        assert done.status_code == 200, done.text
    again = register(m, "three", clip)
    assert again.status_code == 202, again.text


def test_a_long_field_is_a_400_and_what_users_write_never_reaches_argv(manager):
    m = manager(**FAKE)
    long = register(m, "x", PORTRAIT, user_id="u" * 200_000)
    assert long.status_code == 400, long.text
    assert "user_id" in long.text
    assert not (m.data_dir / "uploads").exists() or not any((m.data_dir / "uploads").iterdir())
    sneaky = "--name=evil --job=0 " + "a" * 1900
    answer = register(m, "x", PORTRAIT, description=sneaky, user_id="--owner=evil")
    assert answer.status_code == 200, answer.text
    record = answer.json()["data"]
    assert (record["description"], record["owner"], record["name"]) == (sneaky, "--owner=evil", "x")
    started = [line for line in (m.log_dir / "register_x.log").read_text().splitlines() if "starting:" in line]
    assert started and not any("evil" in line for line in started), started


def test_a_registration_that_cannot_be_spawned_fails_and_releases_everything(manager):
    m = manager(**FAKE)
    blocker = m.log_dir / "register_x.log"
    blocker.mkdir(parents=True)  # its log cannot be opened: the spawn fails
    answer = register(m, "x", PORTRAIT)
    assert answer.status_code == 503, answer.text
    assert "could not start" in answer.json()["message"]
    blocker.rmdir()
    nothing_left(m, "x")


# --- the frames read from a video: the ones that exist, whatever their timing --------------------

def test_a_slow_source_is_read_as_the_frames_it_has(bomb):
    frames, kind = read_frames(bomb["slow_odd"], 10.0, 720)
    # Was 45,000 frames, each a copy: now the one frame of the first 10 s, held for 250 slots as one array.
    assert kind == "video" and len(frames) == 250
    assert len({id(f) for f in frames}) == 1
    assert frames[0].shape == (512, 512, 3)  # cut to even: 513 -> 512


def test_a_normal_video_is_resampled_to_25_fps(tmp_path):
    path = tmp_path / "v.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 50, (128, 96))
    for i in range(100):  # 2 s at 50 fps, each frame numbered by its grey level
        writer.write(np.full((96, 128, 3), i * 2, np.uint8))
    writer.release()
    frames, kind = read_frames(path, 10.0, 720)
    assert kind == "video" and len(frames) == 50
    levels = [int(f.mean()) for f in frames]
    assert levels == sorted(levels) and levels[-1] - levels[0] > 150  # in order, the whole span


def test_a_video_decoding_to_too_many_pixels_is_refused_while_reading(tmp_path):
    path = tmp_path / "v.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (128, 96))
    for _ in range(50):
        writer.write(np.zeros((96, 128, 3), np.uint8))
    writer.release()
    with pytest.raises(TooCostly, match="gigapixels"):
        read_frames(path, 10.0, 720, Bounds(max_video_pixels=128 * 96 * 10))


def test_threads_decoding_at_once_leave_no_memory_limit_behind():
    """The address-space limit is per process: threads that set and restore it each on their own
    left it on for good (then every child started later, a browser among them, inherited it)."""
    import resource

    from lipsync_worker.bounds import memory_limit

    before = resource.getrlimit(resource.RLIMIT_AS)

    def decode() -> None:
        for _ in range(50):
            with memory_limit(512):
                assert resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY
                time.sleep(0.001)

    threads = [threading.Thread(target=decode) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert resource.getrlimit(resource.RLIMIT_AS) == before
