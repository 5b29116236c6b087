"""Avatar folders: preparation from real images and videos, quality checks, validation,
LiveTalking folders."""
import json
import math
import pickle
import subprocess
import sys
import tempfile
import threading
import time

import cv2
import numpy as np
import pillow_heif
import pytest
from PIL import Image

from conftest import ROOT
from contracts import prepare
from contracts.avatars import avatar_lock
from harness.processes import wait_for
from lipsync_worker import avatars, faces, quality

PORTRAIT = ROOT / "assets" / "astronaut.png"


def write_video(path, seconds=2.0, fps=30, shift_per_frame=1):
    image = cv2.imread(str(PORTRAIT))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (image.shape[1], image.shape[0]))
    for i in range(int(seconds * fps)):
        writer.write(np.roll(image, i * shift_per_frame % 8, axis=1))
    writer.release()
    return path


def entries(data_dir) -> list[str]:
    """What avatars/ holds, less the lock files (they stay, empty, by design)."""
    return sorted(p.name for p in (data_dir / "avatars").iterdir() if not p.name.endswith(".lock"))


def test_an_image_becomes_a_one_frame_avatar_with_face_mouth_and_eyes(tmp_path):
    prepared = avatars.prepare(PORTRAIT, "astro", tmp_path)
    avatar = avatars.load(tmp_path, "astro")
    assert prepared.path == tmp_path / "avatars" / "astro" and not avatar.is_video
    assert avatar.size == (512, 512)
    (fx1, fy1, fx2, fy2), (mx1, my1, mx2, my2) = avatar.regions[0].face, avatar.regions[0].mouth
    assert 170 < fx1 < 190 and 60 < fy1 < 80 and 85 < fx2 - fx1 < 110    # the astronaut's face
    assert fx1 < mx1 < mx2 < fx2 and fy1 + (fy2 - fy1) // 2 < my1 < my2      # mouth in its lower half
    assert len(avatar.regions[0].eyes) == 2
    assert avatar.config["avatar_model"] == "puppet" and avatar.config["kind"] == "image"


def test_preparing_again_replaces_the_avatar_and_leaves_no_debris(tmp_path):
    video = write_video(tmp_path / "clip.mp4", seconds=1.0)
    avatars.prepare(PORTRAIT, "astro", tmp_path)
    avatars.prepare(video, "astro", tmp_path)
    assert len(avatars.load(tmp_path, "astro").frames) == 25
    assert entries(tmp_path) == ["astro"]


def test_a_video_is_sampled_at_25_fps_and_cut(tmp_path):
    video = write_video(tmp_path / "clip.mp4", seconds=2.0, fps=30)
    avatars.prepare(video, "clip", tmp_path)
    avatar = avatars.load(tmp_path, "clip")
    assert avatar.is_video and len(avatar.frames) == 50
    avatars.prepare(video, "short", tmp_path, max_seconds=1.0)
    assert len(avatars.load(tmp_path, "short").frames) == 25


def test_the_cli_prepares_into_avatar_data_dir(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lipsync_worker", "prepare", str(PORTRAIT), "--avatar_id", "cli",
                             "--timbre", "FemaleA"], cwd=ROOT, env={"AVATAR_DATA_DIR": str(tmp_path), "PATH": ""},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "avatars" / "cli" / "config.json").read_text())["timbre"] == "FemaleA"


def test_unusable_sources_are_refused_and_leave_nothing(tmp_path):
    blank, text = tmp_path / "blank.png", tmp_path / "text.png"
    cv2.imwrite(str(blank), np.full((300, 300, 3), 128, np.uint8))
    text.write_text("not an image")
    for source, reason in ((blank, "no face found"), (text, "text/plain, not a photo or a video")):
        with pytest.raises(avatars.AvatarError, match=reason):
            avatars.prepare(source, "bad", tmp_path / "data")
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data" / "avatars").iterdir())


# --- registration: what is recorded, what is refused, and concurrent preparations ------------------

def portrait() -> np.ndarray:
    return cv2.imread(str(PORTRAIT))


