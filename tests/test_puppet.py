"""The puppet engine, the idle animation and the speech buffer, on the bundled portrait."""
import asyncio
from fractions import Fraction

import numpy as np
import pytest

from conftest import ROOT
from harness.stage import FakeViewer
from lipsync_worker import avatars
from lipsync_worker.animation import IdleAnimation, pingpong
from lipsync_worker.engines import FrameJob, LipSyncEngine, create_engine
from lipsync_worker.media import Stage
from lipsync_worker.engines.puppet import loudness, shape_of
from lipsync_worker.speech import SpeechBuffer
from tts_services.engines.base import AudioChunk, Phoneme


@pytest.fixture(scope="module")
def avatar(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    avatars.prepare(ROOT / "assets" / "astronaut.png", "astro", data)
    return avatars.load(data, "astro")


def voice(level: float, samples: int = 640) -> np.ndarray:
    t = np.arange(samples) / 16000
    return (np.sin(2 * np.pi * 220 * t) * level * 32767).astype(np.int16)


def render(engine, avatar, audio, phoneme=None, state=None, frames=6):
    state = state or engine.new_state()
    regions = avatar.regions[0]
    for _ in range(frames):  # the mouth eases open over a few frames
        out = engine.render([FrameJob(0, avatar.frames[0], regions, audio, phoneme, state)])[0]
    return out


def outside(frame, box, margin):
    x1, y1, x2, y2 = box
    masked = frame.copy()
    masked[max(0, y1 - margin):y2 + 2 * margin, max(0, x1 - margin):x2 + margin] = 0
    return masked


def test_loud_speech_opens_the_mouth_and_leaves_the_rest_of_the_frame(avatar):
    engine = create_engine("puppet", batch_size=4)
    base, mouth = avatar.frames[0], avatar.regions[0].mouth
    spoken = render(engine, avatar, voice(0.5), "a")
    x1, y1, x2, y2 = mouth
    change = np.abs(spoken.astype(int) - base.astype(int))
    assert change[y1:y2, x1:x2].mean() > 15                                  # the mouth moved
    margin = (x2 - x1) // 2
    assert np.array_equal(outside(spoken, mouth, margin), outside(base, mouth, margin))  # nothing else did
    assert spoken[y1:y2, x1:x2].mean() < base[y1:y2, x1:x2].mean()          # an open mouth is darker


def test_silence_keeps_the_mouth_closed(avatar):
    engine = create_engine("puppet", batch_size=4)
    assert np.array_equal(render(engine, avatar, voice(0.0), "a"), avatar.frames[0])


def test_phonemes_shape_the_mouth(avatar):
    engine = create_engine("puppet", batch_size=4)
    x1, y1, x2, y2 = avatar.regions[0].mouth

    def opened(phoneme):
        return np.abs(render(engine, avatar, voice(0.5), phoneme).astype(int)
                      - avatar.frames[0].astype(int))[y1:y2, x1:x2].mean()

    assert opened("m") < opened("ˈu") < opened("ɑː")   # closed < rounded < open
    assert shape_of("ˈoʊ")[1] < 1 < shape_of("iː")[1]   # rounded narrower, spread wider


def test_a_batch_renders_each_session_from_its_own_audio(avatar):
    engine = create_engine("puppet", batch_size=4)
    regions = avatar.regions[0]
    jobs = [FrameJob(0, avatar.frames[0], regions, voice(level), "a", engine.new_state()) for level in (0.0, 0.5)]
    for _ in range(4):
        quiet, loud = engine.render(jobs)
    assert np.array_equal(quiet, avatar.frames[0]) and not np.array_equal(loud, avatar.frames[0])


def test_loudness_scale():
    assert loudness(voice(0.0)) == 0 and loudness(voice(0.5)) == 1
    assert 0 < loudness(voice(0.01)) < 1


def test_pingpong_loops_without_a_jump():
    assert [pingpong(n, 4) for n in range(10)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert pingpong(5, 1) == 0


def test_a_still_image_is_never_frozen_and_blinks(avatar):
    animation = IdleAnimation(avatar)
    frames = [animation.frame(n)[1] for n in range(0, 25 * 6)]
    assert all(f.mean() > 50 for f in frames)                                 # never black
    assert sum(not np.array_equal(a, b) for a, b in zip(frames, frames[1:])) > 0.9 * len(frames)
    blink = min(animation._blinks)
    x1, y1, x2, y2 = avatar.regions[0].eyes[0]
    open_eye, shut_eye = animation.frame(blink - 1)[1], animation.frame(blink + 2)[1]
    assert np.abs(open_eye[y1:y2, x1:x2].astype(int) - shut_eye[y1:y2, x1:x2].astype(int)).mean() > 8


def test_speech_buffer_plays_in_order_with_phonemes():
    buffer = SpeechBuffer()
    buffer.append(AudioChunk(np.full(800, 1, np.int16).tobytes(), [Phoneme(0.0, 0.03, "h"), Phoneme(0.03, 0.05, "a")]))
    buffer.append(AudioChunk(np.full(800, 2, np.int16).tobytes(), [Phoneme(0.0, 0.05, "i")]))
    first, p1 = buffer.take(640)
    second, p2 = buffer.take(640)
    third, p3 = buffer.take(640)
    assert (first == 1).all() and p1 == "h"
    assert (second[:160] == 1).all() and (second[160:] == 2).all() and p2 == "i"
    assert (third[:320] == 2).all() and (third[320:] == 0).all() and buffer.pending == 0
    assert p3 is None  # past the end of every phoneme


def test_speech_buffer_clear_is_silence_at_once():
    buffer = SpeechBuffer()
    buffer.append(AudioChunk(np.full(16000, 5, np.int16).tobytes(), [Phoneme(0, 1, "a")]))
    buffer.take(640)
    buffer.clear()
    samples, phoneme = buffer.take(640)
    assert buffer.pending == 0 and not samples.any() and phoneme is None


def test_speech_buffer_peeks_without_copying_and_counts_what_changes_it():
    buffer = SpeechBuffer()
    buffer.append(AudioChunk(np.arange(2000, dtype=np.int16).tobytes()))
    version, queued = buffer.version, buffer.peek(2000)
    buffer.take(640)
    ahead = buffer.peek(2000)
    assert buffer.version == version and np.shares_memory(ahead, queued) and not ahead.flags.writeable
    assert list(ahead[:2]) == [640, 641]
    buffer.append(AudioChunk(np.ones(100, np.int16).tobytes()))
    assert buffer.version == version + 1 and list(ahead[:2]) == [640, 641]
    buffer.clear()
    assert buffer.version == version + 2 and len(buffer.peek(2000)) == 0


class BrokenEngine(LipSyncEngine):
    name = "broken"

    def render(self, jobs):
        raise RuntimeError("model exploded")


def test_a_failing_engine_keeps_picture_and_voice_going(avatar, caplog):
    stage = Stage(IdleAnimation(avatar), BrokenEngine(batch_size=4))
    talking, idle = FakeViewer(), FakeViewer()
    talking.speech.append(AudioChunk((np.ones(16000, np.int16) * 1000).tobytes()))
    stage.viewers += [talking, idle]

    async def three_ticks():
        for n in range(3):
            await stage._tick(n, asyncio.get_running_loop().time())
        await asyncio.sleep(0.01)

    asyncio.run(three_ticks())
    assert talking.video.depth == 3 and idle.video.depth == 3      # every tick still sent a frame
    assert talking.audio.depth == 3                                 # queue keeps the newest 3
    assert "engine broken failed" in caplog.text


class RecordingEngine(LipSyncEngine):
    name = "recording"

    def __init__(self):
        super().__init__(batch_size=8)
        self.audio = []

    def render(self, jobs):
        self.audio += [job.audio.copy() for job in jobs]
        return [job.base for job in jobs]


def test_each_frame_is_rendered_from_the_samples_sent_with_it(avatar):
    """Lip sync by construction: frame n shows the 40 ms of audio sent as tick n, same media time."""
    engine = RecordingEngine()
    stage = Stage(IdleAnimation(avatar), engine)
    viewer = FakeViewer()
    speech = (np.arange(16000) % 1000 + 1).astype(np.int16)
    viewer.speech.append(AudioChunk(speech.tobytes()))
    stage.viewers.append(viewer)
    sent_audio, sent_video = [], []

    async def ticks():
        loop = asyncio.get_running_loop()
        for n in range(5):
            await stage._tick(n, loop.time())
            for _ in range(100):  # the tick's second audio packet follows on the loop
                if viewer.audio.depth == 2:
                    break
                await asyncio.sleep(0.001)
            sent_audio.extend([await viewer.audio.recv(), await viewer.audio.recv()])
            sent_video.append(await viewer.video.recv())

    asyncio.run(ticks())
    for n, video in enumerate(sent_video):
        halves = sent_audio[2 * n:2 * n + 2]
        samples = np.concatenate([h.to_ndarray().ravel() for h in halves])
        assert np.array_equal(samples, engine.audio[n])                      # same samples
        assert np.array_equal(samples, speech[640 * n:640 * (n + 1)])         # in order
        assert video.pts * video.time_base == halves[0].pts * halves[0].time_base == n * Fraction(1, 25)
