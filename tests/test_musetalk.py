"""The musetalk engine on the CPU, with small random models of MuseTalk's architecture saved in
MODELS_DIR's layout and read back through the same loader as the real weights."""
import asyncio
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from typing import Callable

import aiohttp
import cv2
import numpy as np
import pytest
import requests
import torch
from PIL import Image
from transformers import WhisperConfig, WhisperModel

from conftest import ROOT, run
from contracts.musetalk_weights import missing
from harness.musetalk import TINY_WHISPER, save_random
from harness.ports import free_port
from harness.stage import FakeViewer
from harness.viewer import Viewer, mouth_motion
from lipsync_worker import avatars
from lipsync_worker.animation import IdleAnimation
from lipsync_worker.engines import FrameJob, create_engine
from lipsync_worker.media import Stage
from lipsync_worker.musetalk_model import models, weights
from lipsync_worker.speech import SpeechBuffer
from tts_services.client import LocalTTS
from tts_services.engines.base import AudioChunk


@pytest.fixture
def data_dir(tmp_path, demo_source):
    shutil.copytree(demo_source, tmp_path / "avatars" / "demo")
    return tmp_path


@pytest.fixture
def engine(tiny_models, data_dir):
    made = create_engine("musetalk", 4, tiny_models)
    made.load(avatars.load(data_dir, "demo"))
    return made


def speech(seed: int, count: int = 640) -> np.ndarray:
    """Loud noise shaped like speech: a different seed is a different sound."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(count) * 6000 * np.sin(np.linspace(0, 9, count)) ** 2).astype(np.int16)


def frame_job(avatar, state, audio, tick=0, ahead=None) -> FrameJob:
    return FrameJob(0, avatar.frames[0], avatar.regions[0], audio, None, state, tick,
                    np.zeros(0, np.int16) if ahead is None else ahead)


def outside(frame: np.ndarray, box) -> np.ndarray:
    x1, y1, x2, y2 = box
    kept = frame.copy()
    kept[max(0, y1):y2, max(0, x1):x2] = 0
    return kept


def test_missing_weights_are_named_with_the_command_that_fetches_them(tmp_path, tiny_models):
    with pytest.raises(weights.MissingWeights) as empty:
        create_engine("musetalk", 4, tmp_path)
    for name in ("musetalkV15/unet.pth", "musetalkV15/musetalk.json", "sd-vae/config.json",
                 "whisper/preprocessor_config.json", "python -m lipsync_worker download-models"):
        assert name in str(empty.value)
    partial = tmp_path / "partial"
    shutil.copytree(tiny_models, partial)
    (partial / "musetalkV15" / "unet.pth").unlink()
    assert missing(partial) == ["musetalkV15/unet.pth"]


def test_the_loader_refuses_weights_that_do_not_fit(tmp_path, tiny_models):
    loaded = models.load(tiny_models)
    assert (loaded.device.type, loaded.dtype) == ("cpu", torch.float32)
    wrong = tmp_path / "wrong"
    shutil.copytree(tiny_models, wrong)
    state = torch.load(wrong / "musetalkV15" / "unet.pth", weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("conv_out")}, wrong / "musetalkV15" / "unet.pth")
    with pytest.raises(RuntimeError, match="conv_out"):
        models.load(wrong)
    # A whisper that loads fine but is not as wide as the UNet's cross-attention.
    shutil.copy(tiny_models / "musetalkV15" / "unet.pth", wrong / "musetalkV15" / "unet.pth")
    narrow = WhisperModel(WhisperConfig(**{**TINY_WHISPER, "d_model": 32, "encoder_ffn_dim": 64,
                                           "decoder_ffn_dim": 64}))
    narrow.save_pretrained(wrong / "whisper")
    with pytest.raises(ValueError, match="do not belong together"):
        models.load(wrong)


def test_talking_changes_the_mouth_with_the_sound_and_nothing_outside_the_blend(engine, data_dir):
    avatar = avatars.load(data_dir, "demo")
    base = avatar.frames[0]
    one, two = (engine.render([frame_job(avatar, engine.new_state(), speech(seed))])[0] for seed in (1, 2))
    assert one.shape == base.shape and one.dtype == np.uint8
    blend = engine.material.blends[0]
    assert np.array_equal(outside(one, blend), outside(base, blend))
    assert np.array_equal(outside(two, blend), outside(base, blend))
    x1, y1, x2, y2 = avatar.regions[0].mouth
    assert np.abs(one[y1:y2, x1:x2].astype(int) - two[y1:y2, x1:x2]).mean() > 10   # different sounds
    assert np.abs(one[y1:y2, x1:x2].astype(int) - base[y1:y2, x1:x2]).mean() > 10
    # The upper half of the face (eyes, brows) is never the model's.
    fx1, fy1, fx2, fy2 = avatar.regions[0].face
    upper = slice(fy1, (fy1 + fy2) // 2 - 2), slice(fx1, fx2)
    assert np.array_equal(one[upper], base[upper])


def test_the_face_is_blended_as_musetalks_get_image_blending_pastes_it(engine, data_dir):
    """MuseTalk pastes the face into the blend square and the square into the frame through the
    mask with PIL (integer rounding); the engine's blend gives the same bytes."""
    avatar = avatars.load(data_dir, "demo")
    face = np.random.default_rng(0).integers(0, 256, (256, 256, 3), np.uint8)
    out = engine._blend(frame_job(avatar, engine.new_state(), speech(1)), face)
    (x1, y1, x2, y2), square = engine.material.crops[0], engine.material.blends[0]
    mask = Image.fromarray(np.round(engine.material.masks[0][..., 0] * 255).astype(np.uint8))
    body = Image.fromarray(avatar.frames[0][..., ::-1])
    large = body.crop(square)
    resized = cv2.resize(face, (x2 - x1, y2 - y1))
    large.paste(Image.fromarray(resized[..., ::-1]), (x1 - square[0], y1 - square[1], x2 - square[0], y2 - square[1]))
    body.paste(large, square[:2], mask)
    assert np.array_equal(out, np.asarray(body)[..., ::-1])


