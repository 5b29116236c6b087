"""/record: an MP4 of what a session's viewer is sent, made by a real worker, checked with PyAV."""
import asyncio
import json
import sys
import time

import aiohttp
import av
import numpy as np
import pytest
import requests

from conftest import run
from harness.avatars import make_avatar
from harness.viewer import Viewer

FRAME = 0.04
LOUD_RMS = 300          # 16-bit audio: espeak's speech is far above, silence is 0


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, demo_source):
    data = tmp_path_factory.mktemp("data")
    make_avatar(data, "astro", source=demo_source)
    return data


@pytest.fixture
def worker(spawn, data_dir, tmp_path):
    """worker(**env) -> a real worker whose temporary files go under tmp_path/"tmp"."""
    def start(**env: str):
        (tmp_path / "tmp").mkdir(exist_ok=True)
        return spawn([sys.executable, "-m", "lipsync_worker", "--avatar_id", "astro", "--listenport", "{port}"],
                     env={"AVATAR_DATA_DIR": str(data_dir), "TMPDIR": str(tmp_path / "tmp"), **env})
    return start


def recordings(tmp_path) -> list:
    return sorted((tmp_path / "tmp").glob("lipsync-recordings-*/*.mp4"))


async def record(viewer, http, kind):
    return await viewer.post(http, "/record", type=kind)


async def download(viewer, http):
    async with http.get(f"{viewer.url}/record/{viewer.sessionid}") as response:
        body = await response.read()
        return response.status, response.headers.get("Content-Type"), body


