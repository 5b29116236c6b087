"""Avatar clips (prepare-clip) played at rest through /set_audiotype, seen by a real aiortc viewer."""
import asyncio
import json
import os
import subprocess
import sys
import time

import aiohttp
import av
import cv2
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from conftest import ROOT, run
from harness.avatars import make_avatar
from harness.viewer import Viewer

CLIP_LEVELS = [20 + 8 * k for k in range(25)]     # one second of solid greys, each 8 apart
SAME = 6.0              # mean |ΔY| under which a received picture is the frame it is compared with


def write_video(path, levels, size=(256, 256)):
    """An H.264 MP4 at 25 fps whose frame k is a solid grey of levels[k]."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        for level in levels:
            image = np.full((size[1], size[0], 3), level, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def prepare_clip(data_dir, source, *args):
    return subprocess.run([sys.executable, "-m", "lipsync_worker", "prepare-clip", str(source), *args],
                          cwd=ROOT, env={**os.environ, "AVATAR_DATA_DIR": str(data_dir)},
                          capture_output=True, text=True, timeout=60)


def luma(bgr: np.ndarray) -> np.ndarray:
    """The Y plane the Stage sends for a BGR frame, a quarter of its size each way."""
    height = bgr.shape[0]
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)[:height:4, ::4].astype(np.float32)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, demo_source):
    """Avatar `astro` (the demo portrait) with clips `wave` and `2`, made by prepare-clip."""
    data = tmp_path_factory.mktemp("data")
    make_avatar(data, "astro", source=demo_source)
    video = write_video(tmp_path_factory.mktemp("video") / "wave.mp4", CLIP_LEVELS)
    for name in ("wave", "2"):
        done = prepare_clip(data, video, "--avatar_id", "astro", "--audiotype", name)
        assert done.returncode == 0, done.stderr
    return data


def test_prepare_clip_writes_frames_at_the_avatars_size(data_dir):
    clip = data_dir / "avatars" / "astro" / "clips" / "wave"
    meta = json.loads((clip / "clip.json").read_text())
    assert meta["frame_count"] == 25 and meta["size"] == [512, 512] and meta["kind"] == "video"
    frames = sorted((clip / "frames").iterdir())
    assert len(frames) == 25
    first, last = (cv2.imread(str(p)) for p in (frames[0], frames[-1]))
    assert first.shape == (512, 512, 3)
    # Solid greys survive H.264 and the scaling to within a level or two.
    assert abs(float(first.mean()) - CLIP_LEVELS[0]) < 3 and abs(float(last.mean()) - CLIP_LEVELS[-1]) < 3


@pytest.mark.parametrize("args, says", [
    (["--avatar_id", "astro", "--audiotype", "../evil"], "letters, digits"),
    (["--avatar_id", "astro", "--audiotype", "idle"], "reserved"),
    (["--avatar_id", "astro", "--audiotype", "0"], "reserved"),
    (["--avatar_id", "nobody", "--audiotype", "nod"], "no avatar 'nobody'"),
    (["--avatar_id", "astro", "--audiotype", "wide"], "aspect ratio"),
])
def test_prepare_clip_refusals_say_why_and_write_nothing(data_dir, tmp_path, args, says):
    before = sorted(p.relative_to(data_dir) for p in data_dir.rglob("*"))
    wide = write_video(tmp_path / "wide.mp4", CLIP_LEVELS[:5], size=(256, 128))
    done = prepare_clip(data_dir, wide, *args)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert sorted(p.relative_to(data_dir) for p in data_dir.rglob("*")) == before


class PictureViewer(Viewer):
    """A viewer that keeps the Y plane of every picture it receives (a quarter size each way)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.pictures: list[tuple[float, np.ndarray]] = []

    async def _consume(self, track) -> None:
        if track.kind == "audio":
            return await super()._consume(track)
        try:
            while True:
                frame = await track.recv()
                y = frame.to_ndarray(format="yuv420p")[:frame.height:4, ::4].astype(np.float32)
                self.pictures.append((time.monotonic(), y))
        except MediaStreamError:
            pass

    def since(self, t: float) -> list[np.ndarray]:
        return [y for arrival, y in self.pictures if arrival >= t]


