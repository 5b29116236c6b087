"""The lip-sync worker as a real process, watched by real aiortc viewers over loopback."""
import asyncio
import json
import subprocess
import sys
import time

import aiohttp
import numpy as np
import pytest
import requests

from conftest import ROOT, run
from harness.ports import free_port
from harness.speech import wav
from harness.viewer import Viewer, fps, loud_after, mouth_motion, quiet_after, speech_at_network
from upstreams import CHAT_REPLY, tone

LOUD_RMS = 300          # decoded 16-bit audio: speech is far above, silence is 0
SILENT_DBOV = 100       # RTP audio level: 127 is digital silence, speech is well under 60


def mouth_box(astro_data):
    return tuple(json.loads((astro_data / "avatars" / "astro" / "regions.json").read_text())[0]["mouth"])


def silence_at_network(levels, since):
    later = [(t, level) for t, level in levels if t >= since]
    return next((t for i, (t, _) in enumerate(later) if all(lv > SILENT_DBOV for _, lv in later[i:])), None)


def test_a_viewer_sees_25_fps_hears_speech_and_sees_the_mouth_move(puppet_worker, astro_data):
    server = puppet_worker()

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await Viewer(server.url, mouth_box(astro_data)).connect(http)
            t0 = time.monotonic()
            await asyncio.sleep(3)
            asked = time.monotonic()
            status, answer = await viewer.post(http, "/human", text="Hello there, my name is Astro. "
                                               "I am talking to you over WebRTC, and my lips follow my words.",
                                               type="echo", interrupt=False)
            assert (status, answer) == (200, {"code": 0, "msg": "ok"})
            await asyncio.sleep(1.5)
            speaking_mid = await viewer.post(http, "/is_speaking")
            interrupted = time.monotonic()
            assert (await viewer.post(http, "/interrupt_talk"))[1] == {"code": 0, "msg": "ok"}
            await asyncio.sleep(1.5)
            speaking_after = await viewer.post(http, "/is_speaking")
            await viewer.close()
            return viewer.received, t0, asked, interrupted, speaking_mid, speaking_after

    got, t0, asked, interrupted, speaking_mid, speaking_after = run(scenario())
    video_times = [t for t, *_ in got.video]
    assert 24 <= fps(video_times, t0 + 0.5, asked) <= 26
    assert got.video[-1][1:] == (512, 512)
    assert 45 <= fps([t for t, _ in got.audio], t0 + 0.5, asked) <= 55        # 20 ms packets
    assert all(rms == 0 for t, rms in got.audio if t0 + 0.5 < t < asked)      # silent at rest
    # Speech leaves the worker within 300 ms of the request, silence within 100 ms of the interrupt
    # (measured as the packets arrive, before aiortc's receiver buffers 80 ms of them) ...
    assert speech_at_network(got.rtp_levels, asked) - asked < 0.3
    assert silence_at_network(got.rtp_levels, interrupted) - interrupted < 0.1
    # ... and is heard, then silenced, by the viewer.
    assert loud_after(got.audio, asked, LOUD_RMS) - asked < 1.0
    assert quiet_after(got.audio, interrupted, LOUD_RMS) - interrupted < 1.0
    assert speaking_mid == (200, {"code": 0, "data": True})
    assert speaking_after == (200, {"code": 0, "data": False})
    rest = mouth_motion(got.mouth, t0 + 0.5, asked)
    talking = mouth_motion(got.mouth, asked + 0.3, interrupted)
    assert talking > 3 * rest


def test_max_session_is_enforced_and_a_closed_peer_frees_its_slot_at_once(puppet_worker):
    server = puppet_worker("--max_session", "2")

    async def scenario():
        async with aiohttp.ClientSession() as http:
            first = await Viewer(server.url).connect(http)
            second = await Viewer(server.url).connect(http)
            with pytest.raises(RuntimeError, match="429.*already has 2 sessions"):
                await Viewer(server.url).connect(http)
            await first.close()
            deadline = time.monotonic() + 5
            while requests.get(server.url + "/health", timeout=5).json()["sessions"] != 1:
                assert time.monotonic() < deadline, "closed peer still counted"
                await asyncio.sleep(0.05)
            third = await Viewer(server.url).connect(http)
            await second.close()
            await third.close()

    run(scenario())