async def until_downloadable(viewer, http, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        status, kind, body = await download(viewer, http)
        if status != 409:
            return status, kind, body
        assert time.monotonic() < deadline, f"still recording after {timeout} s"
        await asyncio.sleep(0.1)


async def until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not so within {timeout} s"
        await asyncio.sleep(0.05)


def contents(path):
    """(video: codec, size, duration, grey frames), (audio: codec, rate, duration, int16 samples)."""
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        video_info = (video.codec_context.name, (video.width, video.height), float(video.duration * video.time_base))
        audio_info = (audio.codec_context.name, audio.rate, float(audio.duration * audio.time_base))
        frames = [f.to_ndarray(format="gray").astype(np.float32) for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        samples = np.concatenate([r.to_ndarray().ravel() for f in container.decode(audio=0)
                                  for r in resampler.resample(f)])
    return (*video_info, frames), (*audio_info, samples)


def test_a_recording_holds_what_the_viewer_was_sent_speech_included(worker, data_dir, tmp_path):
    server = worker()
    mouth = json.loads((data_dir / "avatars" / "astro" / "regions.json").read_text())[0]["mouth"]

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await Viewer(server.url).connect(http)
            assert (await download(viewer, http))[0] == 404            # nothing recorded yet
            assert await record(viewer, http, "start_record") == (200, {"code": 0, "msg": "ok"})
            began = time.monotonic()
            status, busy = await record(viewer, http, "start_record")
            assert status == 409 and "already recording" in busy["msg"]
            status, _, still = await download(viewer, http)
            assert status == 409 and b"still recording" in still
            await asyncio.sleep(1.0)
            await viewer.post(http, "/human", text="Hello there, this is being recorded.", type="echo")
            deadline = time.monotonic() + 15
            while (await viewer.post(http, "/is_speaking"))[1]["data"]:
                assert time.monotonic() < deadline, "still speaking after 15 s"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            status, ended = await record(viewer, http, "end_record")
            wall = time.monotonic() - began
            status_again, again = await record(viewer, http, "end_record")
            got = await download(viewer, http)
            await viewer.close()
            return status, ended, wall, status_again, again, got

    status, ended, wall, status_again, again, (got_status, content_type, mp4) = run(scenario())
    assert status == 200 and ended["code"] == 0 and ended["data"]["dropped_frames"] == 0
    seconds = ended["data"]["seconds"]
    assert 0.5 * wall < seconds <= wall + 0.2      # the clock never runs ahead of real time
    assert status_again == 409 and "not recording" in again["msg"] and "end_record" in again["msg"]
    assert got_status == 200 and content_type == "video/mp4"
    path = tmp_path / "got.mp4"
    path.write_bytes(mp4)
    (vcodec, size, vduration, frames), (acodec, rate, aduration, samples) = contents(path)
    assert (vcodec, size, acodec, rate) == ("h264", (512, 512), "aac", 16000)
    assert abs(vduration - seconds) <= 2 * FRAME and abs(len(frames) * FRAME - seconds) <= 2 * FRAME
    assert abs(aduration - seconds) <= 2 * FRAME and abs(len(samples) / 16000 - seconds) <= 3 * FRAME
    # Silence, then the speech: the recorded audio is what the viewer heard.
    rms = np.sqrt(np.mean(samples[:len(samples) // 640 * 640].reshape(-1, 640).astype(np.float32) ** 2, axis=1))
    assert rms[:20].max() < LOUD_RMS and (rms > LOUD_RMS).sum() >= 10
    # The mouth moves while the recorded voice speaks, and hardly at rest before it.
    x1, y1, x2, y2 = mouth
    crops = [f[y1:y2, x1:x2] for f in frames]
    motion = np.array([float(np.mean(np.abs(a - b))) for a, b in zip(crops, crops[1:])])
    loud = np.flatnonzero(rms > LOUD_RMS)
    talking = motion[loud[0]:min(loud[-1], len(motion))].mean()
    assert talking > 3 * motion[5:20].mean()


@pytest.mark.parametrize("env, ended_by", [({"RECORD_MAX_SECONDS": "1"}, "RECORD_MAX_SECONDS"),
                                           ({"RECORD_MAX_BYTES": "60000"}, "RECORD_MAX_BYTES")])
def test_a_limit_ends_the_recording_with_a_complete_file(worker, tmp_path, env, ended_by):
    server = worker(**env)

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await Viewer(server.url).connect(http)
            assert (await record(viewer, http, "start_record"))[0] == 200
            got = await until_downloadable(viewer, http)
            late = await record(viewer, http, "end_record")
            await viewer.close()
            return got, late

    (status, _, mp4), (late_status, late) = run(scenario())
    assert status == 200
    assert late_status == 409 and ended_by in late["msg"]
    path = tmp_path / "limited.mp4"
    path.write_bytes(mp4)
    (_, _, vduration, frames), (_, _, aduration, _) = contents(path)
    assert frames and abs(vduration - aduration) <= 2 * FRAME
    if ended_by == "RECORD_MAX_SECONDS":
        assert abs(vduration - 1.0) <= 2 * FRAME
    else:
        assert len(mp4) <= 60000


def test_files_go_with_their_session_and_at_shutdown(worker, tmp_path):
    server = worker()

    def sessions() -> int:
        return requests.get(server.url + "/health", timeout=5).json()["sessions"]

    async def scenario():
        async with aiohttp.ClientSession() as http:
            done = await Viewer(server.url).connect(http)
            unfinished = await Viewer(server.url).connect(http)
            still = await Viewer(server.url).connect(http)
            for viewer in (done, unfinished, still):
                assert (await record(viewer, http, "start_record"))[0] == 200
            await asyncio.sleep(0.5)
            assert (await record(done, http, "end_record"))[0] == 200
            files = recordings(tmp_path)
            folder = files[0].parent
            mode = folder.stat().st_mode & 0o777
            assert len(files) == 3 and mode == 0o700
            await done.close()
            await unfinished.close()
            await until(lambda: sessions() == 1)
            # Closing a session ends its recording (the encoder drains first) and removes the file.
            await until(lambda: recordings(tmp_path) == [f for f in files if f.name.startswith(f"{still.sessionid}-")])
            return folder

    folder = run(scenario())
    server.stop()                       # one session still recording: it ends, and the folder goes
    assert server.proc.returncode == 0
    assert not folder.exists()


def test_a_finished_recording_is_removed_after_the_retention_time(worker, tmp_path):
    server = worker(RECORD_RETENTION_SECONDS="1")

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await Viewer(server.url).connect(http)
            assert (await record(viewer, http, "start_record"))[0] == 200
            await asyncio.sleep(0.3)
            assert (await record(viewer, http, "end_record"))[0] == 200
            deadline = time.monotonic() + 10
            while (got := await download(viewer, http))[0] == 200:
                assert time.monotonic() < deadline, "still there 10 s after a 1 s retention"
                await asyncio.sleep(0.1)
            await viewer.close()
            return got

    status, _, body = run(scenario())
    assert status == 404 and b"RECORD_RETENTION_SECONDS" in body
    assert recordings(tmp_path) == []


def test_bad_record_requests_get_a_clear_4xx(worker):
    server = worker()
    for body, status in [({"sessionid": 1, "type": "pause"}, 400), ({"type": "start_record"}, 400),
                         ({"sessionid": "x1", "type": "start_record"}, 400), ([1], 400),
                         ({"sessionid": 123456789, "type": "start_record"}, 404)]:
        answer = requests.post(server.url + "/record", json=body, timeout=5)
        assert answer.status_code == status and answer.json()["code"] == -1, (body, answer.text)
    for path, status in [("/record/abc", 400), ("/record/999999999", 404)]:
        answer = requests.get(server.url + path, timeout=5)
        assert answer.status_code == status and answer.json()["code"] == -1, (path, answer.text)


def test_an_encoder_behind_drops_ticks_and_keeps_picture_and_sound_in_step(tmp_path):
    """In-process: ticks handed over faster than any encoder takes them are dropped and counted,
    never waited for, and the file still lasts as long as the ticks handed over."""
    from lipsync_worker.recording import Recording

    picture = np.random.default_rng(1).integers(0, 255, (768, 512), np.uint8)   # I420 of 512x512
    tone = (3000 * np.sin(np.arange(640) / 3)).astype(np.int16)

    async def burst():
        recording = Recording(tmp_path / "burst.mp4", max_seconds=300, max_bytes=200_000_000, retention_seconds=60)
        for _ in range(200):                      # 8 s of ticks at once, no awaits between them
            recording.add(picture, tone)
        await recording.finish()
        return recording

    recording = run(burst())
    assert recording.state == "done" and recording.ticks == 200 and recording.dropped > 0
    (_, _, vduration, frames), (_, _, aduration, samples) = contents(recording.path)
    encoded = 200 - recording.dropped
    assert len(frames) in (encoded, encoded + 1)      # + the last picture held to the end
    assert abs(vduration - 8.0) <= 2 * FRAME and abs(aduration - 8.0) <= 2 * FRAME
    # The dropped ticks are silence; the ones encoded kept their tone.
    rms = np.sqrt(np.mean(samples[:len(samples) // 640 * 640].reshape(-1, 640).astype(np.float32) ** 2, axis=1))
    assert (rms < 50).sum() >= recording.dropped - 2 and (rms > 1000).sum() >= encoded - 2