def test_a_batch_renders_each_session_as_it_would_alone(engine, data_dir):
    avatar = avatars.load(data_dir, "demo")
    alone = [engine.render([frame_job(avatar, engine.new_state(), speech(seed), ahead=speech(seed + 9, 4000))])[0]
             for seed in (1, 2, 3)]
    together = engine.render([frame_job(avatar, engine.new_state(), speech(seed), ahead=speech(seed + 9, 4000))
                              for seed in (1, 2, 3)])
    for a, b in zip(alone, together):
        assert np.abs(a.astype(int) - b).max() <= 2       # float rounding only: no session leaks into another
    assert np.abs(together[0].astype(int) - together[1]).mean() > 0.5


def test_a_session_keeps_its_context_while_it_speaks_and_starts_afresh_after_a_pause(engine, data_dir):
    avatar = avatars.load(data_dir, "demo")
    state = engine.new_state()
    for tick in range(5):
        engine.render([frame_job(avatar, state, speech(tick), tick)])
    assert len(state.audio) == 5 * 640
    after_pause = engine.render([frame_job(avatar, state, speech(7), 40)])[0]
    fresh = engine.render([frame_job(avatar, engine.new_state(), speech(7), 40)])[0]
    assert len(state.audio) == 640
    assert np.array_equal(after_pause, fresh)


