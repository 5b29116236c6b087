"""A worker's memory stays bounded whatever its clients send: queued speech per session, the
length of uploaded audio, offers that never connect; and a flooded worker still stops promptly.

Real worker processes with the prepared demo avatar, real aiortc viewers on loopback.
"""
import asyncio
import signal
import socket
import sys
import time

import aiohttp
import psutil
import pytest
import requests
from aiortc import RTCConfiguration, RTCPeerConnection

from conftest import run
from harness.bombs import silent_flac
from harness.speech import wav
from harness.viewer import Viewer

LONG_TEXT = ("Hello there, my name is Astro, and I am talking to you over WebRTC while my lips follow "
             "my words. " * 25)[:2000]
# Before these limits, 200 such texts took a worker from 137 MB to 624 MB, and a 2-hour FLAC
# upload to 877 MB (BENCHMARKS.md); bounded, either grows it by ~25 MB.
RSS_GROWTH_BOUND = 80 * 1024 * 1024
STOP_TIMEOUT = 10   # the manager's default grace between SIGTERM and SIGKILL


@pytest.fixture
def worker(spawn, demo_source):
    def start(*flags: str, **env: str):
        return spawn([sys.executable, "-m", "lipsync_worker", "--avatar_id", "demo", "--listenport", "{port}",
                      *flags], env={"AVATAR_DATA_DIR": str(demo_source.parent.parent), **env})
    return start