def on_canvas(scale: float, side: int = 720) -> np.ndarray:
    """The portrait shrunk by `scale` on a grey canvas: its face is ~93 * scale px wide."""
    canvas = np.full((side, side, 3), 200, np.uint8)
    small = cv2.resize(portrait(), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas[100:100 + small.shape[0], 100:100 + small.shape[1]] = small
    return canvas


def turned(image: np.ndarray, degrees: float) -> np.ndarray:
    """The face turned sideways, roughly: the picture wrapped on a vertical cylinder about the
    face and the cylinder rotated (there is no photo of the astronaut in profile)."""
    x1, _, x2, _ = faces.detect_faces(image)[0]
    centre, radius = (x1 + x2) / 2, 0.75 * (x2 - x1)
    xs = np.arange(image.shape[1], dtype=np.float32)
    u = (xs - centre) / radius
    source = np.where(np.abs(u) < 1, centre + radius * np.sin(np.arcsin(np.clip(u, -1, 1)) - math.radians(degrees)), xs)
    map_x = np.tile(source.astype(np.float32), (image.shape[0], 1))
    map_y = np.tile(np.arange(image.shape[0], dtype=np.float32)[:, None], (1, image.shape[1]))
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR)


def write_frames(path, frames, fps=25):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames[0].shape[1], frames[0].shape[0]))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def test_config_records_the_source_the_faces_and_the_quality(tmp_path):
    prepared = avatars.prepare(PORTRAIT, "astro", tmp_path)
    config = json.loads((prepared.path / "config.json").read_text())
    assert (config["source_format"], config["kind"], prepared.size) == ("png", "image", (512, 512))
    face = list(avatars.load(tmp_path, "astro").regions[0].face)
    assert config["faces"] == prepared.faces == {"frames": 1, "with_face": 1, "without_face": 0, "with_several": 0,
                                                 "box": face}
    assert config["quality"] == prepared.quality.to_json() and prepared.quality.verdict == "good"
    metrics = prepared.quality.metrics
    assert metrics["faces_per_frame"] == [1] and metrics["frames_with_face"] == 1
    assert 0.15 < metrics["face_fraction"] < 0.25 and metrics["brightness"] > quality.DARK_FAIR
    assert metrics["sharpness"] > quality.SHARP_FAIR and abs(metrics["yaw_degrees"]) < quality.YAW_FAIR