def test_a_peer_stuck_connecting_expires(puppet_worker):
    server = puppet_worker(WEBRTC_CONNECT_TIMEOUT="1")

    async def scenario():
        viewer = Viewer(server.url)
        viewer.pc.addTransceiver("video", direction="recvonly")
        viewer.pc.addTransceiver("audio", direction="recvonly")
        await viewer.pc.setLocalDescription(await viewer.pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(server.url + "/offer", json={"sdp": viewer.pc.localDescription.sdp,
                                                              "type": "offer"}) as response:
                assert response.status == 200
        await viewer.pc.close()   # never answers: the worker's side stays "connecting"

    run(scenario())
    assert requests.get(server.url + "/health", timeout=5).json()["sessions"] == 1
    deadline = time.monotonic() + 10
    while requests.get(server.url + "/health", timeout=5).json()["sessions"]:
        assert time.monotonic() < deadline, "stuck session never expired"
        time.sleep(0.1)


def test_bad_requests_get_a_clear_4xx(puppet_worker):
    server = puppet_worker()

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await Viewer(server.url).connect(http)
            sid = viewer.sessionid
            cases = [
                ("/human", {"sessionid": 1, "text": "hi"}, 404, "no session 1"),
                ("/human", {"sessionid": "abc", "text": "hi"}, 400, "sessionid: must be the number"),
                ("/human", {"sessionid": sid, "text": "hi", "type": "sing"}, 400, "type: must be 'echo' or 'chat'"),
                ("/human", {"sessionid": sid, "text": " "}, 400, "text: must be a non-empty string"),
                ("/human", {"sessionid": sid, "text": "x" * 2001}, 400, "the limit is 2000"),
                ("/human", {"sessionid": sid, "text": "hi", "type": "chat"}, 400, "chat needs an LLM: set LLM_URL"),
                ("/human", ["not", "an", "object"], 400, "body must be a JSON object"),
                ("/offer", {"sdp": "garbage", "type": "offer"}, 400, "invalid SDP offer"),
                ("/offer", {"sdp": "v=0", "type": "answer"}, 400, '"type": "offer"'),
                ("/is_speaking", {}, 400, "sessionid: Missing data"),
                ("/interrupt_talk", {"sessionid": 42}, 404, "no session 42"),
            ]
            for path, body, status, message in cases:
                async with http.post(server.url + path, json=body) as response:
                    answer = await response.json()
                    assert (response.status, answer["code"]) == (status, -1), (path, body, answer)
                    assert message in answer["msg"], (path, body, answer)
            async with http.post(server.url + "/human", data=b"sessionid=1") as response:
                assert response.status == 400 and (await response.json())["code"] == -1
            # Nothing of the above touched the session.
            assert (await viewer.post(http, "/is_speaking"))[1] == {"code": 0, "data": False}
            await viewer.close()

    run(scenario())


def wav_bytes(seconds: float, rate: int = 44100) -> bytes:
    """A tone that swells and fades four times a second, like syllables."""
    samples = np.frombuffer(tone("x" * int(seconds / 0.05), rate), "<i2")
    t = np.arange(len(samples)) / rate
    syllables = (samples * (0.5 - 0.5 * np.cos(2 * np.pi * 4 * t))).astype("<i2")
    return wav(syllables.tobytes(), rate)


def test_an_uploaded_audio_file_is_spoken_with_lip_motion(puppet_worker, astro_data):
    server = puppet_worker()

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await Viewer(server.url, mouth_box(astro_data)).connect(http)
            await asyncio.sleep(1)
            asked = time.monotonic()
            form = aiohttp.FormData()
            form.add_field("sessionid", str(viewer.sessionid))
            form.add_field("file", wav_bytes(1.5), filename="hello.wav", content_type="audio/wav")
            async with http.post(server.url + "/humanaudio", data=form) as response:
                assert (response.status, await response.json()) == (200, {"code": 0, "msg": "ok"})
            await asyncio.sleep(1.0)
            bad = aiohttp.FormData()
            bad.add_field("sessionid", str(viewer.sessionid))
            bad.add_field("file", b"this is not audio", filename="x.mp3")
            async with http.post(server.url + "/humanaudio", data=bad) as response:
                refused = response.status, await response.json()
            await asyncio.sleep(1.0)
            await viewer.close()
            return viewer.received, asked, refused

    got, asked, refused = run(scenario())
    assert loud_after(got.audio, asked, LOUD_RMS) - asked < 1.0
    assert mouth_motion(got.mouth, asked + 0.3, asked + 1.3) > 3 * mouth_motion(got.mouth, 0, asked)
    assert refused[0] == 400 and "not a readable audio file" in refused[1]["msg"]


def test_chat_speaks_the_llm_reply_sentence_by_sentence(puppet_worker, upstream):
    llm = upstream("openai")
    server = puppet_worker(LLM_URL=llm.url + "/v1", LLM_MODEL="tiny-chat", LLM_API_KEY="sk-test")

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await Viewer(server.url).connect(http)
            asked = time.monotonic()
            assert (await viewer.post(http, "/human", text="Who are you?", type="chat"))[0] == 200
            await asyncio.sleep(1.0)
            first = requests.get(llm.url + "/last", timeout=5).json()
            assert (await viewer.post(http, "/human", text="And then?", type="chat", interrupt=True))[0] == 200
            await asyncio.sleep(1.0)
            await viewer.close()
            return viewer.received, asked, first

    got, asked, first = run(scenario())
    assert loud_after(got.audio, asked, LOUD_RMS) - asked < 1.5
    assert first["model"] == "tiny-chat" and first["stream"] is True
    assert first["authorization"] == "Bearer sk-test"
    assert first["messages"] == [{"role": "user", "content": "Who are you?"}]
    second = requests.get(llm.url + "/last", timeout=5).json()["messages"]
    assert second[-1] == {"role": "user", "content": "And then?"}
    # The first reply is remembered: by the interrupt it had reached at least its first sentence.
    assert second[0] == {"role": "user", "content": "Who are you?"}
    assert second[1]["role"] == "assistant" and CHAT_REPLY.startswith(second[1]["content"].split("!")[0])


@pytest.mark.parametrize("flags, logged", [
    (["--tts", "EdgeTTS", "--TTS_SERVER", "http://127.0.0.1:{dead}", "--REF_FILE", "FemaleA"],
     "speaking with the offline voice"),
    # LiveTalking's default voice, which the in-process espeak does not have.
    (["--tts", "espeak", "--REF_FILE", "zh-CN-YunxiaNeural"], "speaking with its default voice"),
])
def test_speech_never_falls_silent_for_want_of_a_voice(puppet_worker, flags, logged):
    server = puppet_worker(*[f.replace("{dead}", str(free_port())) for f in flags])

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await Viewer(server.url).connect(http)
            asked = time.monotonic()
            await viewer.post(http, "/human", text="Can you still hear me?")
            await asyncio.sleep(2.0)
            await viewer.close()
            return viewer.received, asked

    got, asked = run(scenario())
    assert loud_after(got.audio, asked, LOUD_RMS) is not None
    assert logged in server.log.read_text()


def test_health_names_the_instance_and_metrics_count_frames(puppet_worker):
    server = puppet_worker()
    health = requests.get(server.url + "/health", timeout=5).json()
    assert health["instance_token"] == "tok-123" and health["avatar"] == "astro" and health["engine"] == "puppet"
    assert health["sessions"] == 0 and health["speaking_sessions"] == 0 and health["ready"] is True

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await Viewer(server.url).connect(http)
            await asyncio.sleep(1.0)
            await viewer.close()

    run(scenario())
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    sent = float(next(line.split()[-1] for line in metrics.splitlines()
                      if line.startswith('worker_frames_sent_total{kind="video"}')))
    assert sent >= 20
    assert "worker_engine_seconds_per_frame" in metrics and "worker_fps" in metrics
    assert requests.get(server.url + "/", timeout=5).text.startswith("<!doctype html>")


@pytest.mark.parametrize("flags, says", [
    (["--avatar_id", "ghost"], "no avatar 'ghost'"),
    (["--avatar_id", "../etc"], "must be 1-64 letters"),
    (["--avatar_id", "astro", "--model", "wav2lip"], "engine 'wav2lip' is not available"),
    (["--avatar_id", "astro", "--tts", "festival"], "unknown TTS model 'festival'"),
    (["--avatar_id", "astro", "WEBRTC_CONNECT_TIMEOUT=soon"], "WEBRTC_CONNECT_TIMEOUT='soon' is not a number"),
])
def test_a_worker_that_cannot_serve_says_why_and_exits(astro_data, flags, says):
    env = {"AVATAR_DATA_DIR": str(astro_data), **dict(f.split("=", 1) for f in flags if "=" in f)}
    result = subprocess.run([sys.executable, "-m", "lipsync_worker", "--listenport", str(free_port()),
                             *(f for f in flags if "=" not in f)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and says in result.stderr
