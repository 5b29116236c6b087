"""Talking to the avatar by voice: a real aiortc viewer sends espeak's speech as its microphone to a
real worker, which finds the speech (Silero VAD), has a real sphinx recognition server transcribe
it, and answers: said back (echo) or through a local OpenAI-compatible LLM (chat)."""
import asyncio
import json
import subprocess
import sys
import time

import aiohttp
import pytest
import requests

from conftest import ROOT, asr_argv, run
from harness.ports import free_port
from harness.speech import espeak_pcm, espeak_pcm_now, wav
from harness.viewer import Microphone, Viewer, loud_after
from upstreams import CHAT_REPLY

QUESTION = "What is the weather like today?"   # sphinx hears "weather" in espeak's voice
HEARD = "weather"
LOUD_RMS = 300
LONG_TEXT = "I am telling you a long story now, about the sea and the ships on it, and it goes on " * 3


@pytest.fixture
def sphinx(spawn):
    return spawn(asr_argv("sphinx"))


@pytest.fixture
def worker(puppet_worker):
    """A puppet worker whose viewers' speech goes to the recognition server at asr_url."""
    def start(asr_url: str, **env: str):
        return puppet_worker(f"--ASR_SERVER={asr_url}", **env)
    return start


async def wait_event(viewer: Viewer, name: str, timeout: float = 20, **fields) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        for event in viewer.received.named(name):
            if all(event.get(k) == v for k, v in fields.items()):
                return event
        if time.monotonic() > deadline:
            raise AssertionError(f"no {name} {fields or ''} within {timeout} s; got "
                                 f"{[e['event'] for _, e in viewer.received.events]}")
        await asyncio.sleep(0.05)