REFUSED = {
    "noise": (lambda: np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8), "no face found"),
    "flat": (lambda: np.full((512, 512, 3), 90, np.uint8), "no face found"),
    "two faces": (lambda: np.hstack([portrait(), portrait()]), "2 faces found; an avatar needs exactly one"),
    "small": (lambda: on_canvas(0.55), "the face is too small"),        # ~51 px
    "far": (lambda: on_canvas(0.5), "the face is too small"),          # ~55 px: below what detect_faces seeks
    "dark": (lambda: (portrait() * 0.08).astype(np.uint8), "the face is too dark"),
    "blurred": (lambda: cv2.GaussianBlur(portrait(), (0, 0), 5), "the face is too blurred"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_unfit_pictures_are_refused_with_a_reason_and_leave_nothing(tmp_path, case):
    make, reason = REFUSED[case]
    cv2.imwrite(str(tmp_path / "upload.png"), make())
    with pytest.raises(quality.QualityError, match=reason) as refused:
        avatars.prepare(tmp_path / "upload.png", "bad", tmp_path / "data")
    assert len(refused.value.reasons) == 1 and str(refused.value) == refused.value.reasons[0]
    assert not (tmp_path / "data").exists()


def test_a_refused_heic_leaves_no_scratch_copy_behind(tmp_path, monkeypatch):
    two = Image.fromarray(cv2.cvtColor(np.hstack([portrait(), portrait()]), cv2.COLOR_BGR2RGB))
    pillow_heif.from_pillow(two).save(tmp_path / "two.heic")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where prepare converts it
    with pytest.raises(quality.QualityError, match="2 faces"):
        avatars.prepare(tmp_path / "two.heic", "two", tmp_path / "data")
    assert not any((tmp_path / "tmp").iterdir()) and not (tmp_path / "data").exists()


@pytest.mark.parametrize("picture, reason", [
    (lambda: (portrait() * 0.3).astype(np.uint8), "the face is dark"),
    (lambda: cv2.GaussianBlur(portrait(), (0, 0), 1.5), "the face is a little blurred"),
    (lambda: np.clip(portrait() * 2.0, 0, 255).astype(np.uint8), "the face is overexposed"),
    (lambda: on_canvas(1.15, side=900), "the face fills only 14% of the frame width"),  # ~99 px
    (lambda: turned(portrait(), 50), "the face is turned to the side"),
], ids=["dark", "soft", "overexposed", "distant", "turned"])
def test_marginal_pictures_make_a_fair_avatar_that_says_why(tmp_path, picture, reason):
    cv2.imwrite(str(tmp_path / "upload.png"), picture())
    prepared = avatars.prepare(tmp_path / "upload.png", "fair", tmp_path)
    assert prepared.quality.verdict == "fair" and len(prepared.quality.reasons) == 1
    assert prepared.quality.reasons[0].startswith(reason)
    assert avatars.load(tmp_path, "fair").config["quality"]["reasons"] == prepared.quality.reasons


def test_a_video_whose_face_is_mostly_missing_is_refused(tmp_path):
    frames = [portrait()] * 15 + [np.full_like(portrait(), 128)] * 35
    with pytest.raises(quality.QualityError, match="no face in 70% of the frames"):
        avatars.prepare(write_frames(tmp_path / "away.mp4", frames), "away", tmp_path)
    assert not (tmp_path / "avatars").exists()


def test_a_video_where_a_second_face_comes_in_is_refused(tmp_path):
    alone, together = np.hstack([portrait(), np.full_like(portrait(), 128)]), np.hstack([portrait(), portrait()])
    frames = [alone] * 30 + [together] * 20
    with pytest.raises(quality.QualityError, match="a second face appears in 40% of the frames"):
        avatars.prepare(write_frames(tmp_path / "guest.mp4", frames), "guest", tmp_path)


def test_a_video_with_a_few_faceless_frames_is_fair(tmp_path):
    frames = [portrait()] * 40 + [np.full_like(portrait(), 128)] * 10
    prepared = avatars.prepare(write_frames(tmp_path / "blink.mp4", frames), "blink", tmp_path)
    assert prepared.quality.reasons == ["the face is lost in 20% of the frames"]
    assert prepared.faces["without_face"] == 10 and prepared.quality.metrics["faces_per_frame"][-10:] == [0] * 10


def test_a_preparation_waits_for_the_lock_before_swapping_in(tmp_path):
    avatars.prepare(PORTRAIT, "astro", tmp_path)
    video = write_video(tmp_path / "clip.mp4", seconds=1.0)
    done = []
    with avatar_lock(tmp_path, "astro"):
        worker = threading.Thread(target=lambda: done.append(avatars.prepare(video, "astro", tmp_path)))
        worker.start()
        wait_for(lambda: list((tmp_path / "avatars").glob(".astro.*/config.json")), 60,
                 "the new preparation to be staged beside the old one")
        time.sleep(0.2)                                 # room to misbehave, were the lock ignored
        assert avatars.load(tmp_path, "astro").config["kind"] == "image" and not done
    worker.join(60)
    assert done and avatars.load(tmp_path, "astro").config["kind"] == "video"
    assert entries(tmp_path) == ["astro"]


def test_concurrent_preparations_of_one_name_leave_one_complete_avatar(tmp_path):
    video = write_video(tmp_path / "clip.mp4", seconds=1.0)
    results, errors = [], []

    def prepare(source):
        try:
            results.append(avatars.prepare(source, "astro", tmp_path))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=prepare, args=(source,)) for source in (PORTRAIT, video, PORTRAIT, video)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(results) == 4
    avatar = avatars.load(tmp_path, "astro")
    assert len(avatar.frames) == avatar.config["frame_count"] in (1, 25)
    assert entries(tmp_path) == ["astro"]