class RssPeak:
    """The largest resident size of a process, sampled every 20 ms while in use."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.base = self.process.memory_info().rss
        self.peak = self.base

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.process.memory_info().rss)
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> "RssPeak":
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    @property
    def growth(self) -> int:
        return self.peak - self.base


def silent_wav(seconds: float, rate: int = 8000) -> bytes:
    return wav(bytes(2 * int(seconds * rate)), rate)


async def upload(http: aiohttp.ClientSession, url: str, sessionid: int, data: bytes, name: str) -> tuple[int, dict]:
    form = aiohttp.FormData()
    form.add_field("sessionid", str(sessionid))
    form.add_field("file", data, filename=name)
    async with http.post(url + "/humanaudio", data=form, timeout=aiohttp.ClientTimeout(total=60)) as response:
        return response.status, await response.json()


def test_a_human_flood_gets_429_once_the_queue_is_full_and_memory_stays_bounded(worker):
    server = worker()

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewers = [await Viewer(server.url, decode_video=False).connect(http) for _ in range(2)]
            answers = {v.sessionid: [] for v in viewers}
            async with RssPeak(server.proc.pid) as rss:
                for _ in range(150):
                    for viewer in viewers:
                        answers[viewer.sessionid].append(await viewer.post(http, "/human", text=LONG_TEXT))
                await asyncio.sleep(8)   # whatever was accepted is synthesised and plays meanwhile
            # A full queue still takes a text that replaces it.
            replaced = await viewers[0].post(http, "/human", text=LONG_TEXT, interrupt=True)
            again = await viewers[0].post(http, "/human", text=LONG_TEXT)
            speaking = await viewers[1].post(http, "/is_speaking")
            for viewer in viewers:
                await viewer.close()
            return answers, rss, replaced, again, speaking

    answers, rss, replaced, again, speaking = run(scenario())
    for sid, got in answers.items():
        # One 2000-character text is reckoned at 200 s, so a second does not fit in the default
        # 300 s until 100 s of the first have been said.
        assert got[0] == (200, {"code": 0, "msg": "ok"}), sid
        statuses = [status for status, _ in got[1:]]
        assert statuses == [429] * len(statuses), sid
        assert all(answer["code"] == -1 and "MAX_QUEUED_SPEECH_SECONDS=300" in answer["msg"] for _, answer in got[1:])
    assert replaced == (200, {"code": 0, "msg": "ok"})
    assert again[0] == 429
    assert speaking == (200, {"code": 0, "data": True})
    assert rss.growth < RSS_GROWTH_BOUND, f"RSS grew {rss.growth / 2**20:.0f} MB"


def test_short_texts_fill_the_queue_up_to_the_limit(worker):
    server = worker(MAX_QUEUED_SPEECH_SECONDS="30")

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await Viewer(server.url, decode_video=False).connect(http)
            # 50 characters: reckoned at 5 s each until synthesised.
            answers = [await viewer.post(http, "/human", text="Hello there, I am Astro, and I am glad to see you.")
                       for _ in range(20)]
            await viewer.close()
            return answers

    answers = run(scenario())
    statuses = [status for status, _ in answers]
    # 30 s hold six of them at least (playing only makes room, and synthesis replaces each
    # reckoning by its real length, ~3 s), and 20 of them do not fit.
    assert statuses[:6] == [200] * 6, statuses
    assert 429 in statuses and set(statuses) == {200, 429}, statuses
    assert all("MAX_QUEUED_SPEECH_SECONDS=30" in answer["msg"] for status, answer in answers if status == 429)


def test_audio_longer_than_the_limit_gets_413_with_memory_bounded_and_a_full_queue_429(worker):
    server = worker(MAX_AUDIO_SECONDS="60", MAX_QUEUED_SPEECH_SECONDS="80")

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await Viewer(server.url, decode_video=False).connect(http)
            hours = silent_flac(2 * 3600)     # ~1.3 MB that decodes to 230 MB of PCM
            async with RssPeak(server.proc.pid) as rss:
                flac = await upload(http, server.url, viewer.sessionid, hours, "hours.flac")
                wav = await upload(http, server.url, viewer.sessionid, silent_wav(61), "long.wav")
            idle = await viewer.post(http, "/is_speaking")
            first = await upload(http, server.url, viewer.sessionid, silent_flac(50), "first.flac")
            second = await upload(http, server.url, viewer.sessionid, silent_flac(50), "second.flac")
            await viewer.close()
            return flac, wav, idle, first, second, rss

    flac, wav, idle, first, second, rss = run(scenario())
    assert flac == (413, {"code": -1, "msg": "hours.flac: longer than MAX_AUDIO_SECONDS=60"})
    assert wav == (413, {"code": -1, "msg": "long.wav: longer than MAX_AUDIO_SECONDS=60"})
    assert idle == (200, {"code": 0, "data": False})      # the refusals queued nothing
    assert rss.growth < RSS_GROWTH_BOUND, f"RSS grew {rss.growth / 2**20:.0f} MB"
    assert first == (200, {"code": 0, "msg": "ok"})
    assert second[0] == 429 and "MAX_QUEUED_SPEECH_SECONDS=80" in second[1]["msg"]


async def never_connecting(http: aiohttp.ClientSession, url: str, peers: list) -> tuple[int, dict]:
    """An offer whose answer is never applied: the worker's side of it stays "connecting"."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    peers.append(pc)
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(url + "/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}) as response:
        return response.status, await response.json()


def stalled_upload(port: int) -> socket.socket:
    """A /humanaudio form that starts and then stops arriving, holding its handler."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    head = (f"POST /humanaudio HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: multipart/form-data; boundary=XX\r\nContent-Length: 1000000\r\n\r\n"
            '--XX\r\nContent-Disposition: form-data; name="file"; filename="slow.wav"\r\n\r\n')
    sock.sendall(head.encode() + bytes(1000))
    return sock


def test_a_flooded_worker_exits_within_stop_timeout_of_sigterm(worker):
    server = worker(WEBRTC_CONNECT_TIMEOUT="60")

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewers = [await Viewer(server.url, decode_video=False).connect(http) for _ in range(3)]
            queued = 0
            for viewer in viewers:   # hundreds of short utterances queued in each session
                while (await viewer.post(http, "/human", text="Hi there."))[0] == 200:
                    queued += 1
            never: list = []
            assert (await never_connecting(http, server.url, never))[0] == 200
            sse = await http.get(server.url + "/sse")
            slow = stalled_upload(server.port)
            try:
                await asyncio.sleep(0.5)
                server.proc.send_signal(signal.SIGTERM)
                exit_code = await asyncio.to_thread(server.proc.wait, STOP_TIMEOUT)
            finally:
                slow.close()
                sse.close()
                await never[0].close()
                for viewer in viewers:
                    await viewer.close()
            return queued, exit_code

    queued, exit_code = run(scenario())
    assert queued > 600      # 300 s of 1-second utterances per session, less what played
    assert exit_code == 0


def test_offers_that_never_connect_are_limited_per_client_address(worker):
    server = worker("--max_session", "4", MAX_CONNECTING_PER_CLIENT="2", WEBRTC_CONNECT_TIMEOUT="60")

    async def scenario():
        stuck = []
        # Another loopback address: the worker sees a second client.
        other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        try:
            async with aiohttp.ClientSession(connector=other) as http:
                answers = [await never_connecting(http, server.url, stuck) for _ in range(3)]
            async with aiohttp.ClientSession() as http:
                viewer = await Viewer(server.url, decode_video=False).connect(http)
                health = requests.get(server.url + "/health", timeout=5).json()
                await viewer.close()
            return answers, health
        finally:
            for pc in stuck:
                await pc.close()

    answers, health = run(scenario())
    assert [status for status, _ in answers] == [200, 200, 429]
    assert answers[2][1] == {"code": -1, "msg": "127.0.0.2 already has 2 sessions still connecting "
                             "(MAX_CONNECTING_PER_CLIENT=2); try again when one connects, or after "
                             "WEBRTC_CONNECT_TIMEOUT (60 s) drops it"}
    assert health["sessions"] == 3    # the two stuck offers and the viewer that connected


# --- in process: the accounting behind the limits -------------------------------------------

def test_synthesis_stays_about_ahead_seconds_ahead_of_playback_and_every_sample_plays():
    from lipsync_worker.events import EventBus
    from lipsync_worker.session import Session, sentence
    from lipsync_worker.speech import AHEAD_SECONDS, SAMPLE_RATE, text_seconds
    from tts_services.client import LocalTTS

    tts = LocalTTS()
    text = LONG_TEXT[:1200]

    async def scenario():
        whole = []   # the samples of each chunk synthesis made

        async def counted():
            async for chunk in tts.stream(text):
                whole.append(len(chunk.pcm) // 2)
                yield chunk

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        session = Session(1, pc, None, EventBus())
        session.talk(sentence(text, counted()), "echo", text_seconds(text))
        reckoned = session.queued_seconds
        most = played = 0
        deadline = time.monotonic() + 60
        while session.speaking:
            assert time.monotonic() < deadline, "speech never ended"
            await asyncio.sleep(0.005)   # synthesis runs between the "ticks" of this fast playback
            most = max(most, session.speech.pending)
            played += min(SAMPLE_RATE // 2, session.speech.pending)
            session.speech.take(SAMPLE_RATE // 2)
        left = session.queued_seconds
        await pc.close()
        return whole, reckoned, most, played, left

    whole, reckoned, most, played, left = run(scenario())
    assert reckoned == text_seconds(text) == 120.0
    assert sum(whole) > 4 * AHEAD_SECONDS * SAMPLE_RATE       # far more than may be buffered
    assert most <= AHEAD_SECONDS * SAMPLE_RATE + max(whole)   # at most one chunk past the mark
    assert played == sum(whole)
    assert left == 0


def test_an_interrupt_empties_the_reckoned_queue_even_of_utterances_not_started():
    from lipsync_worker.events import EventBus
    from lipsync_worker.session import Session, sentence
    from lipsync_worker.speech import text_seconds
    from tts_services.client import LocalTTS

    tts = LocalTTS()

    async def scenario():
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        session = Session(1, pc, None, EventBus())
        for text in ("One two three.", "Four five six seven.", LONG_TEXT):
            session.talk(sentence(text, tts.stream(text)), "echo", text_seconds(text))
        queued = session.queued_seconds
        session.interrupt()
        await asyncio.sleep(0.1)
        left, speaking = session.queued_seconds, session.speaking
        await pc.close()
        return queued, left, speaking

    queued, left, speaking = run(scenario())
    assert queued == pytest.approx(1.4 + 2.0 + 200.0)
    assert (left, speaking) == (0, False)