def test_set_audiotype_plays_the_clip_at_rest_and_speech_still_lip_syncs(spawn, data_dir):
    clip_folder = data_dir / "avatars" / "astro" / "clips" / "wave" / "frames"
    clip = [luma(cv2.imread(str(p))) for p in sorted(clip_folder.iterdir())]
    avatar = luma(cv2.imread(str(data_dir / "avatars" / "astro" / "frames" / "000000.png")))
    server = spawn([sys.executable, "-m", "lipsync_worker", "--avatar_id", "astro", "--listenport", "{port}"],
                   env={"AVATAR_DATA_DIR": str(data_dir)})

    def clip_index(y: np.ndarray) -> int | None:
        """Which clip frame this picture is, or None when it is none of them."""
        diffs = [float(np.mean(np.abs(y - c))) for c in clip]
        best = int(np.argmin(diffs))
        return best if diffs[best] < SAME else None

    def is_avatar(y: np.ndarray) -> bool:
        # The still avatar sways a pixel or two at rest: far closer to it than to any grey.
        return float(np.mean(np.abs(y - avatar))) < 20 and clip_index(y) is None

    async def set_type(viewer, http, audiotype, reinit=True):
        return await viewer.post(http, "/set_audiotype", audiotype=audiotype, reinit=reinit)

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await PictureViewer(server.url).connect(http)
            await asyncio.sleep(1.0)
            at_rest = viewer.since(0)[-10:]

            assert await set_type(viewer, http, "wave") == (200, {"code": 0, "msg": "ok"})
            asked = time.monotonic()
            await asyncio.sleep(0.6)
            playing = [clip_index(y) for y in viewer.since(asked)]

            assert await set_type(viewer, http, "wave", reinit=True) == (200, {"code": 0, "msg": "ok"})
            restarted = time.monotonic()
            await asyncio.sleep(0.6)
            after_reinit = [clip_index(y) for y in viewer.since(restarted)]

            status, unknown = await set_type(viewer, http, "dance")
            assert status == 400 and "'dance'" in unknown["msg"] and "'wave'" in unknown["msg"] \
                and "'idle'" in unknown["msg"] and unknown["code"] == -1
            assert (await set_type(viewer, http, 7))[0] == 400
            assert (await set_type(viewer, http, True))[0] == 400
            assert (await set_type(viewer, http, ["wave"]))[0] == 400
            status, missing = await viewer.post(http, "/set_audiotype", sessionid=999, audiotype="wave")
            assert status == 404 and missing["code"] == -1

            # Speech is lip-synced on the avatar's own frames, then the clip comes back.
            spoke = time.monotonic()
            assert (await viewer.post(http, "/human", text="Hello.", type="echo"))[0] == 200
            deadline = time.monotonic() + 10
            while (await viewer.post(http, "/is_speaking"))[1]["data"]:
                assert time.monotonic() < deadline, "still speaking after 10 s"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            while_speaking = viewer.since(spoke)
            back = [clip_index(y) for y in viewer.since(time.monotonic() - 0.3)]

            assert await set_type(viewer, http, 2) == (200, {"code": 0, "msg": "ok"})
            numbered = time.monotonic()
            await asyncio.sleep(0.5)
            by_number = [clip_index(y) for y in viewer.since(numbered)][-5:]

            assert await set_type(viewer, http, "idle") == (200, {"code": 0, "msg": "ok"})
            idled = time.monotonic()
            await asyncio.sleep(0.5)
            idle_again = viewer.since(idled)[-5:]
            assert await set_type(viewer, http, 0) == (200, {"code": 0, "msg": "ok"})
            await viewer.close()
            return at_rest, playing, after_reinit, while_speaking, back, by_number, idle_again

    at_rest, playing, after_reinit, while_speaking, back, by_number, idle_again = run(scenario())
    assert at_rest and all(is_avatar(y) for y in at_rest)
    # The clip plays frame after frame: the last pictures are consecutive clip frames.
    shown = [i for i in playing if i is not None]
    assert len(shown) >= 8 and shown[-1] >= 8
    assert all(b > a for a, b in zip(shown[-6:], shown[-5:]))
    # reinit: back to the first frames, then on from there (frames queued before it may show first).
    restarted = [i for i in after_reinit if i is not None]
    first_small = next((k for k, i in enumerate(restarted) if i <= 2), None)
    assert first_small is not None, f"reinit did not restart the clip: {restarted}"
    assert len(restarted[first_small:]) >= 8 and all(b > a for a, b in zip(restarted[first_small:], restarted[first_small + 1:]))
    assert any(is_avatar(y) for y in while_speaking)
    assert back and all(i is not None for i in back)
    assert by_number and all(i is not None for i in by_number)
    assert idle_again and all(is_avatar(y) for y in idle_again)