async def sse_events(url: str, sessionid: int, into: list[dict]) -> None:
    """The session's /sse stream, parsed into `into` until it ends."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/sse", params={"sessionid": str(sessionid)}) as response:
            name = None
            async for line in response.content:
                line = line.decode().strip()
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    into.append({"event": name, **json.loads(line[6:])})


def test_speech_is_recognised_and_said_back_with_its_events_in_order_on_the_channel_and_sse(sphinx, worker):
    server = worker(sphinx.url)

    async def scenario():
        async with aiohttp.ClientSession() as http:
            mic = Microphone()
            viewer = await Viewer(server.url, microphone=mic, events=True, mode="echo").connect(http)
            sse: list[dict] = []
            reading = asyncio.create_task(sse_events(server.url, viewer.sessionid, sse))
            await asyncio.sleep(1.0)
            mic.say(await espeak_pcm(QUESTION))
            transcript = await wait_event(viewer, "transcript")
            await wait_event(viewer, "speaking_ended")
            await viewer.close()
            await asyncio.wait_for(reading, 10)   # the stream ends after the session's "closed"
            return viewer.received, transcript, sse, mic.said

    got, transcript, sse, said = run(scenario())
    assert HEARD in transcript["text"]
    names = [e["event"] for _, e in got.events]
    # Speech found, recognised, then said back: the reply is the transcript itself.
    order = ["speech_started", "speech_ended", "transcript", "speaking_started", "text", "speaking_ended"]
    assert [n for n in names if n in order] == order, names
    assert "transcript_partial" in names and names.index("transcript_partial") < names.index("transcript")
    assert got.named("speech_started")[0]["barge_in"] is False
    assert got.named("speech_ended")[0]["ignored"] is False
    assert got.named("text")[0] == {**got.named("text")[0], "kind": "echo", "text": transcript["text"]}
    # The answer is heard after the speech ended.
    assert loud_after(got.audio, said[0][1], LOUD_RMS) is not None
    # /sse carried the same events, in the same order.
    channel = [(e["event"], e["time"]) for _, e in got.events]
    assert [(e["event"], e["time"]) for e in sse][:len(channel)] == channel


def test_in_chat_mode_the_llm_gets_the_transcript_and_its_answer_is_heard(sphinx, worker, upstream):
    llm = upstream("openai")
    server = worker(sphinx.url, LLM_URL=llm.url + "/v1", LLM_MODEL="test-model")

    async def scenario():
        async with aiohttp.ClientSession() as http:
            mic = Microphone()
            viewer = await Viewer(server.url, microphone=mic, events=True).connect(http)  # chat: the default
            await asyncio.sleep(1.0)
            mic.say(await espeak_pcm(QUESTION))
            await wait_event(viewer, "reply_end")
            await wait_event(viewer, "speaking_ended")
            await viewer.close()
            return viewer.received, mic.said

    got, said = run(scenario())
    asked = requests.get(llm.url + "/last", timeout=5).json()
    assert HEARD in asked["messages"][-1]["content"]
    assert got.named("reply_end")[0]["text"] == CHAT_REPLY
    assert loud_after(got.audio, said[0][1], LOUD_RMS) is not None
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    for stage in ("vad_end", "transcript", "llm_first_token", "tts_first_audio", "first_audio_sent"):
        assert f'worker_turn_stage_seconds_count{{stage="{stage}"}} 1.0' in metrics, stage
    assert 'worker_speech_turns_total{outcome="answered"} 1.0' in metrics


@pytest.mark.parametrize("barge_in", [True, False])
def test_speaking_while_the_avatar_talks_stops_it_unless_barge_in_is_off(sphinx, worker, barge_in):
    server = worker(sphinx.url)

    async def scenario():
        async with aiohttp.ClientSession() as http:
            mic = Microphone()
            viewer = await Viewer(server.url, microphone=mic, events=True, mode="echo",
                                  barge_in=barge_in).connect(http)
            speech = await espeak_pcm("hello world")
            await viewer.post(http, "/human", text=LONG_TEXT, type="echo")
            await wait_event(viewer, "speaking_started")
            await asyncio.sleep(1.0)
            mic.say(speech)
            started = await wait_event(viewer, "speech_started")
            transcript = await wait_event(viewer, "transcript")
            if barge_in:   # what the viewer said is said back, the story having been dropped
                await wait_event(viewer, "text", text=transcript["text"])
            speaking = (await viewer.post(http, "/is_speaking"))[1]["data"]
            await viewer.close()
            return viewer.received, mic.said, started, speaking

    got, said, started, speaking = run(scenario())
    assert started["barge_in"] is barge_in
    began = said[0][0]
    if barge_in:
        assert got.named("speaking_ended")[0]["interrupted"] is True
        # Silent from soon after the viewer began to speak until the answer (>= 1.4 s later:
        # the words, then VAD_SILENCE_MS).
        loud = [t for t, rms in got.audio if began <= t < began + 1.0 and rms > LOUD_RMS]
        assert loud and max(loud) < began + 0.5, loud
        print(f"barge-in: the avatar's last loud frame arrived {1000 * (max(loud) - began):.0f} ms after the "
              "viewer began to speak (at the viewer, after both jitter buffers)")
    else:
        assert got.named("speaking_ended") == [] and speaking is True
        assert all(rms > LOUD_RMS for t, rms in got.audio if began + 0.2 <= t < began + 0.4)


def test_a_recognition_server_that_is_away_is_told_to_the_viewer(worker):
    away = f"http://127.0.0.1:{free_port()}"
    server = worker(away)

    async def scenario():
        async with aiohttp.ClientSession() as http:
            mic = Microphone()
            viewer = await Viewer(server.url, microphone=mic, events=True, mode="echo").connect(http)
            await asyncio.sleep(0.5)
            mic.say(await espeak_pcm(QUESTION))
            error = await wait_event(viewer, "error")
            await viewer.close()
            return error

    assert "speech recognition failed" in run(scenario())["message"]


def test_an_uploaded_question_is_recognised_and_answered(sphinx, worker, upstream):
    llm = upstream("openai")
    server = worker(sphinx.url, LLM_URL=llm.url + "/v1")
    question = wav(espeak_pcm_now(QUESTION))

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await Viewer(server.url, events=True).connect(http)
            form = aiohttp.FormData({"sessionid": str(viewer.sessionid), "type": "chat"})
            form.add_field("file", question, filename="question.wav", content_type="audio/wav")
            async with http.post(server.url + "/humanaudio", data=form) as response:
                answer = response.status, await response.json()
            await wait_event(viewer, "reply_end")
            await viewer.close()
            return answer, viewer.received

    (status, body), got = run(scenario())
    assert status == 200 and HEARD in body["data"]["text"]
    assert got.named("transcript")[0]["text"] == body["data"]["text"]
    assert HEARD in requests.get(llm.url + "/last", timeout=5).json()["messages"][-1]["content"]


def test_an_uploaded_question_without_an_llm_or_a_recogniser_is_refused(worker):
    server = worker(f"http://127.0.0.1:{free_port()}")
    question = wav(espeak_pcm_now(QUESTION))

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await Viewer(server.url).connect(http)
            answers = []
            for kind in ("chat", "banter"):
                form = aiohttp.FormData({"sessionid": str(viewer.sessionid), "type": kind})
                form.add_field("file", question, filename="question.wav", content_type="audio/wav")
                async with http.post(server.url + "/humanaudio", data=form) as response:
                    answers.append((response.status, (await response.json())["msg"]))
            async with http.post(server.url + "/offer", json={"sdp": "v=0", "type": "offer", "mode": "chat"}) as r:
                answers.append((r.status, (await r.json())["msg"]))
            await viewer.close()
            return answers

    (chat, chat_msg), (bad, bad_msg), (offer, offer_msg) = run(scenario())
    assert chat == 400 and "LLM_URL" in chat_msg
    assert bad == 400 and "'audio' or 'chat'" in bad_msg
    assert offer == 400 and "LLM_URL" in offer_msg


def test_the_vad_finds_each_utterance_and_leaves_out_a_click_without_loading_torch():
    # In a fresh interpreter: the worker must not pay torch's ~220 MB for its VAD.
    script = """
import json
import sys
import numpy as np
from harness.speech import espeak_pcm_now
from lipsync_worker.vad import WINDOW, VadSettings, VoiceActivity
speech = np.frombuffer(espeak_pcm_now("What is the weather like today?"), np.int16)
click = (np.random.default_rng(0).normal(0, 8000, 800)).astype(np.int16)   # 50 ms of noise
silence = np.zeros(16000, np.int16)
stream = np.concatenate([silence, speech, silence, click, silence, speech, silence])
activity, changes = VoiceActivity(VadSettings()), []
for i in range(0, len(stream) - WINDOW, WINDOW):
    change = activity.feed(stream[i:i + WINDOW])
    if change:
        changes.append([change.value, round(i / 16000, 2), activity.long_enough])
print(json.dumps(changes), "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    changes, torch_loaded = out.stdout.rsplit(" ", 1)
    assert torch_loaded.strip() == "False"
    turns = [c for c in json.loads(changes) if c[0] == "ended" and c[2]]
    assert len(turns) == 2, changes   # the two questions; the click is no turn
    starts = [c[1] for c in json.loads(changes) if c[0] == "started"]
    assert 1.0 <= starts[0] < 1.2, changes