def test_concurrent_cli_preparations_in_two_processes(tmp_path):
    video = write_video(tmp_path / "clip.mp4", seconds=1.0)
    cli = [sys.executable, "-m", "lipsync_worker", "prepare"]
    env = {"AVATAR_DATA_DIR": str(tmp_path), "PATH": ""}
    procs = [subprocess.Popen(cli + [str(source), "--avatar_id", "astro"], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for source in (PORTRAIT, video)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == [str(tmp_path / "avatars" / "astro")] * 2
    avatar = avatars.load(tmp_path, "astro")
    assert len(avatar.frames) == avatar.config["frame_count"] and entries(tmp_path) == ["astro"]


def test_the_cli_exits_2_with_the_reason(tmp_path):
    (tmp_path / "notes.jpg").write_text("my avatar, please\n")
    result = subprocess.run([sys.executable, "-m", "lipsync_worker", "prepare", str(tmp_path / "notes.jpg"),
                             "--avatar_id", "notes"], cwd=ROOT, env={"AVATAR_DATA_DIR": str(tmp_path), "PATH": ""},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("prepare: notes.jpg is text/plain, not a photo or a video")


def prepare_json(request: dict) -> subprocess.CompletedProcess:
    """The manager's way to prepare: the request on stdin, the answer on stdout."""
    return subprocess.run([sys.executable, *prepare.ARGV], input=json.dumps(request),
                          cwd=ROOT, env={"PATH": ""}, capture_output=True, text=True, timeout=60)


def test_the_managers_prepare_reads_its_request_on_stdin_and_answers_on_stdout(tmp_path):
    # A name that would read as an option on a command line is only data here.
    done = prepare_json({"source": str(PORTRAIT), "name": "-astro", "data_dir": str(tmp_path),
                         "overrides": {"timbre": "FemaleA"}, "bounds": {"max_pixels": 1_000_000}})
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert sorted(answer) == sorted(prepare.RESULT)
    assert (answer["source_type"], answer["frame_count"], answer["size"]) == ("image", 1, [512, 512])
    assert (answer["timbre"], answer["engine"], answer["engines_ready"]) == ("FemaleA", "puppet", ["puppet"])
    assert avatars.load(tmp_path, "-astro").config["timbre"] == "FemaleA"


@pytest.mark.parametrize("case, status, detail", [
    ("text", 415, {"detected": "text/plain"}),
    ("blank", 422, {"reasons": ["no face found: use a clear, frontal, well-lit photo or video of one person"]}),
    ("large", 413, {}),
])
def test_the_managers_prepare_refuses_with_a_status_and_writes_nothing(tmp_path, case, status, detail):
    source = tmp_path / "upload"
    if case == "text":
        source.write_text("my avatar, please\n")
    else:
        cv2.imwrite(str(source.with_suffix(".png")), np.full((300, 300, 3), 128, np.uint8) if case == "blank"
                    else portrait())
        source.with_suffix(".png").rename(source)
    done = prepare_json({"source": str(source), "name": "bad", "data_dir": str(tmp_path / "data"),
                         "bounds": {"max_pixels": 100_000}})
    assert done.returncode == prepare.REFUSED, done.stderr
    answer = json.loads(done.stdout)
    assert answer["status"] == status and answer["message"]
    assert detail.items() <= answer.items(), answer
    assert not (tmp_path / "data" / "avatars" / "bad").exists()


def test_a_malformed_request_is_no_answer(tmp_path):
    done = prepare_json({"source": str(PORTRAIT), "name": "x", "data_dir": str(tmp_path), "overrides": {"x": "1"}})
    assert done.returncode == 1 and done.stdout == ""
    assert "overrides may set" in done.stderr


@pytest.mark.parametrize("name", ["../evil", "a b", "x;rm -rf", "", "a" * 65, "dots.."])
def test_names_outside_the_allowed_alphabet_are_refused(tmp_path, name):
    with pytest.raises(avatars.AvatarError, match="letters, digits"):
        avatars.prepare(PORTRAIT, name, tmp_path)
    assert not (tmp_path / "avatars").exists()


def test_a_broken_folder_is_named_with_what_is_wrong(tmp_path):
    avatars.prepare(PORTRAIT, "astro", tmp_path)
    folder = tmp_path / "avatars" / "astro"
    (folder / "regions.json").write_text("[]")
    with pytest.raises(avatars.AvatarError, match="0 regions for 1 frames"):
        avatars.load(tmp_path, "astro")
    (folder / "config.json").write_text("{")
    with pytest.raises(avatars.AvatarError, match="is broken"):
        avatars.load(tmp_path, "astro")
    with pytest.raises(avatars.AvatarError, match="prepare IMAGE_OR_VIDEO --avatar_id ghost"):
        avatars.load(tmp_path, "ghost")


def livetalking_folder(tmp_path, coords) -> None:
    folder = tmp_path / "avatars" / "lt"
    (folder / "full_imgs").mkdir(parents=True)
    image = cv2.imread(str(PORTRAIT))
    for i in range(3):
        cv2.imwrite(str(folder / "full_imgs" / f"{i}.png"), image)
    (folder / "coords.pkl").write_bytes(pickle.dumps(coords))


def test_a_livetalking_musetalk_folder_loads(tmp_path):
    livetalking_folder(tmp_path, [(np.int64(177), 66, 272, 161)] * 3)
    avatar = avatars.load(tmp_path, "lt")
    assert len(avatar.frames) == 3 and avatar.regions[0].face == (177, 66, 272, 161)
    assert avatar.config["avatar_model"] == "musetalk"


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_coords_pickle_that_would_run_code_is_refused(tmp_path):
    livetalking_folder(tmp_path, [Payload()])
    with pytest.raises(avatars.AvatarError, match="builtins.print, which an avatar never needs"):
        avatars.load(tmp_path, "lt")
