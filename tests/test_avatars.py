"""Avatar folders: preparation from real images and videos, validation, LiveTalking folders."""
import json
import pickle
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import ROOT
from lipsync_worker import avatars

PORTRAIT = ROOT / "assets" / "astronaut.png"


def write_video(path, seconds=2.0, fps=30, shift_per_frame=1):
    image = cv2.imread(str(PORTRAIT))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (image.shape[1], image.shape[0]))
    for i in range(int(seconds * fps)):
        writer.write(np.roll(image, i * shift_per_frame % 8, axis=1))
    writer.release()
    return path


def test_an_image_becomes_a_one_frame_avatar_with_face_mouth_and_eyes(tmp_path):
    path = avatars.prepare(PORTRAIT, "astro", tmp_path)
    avatar = avatars.load(tmp_path, "astro")
    assert path == tmp_path / "avatars" / "astro" and not avatar.is_video
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
    assert sorted(p.name for p in (tmp_path / "avatars").iterdir()) == ["astro"]


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
    for source, reason in ((blank, "no face found"), (text, "neither an image nor a video")):
        with pytest.raises(avatars.AvatarError, match=reason):
            avatars.prepare(source, "bad", tmp_path / "data")
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data" / "avatars").iterdir())


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