@torch.inference_mode()
def musetalk_tokens(loaded: models.Models, audio: np.ndarray) -> torch.Tensor:
    """MuseTalk's tokens for every frame of a whole clip (audio_processor.py's get_audio_feature
    and get_whisper_chunk, then the positional encoding): whisper on each window-long segment from
    the clip's start, the features joined and cut to the clip's length, frame i's 10 from 2i - 4
    on, zeros outside the clip. MuseTalk's segments are 30 s, the tiny whisper's window 4 s."""
    span = loaded.features.n_samples
    segments = []
    for begin in range(0, len(audio), span):
        mel = loaded.features(audio[begin:begin + span].astype(np.float32) / 32768, sampling_rate=16000,
                              return_tensors="pt").input_features
        segments.append(torch.stack(loaded.whisper(mel, output_hidden_states=True).hidden_states, dim=2)[0])
    features = torch.cat(segments)[:len(audio) // 320]
    zeros = features.new_zeros(6, *features.shape[1:])      # 4 before the clip; 6 after reach the last window's end
    padded = torch.cat([zeros[:4], features, zeros])
    return loaded.positions(torch.stack([padded[2 * i:2 * i + 10] for i in range(len(audio) // 640)]).flatten(1, 2))


def stream(engine, avatar, deliver: Callable[[int, SpeechBuffer], None]) -> list[tuple[torch.Tensor, np.ndarray]]:
    """The Stage's ticks for one session until it falls silent; before tick n, deliver(n, its
    speech) appends what the TTS has delivered by then. Each frame's tokens, with the utterance as
    it could be heard then: the samples played so far, the frame's own and those queued after."""
    viewer = FakeViewer(engine.new_state())
    stage = Stage(IdleAnimation(avatar), engine)
    stage.viewers.append(viewer)
    frames, played = [], []
    hear = engine.hear

    def recording(jobs: list[FrameJob]) -> torch.Tensor:
        tokens = hear(jobs)
        played.append(jobs[0].audio)
        frames.append((tokens[0], np.concatenate(played + [jobs[0].ahead])))
        return tokens

    async def ticks():
        n = 0
        while n == 0 or viewer.tail:
            deliver(n, viewer.speech)
            await stage._tick(n, asyncio.get_running_loop().time())
            n += 1

    engine.hear = recording
    try:
        asyncio.run(ticks())
    finally:
        del engine.hear
    return frames


async def espeak_chunks(text: str) -> list[bytes]:
    return [chunk.pcm async for chunk in LocalTTS().stream(text)]


def test_every_frame_hears_what_musetalk_hears_in_the_whole_utterance(engine, data_dir):
    """Four sentences streamed as the TTS streams them, a chunk each, the next appended whenever
    less than 5 s is queued: every segment a frame reads (4 s, the tiny whisper's window) is
    queued to its end by then. Each frame's tokens are those MuseTalk computes from the whole
    utterance at once, and each segment goes through whisper once."""
    chunks = asyncio.run(espeak_chunks("The quick brown fox jumps over the lazy dog. It was a bright cold day in "
                                       "April, and the clocks were striking thirteen. Call me Ishmael. Some years "
                                       "ago, I thought I would sail about."))
    utterance = np.frombuffer(b"".join(chunks), np.int16)
    span = engine.models.features.n_samples
    assert len(chunks) == 4 and 2 * span < len(utterance) < 3 * span - 4000

    def deliver(n: int, speech: SpeechBuffer) -> None:
        while chunks and speech.pending < 5 * 16000:
            speech.append(AudioChunk(chunks.pop(0)))

    def features_only(jobs: list[FrameJob]) -> list[np.ndarray]:
        """The frames' pixels are not what this is about: ~250 of them would take seconds."""
        engine.hear(jobs)
        return [job.base for job in jobs]

    engine.render = features_only
    passes = []
    counting = engine.models.whisper.register_forward_hook(lambda module, args, out: passes.append(len(args[0])))
    frames = stream(engine, avatars.load(data_dir, "demo"), deliver)
    counting.remove()
    whole = musetalk_tokens(engine.models, utterance)
    assert len(frames) > len(whole) > 200
    for i, expected in enumerate(whole):
        assert torch.equal(frames[i][0], expected), i
    # The segments the frames read (the last one holds the tail frames' silence too), each once.
    assert sum(passes) == (640 * len(frames) - 1) // span + 1 == 3


def test_a_frame_is_never_held_back_for_speech_still_to_come(engine, data_dir, caplog):
    """A short queue, an empty one in the middle of the run, more speech arriving and an interrupt
    with new speech: each tick renders its frame at once, from MuseTalk's tokens for the utterance
    as it is queued at that moment."""
    first, more, instead = speech(1, 1000), speech(2, 8000), speech(3, 3000)

    def deliver(n: int, queue: SpeechBuffer) -> None:
        if n == 0:
            queue.append(AudioChunk(first.tobytes()))
        if n == 3:
            queue.append(AudioChunk(more.tobytes()))
        if n == 6:
            queue.clear()
            queue.append(AudioChunk(instead.tobytes()))

    frames = stream(engine, avatars.load(data_dir, "demo"), deliver)
    assert len(frames) == 6 + 5 + 3 and "failed" not in caplog.text     # every tick of the run, the tail's too
    assert len(frames[1][1]) == 2 * 640              # frame 1: 360 samples, then silence
    for i, (tokens, heard) in enumerate(frames):
        assert torch.equal(tokens, musetalk_tokens(engine.models, heard)[i]), i


def test_latents_are_prepared_once_and_made_again_for_another_vae(tiny_models, data_dir, tmp_path):
    avatar = avatars.load(data_dir, "demo")
    engine = create_engine("musetalk", 2, tiny_models)
    engine.load(avatar)
    kept = data_dir / "avatars" / "demo" / "musetalk" / "latents.npy"
    made = kept.stat().st_mtime_ns
    assert np.allclose(np.load(kept), engine.material.latents.numpy())
    again = create_engine("musetalk", 2, tiny_models)
    again.load(avatars.load(data_dir, "demo"))
    assert kept.stat().st_mtime_ns == made
    other = save_random(tmp_path / "other", seed=5)
    third = create_engine("musetalk", 2, other)
    third.load(avatars.load(data_dir, "demo"))
    assert kept.stat().st_mtime_ns != made
    assert not np.allclose(third.material.latents.numpy(), engine.material.latents.numpy())


def test_a_livetalking_musetalk_avatar_is_used_with_its_own_latents_and_masks(tiny_models, demo_source, tmp_path):
    frame = cv2.imread(str(demo_source / "frames" / "000000.png"))
    folder = tmp_path / "avatars" / "lt"
    for sub in ("full_imgs", "mask"):
        (folder / sub).mkdir(parents=True)
    cv2.imwrite(str(folder / "full_imgs" / "00000000.png"), frame)
    face = (177, 67, 270, 170)
    blend = (150, 44, 296, 190)
    mask = np.zeros((146, 146), np.uint8)
    mask[90:130, 30:110] = 255
    cv2.imwrite(str(folder / "mask" / "00000000.png"), mask)
    (folder / "coords.pkl").write_bytes(pickle.dumps([face]))
    (folder / "mask_coords.pkl").write_bytes(pickle.dumps([list(blend)]))
    latents = torch.randn(1, 8, 32, 32)
    torch.save([latents], folder / "latents.pt")
    engine = create_engine("musetalk", 2, tiny_models)
    avatar = avatars.load(tmp_path, "lt")
    assert avatar.config["avatar_model"] == "musetalk"
    engine.load(avatar)
    assert torch.equal(engine.material.latents, latents)
    assert engine.material.crops == [face] and engine.material.blends == [blend]
    assert engine.material.made_with == {"box": "livetalking", "mask": "livetalking"}
    out = engine.render([frame_job(avatar, engine.new_state(), speech(1))])[0]
    changed = np.argwhere(np.abs(out.astype(int) - frame).sum(axis=2) > 0)
    # Only inside LiveTalking's mask (rows 90..130, columns 30..110 of its square).
    assert changed[:, 0].min() >= blend[1] + 90 and changed[:, 0].max() < blend[1] + 130
    assert changed[:, 1].min() >= blend[0] + 30 and changed[:, 1].max() < blend[0] + 110
    assert not (folder / "musetalk").exists()


def test_registering_for_musetalk_prepares_its_latents_and_needs_the_weights(tmp_path, tiny_models):
    portrait = ROOT / "assets" / "astronaut.png"
    env = {**os.environ, "AVATAR_DATA_DIR": str(tmp_path / "data"), "LOG_DIR": str(tmp_path / "logs")}

    def register(name: str, models_dir) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "avatar_manager", "register", str(portrait), "--name", name,
                               "--engine", "musetalk"], cwd=ROOT, env={**env, "MODELS_DIR": str(models_dir)},
                              capture_output=True, text=True, timeout=120)

    refused = register("nomodels", tmp_path / "none")
    assert refused.returncode == 2 and "download-models" in refused.stderr
    assert not (tmp_path / "data" / "avatars" / "nomodels").exists()
    done = register("muse", tiny_models)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["engine"] == "musetalk" and record["engines_ready"] == ["puppet", "musetalk"]
    assert record["musetalk_material"] == {"box": "haar", "mask": "ellipse"}   # no face-parsing weights
    kept = tmp_path / "data" / "avatars" / "muse" / "musetalk" / "latents.npy"
    made = kept.stat().st_mtime_ns
    engine = create_engine("musetalk", 2, tiny_models)
    engine.load(avatars.load(tmp_path / "data", "muse"))
    assert kept.stat().st_mtime_ns == made            # the worker uses what registration made


def worker_argv(port: int | str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "lipsync_worker", "--model", "musetalk", "--avatar_id", "demo",
            "--listenport", str(port), "--instance_token", "tok", *flags]


def test_a_musetalk_worker_without_weights_exits_at_once_naming_them(tmp_path, data_dir):
    started = time.monotonic()
    done = subprocess.run(worker_argv(free_port()), cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "AVATAR_DATA_DIR": str(data_dir), "MODELS_DIR": str(tmp_path / "none")})
    assert done.returncode == 2
    assert "musetalkV15/unet.pth" in done.stderr and "download-models" in done.stderr
    assert time.monotonic() - started < 20


def test_download_models_explains_an_unreachable_hub(tmp_path):
    port = free_port()  # nothing listens there
    done = subprocess.run([sys.executable, "-m", "lipsync_worker", "download-models", "--models_dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_OFFLINE": "0"})
    assert done.returncode == 1
    assert "could not fetch from the Hugging Face hub" in done.stderr and "HF_ENDPOINT" in done.stderr
    for name in ("musetalkV15/unet.pth", "whisper/preprocessor_config.json", "face-parse-bisent/79999_iter.pth"):
        assert name in done.stderr
    assert "Traceback" not in done.stderr
    assert not any(tmp_path.rglob("*.pth"))


def test_a_worker_warms_up_before_it_is_ready_then_batches_every_talking_session(spawn, tiny_models, data_dir):
    server = spawn(worker_argv("{port}", "--batch_size", "8"),
                   env={"AVATAR_DATA_DIR": str(data_dir), "MODELS_DIR": str(tiny_models)}, ready=False)
    states = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            health = requests.get(server.url + "/health", timeout=1).json()
        except requests.ConnectionError:
            time.sleep(0.05)
            continue
        states.append(health["ready"])
        if health["ready"]:
            break
        refused = requests.post(server.url + "/offer", json={"sdp": "v=0", "type": "offer"}, timeout=5)
        if not requests.get(server.url + "/health", timeout=1).json()["ready"]:
            assert refused.status_code == 503 and "loading" in refused.json()["msg"]
        time.sleep(0.1)
    assert states and states[-1] is True, f"not ready within 60 s: {server.log.read_text()[-2000:]}"
    assert states[0] is False
    mouth = tuple(avatars.load(data_dir, "demo").regions[0].mouth)

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewers = [await Viewer(server.url, mouth).connect(http) for _ in range(3)]
            await asyncio.sleep(1.5)
            asked = time.monotonic()
            for viewer in viewers:
                status, _ = await viewer.post(http, "/human", text="Hello there, I am speaking to you, "
                                              "and so are my two twins, all at once.", type="echo")
                assert status == 200
            await asyncio.sleep(3)
            for viewer in viewers:
                await viewer.close()
            return [v.received for v in viewers], asked

    received, asked = run(scenario())
    for got in received:
        assert got.video[-1][1:] == (512, 512)
        rest = mouth_motion(got.mouth, asked - 1.2, asked)
        talking = mouth_motion(got.mouth, asked + 0.5, asked + 3)
        assert talking > 3 * rest + 1
    text = requests.get(server.url + "/metrics", timeout=5).text
    frames = float(re.search(r"^worker_engine_batch_frames_sum (\S+)", text, re.M).group(1))
    calls = float(re.search(r"^worker_engine_batch_frames_count (\S+)", text, re.M).group(1))
    # Three talking sessions: mostly three frames per model call (not three calls).
    assert frames / calls > 2


def test_a_worker_whose_weights_do_not_load_stops_with_the_reason(tmp_path, tiny_models, data_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models, broken)
    (broken / "musetalkV15" / "unet.pth").write_bytes(b"not a checkpoint")
    done = subprocess.run(worker_argv(free_port()), cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "AVATAR_DATA_DIR": str(data_dir), "MODELS_DIR": str(broken)})
    assert done.returncode == 2
    assert "the musetalk engine could not be loaded" in done.stderr and "unet.pth" in done.stderr
