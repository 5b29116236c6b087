"""The manager relays a worker's signalling: LiveTalking's /offer, /human, /humanaudio,
/interrupt_talk and /is_speaking at /avatar/NAME/..., so a client needs only the manager's port; a
relayed /offer starts the avatar and its session holds a connection while it lives; the worker's
event stream is relayed, bounded. A real aiortc viewer, a real worker, a real voice; plus /tts and
/console/config."""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
import requests

from avatar_manager import relay
from conftest import run
from harness.avatars import make_avatar
from harness.processes import wait_for
from harness.speech import wav
from harness.viewer import Viewer, loud_after
from upstreams import tone

LOUD_RMS = 300


async def until_speaking(viewer: Viewer, http: aiohttp.ClientSession, speaking: bool, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status, body = await viewer.post(http, "/is_speaking")
        assert status == 200, body
        if body["data"] is speaking:
            return
        assert time.monotonic() < deadline, f"is_speaking stayed {body['data']}"
        await asyncio.sleep(0.05)


def test_a_viewer_sees_hears_and_interrupts_through_the_manager_alone(fleet):
    m = fleet()
    started = m.start_avatar("demo_user_1", "demo").json()["data"]

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await Viewer(m.url + "/avatar/demo").connect(http)
            try:
                await asyncio.sleep(0.5)
                assert viewer.received.video and viewer.received.video[-1][1:] == (512, 512)
                said = time.monotonic()
                status, body = await viewer.post(http, "/human", text="Hello through the manager, "
                                                 "this is a long enough sentence to interrupt.", type="echo")
                assert (status, body) == (200, {"code": 0, "msg": "ok"})
                await until_speaking(viewer, http, True)
                await asyncio.sleep(1.0)
                assert loud_after(viewer.received.audio, said, LOUD_RMS), "no speech arrived"
                status, body = await viewer.post(http, "/interrupt_talk")
                assert (status, body) == (200, {"code": 0, "msg": "ok"})
                await until_speaking(viewer, http, False)

                # A joiner's own id names the instance too, as for every other route.
                async with http.post(m.url + "/avatar/demo_user_1/is_speaking",
                                     json={"sessionid": viewer.sessionid}) as response:
                    assert response.status == 200 and (await response.json())["code"] == 0

                # The worker's own errors come back as they are: status and body.
                async with http.post(m.url + "/avatar/demo/human",
                                     json={"sessionid": 999999, "text": "hi"}) as response:
                    assert response.status == 404
                    assert (await response.json())["msg"].startswith("no session 999999")
                status, body = await viewer.post(http, "/human", text="hi", type="chat")
                assert status == 400 and "LLM_URL" in body["msg"]

                # An audio file, multipart, relayed whole.
                form = aiohttp.FormData()
                form.add_field("sessionid", str(viewer.sessionid))
                form.add_field("file", wav(tone("x" * 30, 16000)), filename="tone.wav", content_type="audio/wav")
                async with http.post(m.url + "/avatar/demo/humanaudio", data=form) as response:
                    assert response.status == 200, await response.text()
                await until_speaking(viewer, http, True)
            finally:
                await viewer.close()

        # The worker's own URL keeps working for existing clients.
        async with aiohttp.ClientSession() as http:
            direct = await Viewer(started["webrtc_url"].removesuffix("/offer")).connect(http)
            await direct.close()

    run(scenario())


def test_relay_errors_are_clear_and_in_the_workers_format(fleet):
    m = fleet()
    make_avatar(m.data_dir, "broken")   # no frames: its worker exits at once, the instance is FAILED
    assert m.start_avatar("broken_user_1", "broken").status_code == 503
    offer = {"sdp": "v=0", "type": "offer"}

    def relay(path: str, body=offer, **kw) -> tuple[int, dict]:
        response = requests.post(m.url + path, json=body, timeout=30, **kw)
        return response.status_code, response.json()

    status, body = relay("/avatar/nobody/offer")
    assert (status, body["code"]) == (404, -1) and "nobody" in body["msg"]
    status, body = relay("/avatar/bad.name/offer")
    assert (status, body["code"]) == (400, -1)
    status, body = relay("/avatar/broken/offer")   # an offer starts it again, and says why it failed
    assert (status, body["code"], body["reason"]) == (503, -1, "start_failed")
    assert "avatar 'broken' failed to start" in body["msg"]
    status, body = relay("/avatar/broken/human", {"sessionid": 1, "text": "hi"})
    assert (status, body["code"]) == (503, -1) and "broken is FAILED, not RUNNING" in body["msg"]

    # A body that cannot be an offer is refused before anything starts.
    for bad in ({"sdp": "", "type": "offer"}, {"sdp": "v=0", "type": "answer"}, ["v=0"], {"type": "offer"}):
        status, body = relay("/avatar/demo/offer", bad)
        assert (status, body["code"]) == (400, -1), body
    assert m.info("demo") is None

    assert m.start_avatar("demo_user_1", "demo").status_code == 200
    status, body = relay("/avatar/demo/offer", {"sdp": "not an sdp", "type": "offer"})
    assert status == 400 and body["code"] == -1              # the worker's own answer
    assert m.info("demo")["connections"] == 1                # and the offer's connection given back
    big = {"sdp": "x" * 70_000, "type": "offer"}
    assert requests.post(m.url + "/avatar/demo/offer", json=big, timeout=30).status_code == 413
    assert requests.post(m.url + "/avatar/demo/shutdown", json={}, timeout=30).status_code == 404
    assert requests.get(m.url + "/avatar/demo/offer", timeout=30).status_code == 405


def test_voice_servers_and_the_console_settings_are_reported(fleet):
    ice = [{"urls": "turn:turn.example:3478", "username": "u", "credential": "p"}]
    m = fleet(ICE_SERVERS=json.dumps(ice), LLM_URL="http://127.0.0.1:9/v1")
    servers = {s["model"]: s for s in m.get("/tts").json()["data"]}
    assert set(servers) == {"espeak", "edgetts", "sovits", "cosyvoice", "tacotron"}
    assert not servers["espeak"]["running"] and servers["espeak"]["port"] == m.tts_port("espeak")

    assert m.start_avatar("demo_user_1", "demo").status_code == 200  # its voice starts first
    servers = {s["model"]: s for s in m.get("/tts").json()["data"]}
    assert servers["espeak"]["running"] and servers["espeak"]["uptime_seconds"] >= 0
    assert not servers["edgetts"]["running"]

    config = m.get("/console/config").json()["data"]
    assert config["chat"] is True and config["ice_servers"] == ice
    assert config["max_upload_bytes"] == 50 * 1024 * 1024 and "espeak" in config["tts_models"]


def connections(m, name: str = "demo") -> int | None:
    instance = m.info(name)
    return None if instance is None else instance["connections"]


async def eventually(check, timeout: float, what: str):
    """wait_for in a thread, so the event loop (and the viewers' media) keeps running meanwhile."""
    return await asyncio.to_thread(wait_for, check, timeout, what)


def test_a_relayed_offer_starts_the_avatar_and_its_session_holds_the_connection(fleet):
    """A LiveTalking client pointed at the relay needs nothing else: no /avatar/start, no disconnect."""
    m = fleet(IDLE_TIMEOUT="0", HEALTH_CHECK_INTERVAL="0.5")
    assert m.info("demo") is None

    async def scenario():
        async with aiohttp.ClientSession() as http:
            first = await Viewer(m.url + "/avatar/demo").connect(http)
            second = await Viewer(m.url + "/avatar/demo").connect(http)
            try:
                instance = m.info("demo")
                assert instance["state"] == "RUNNING" and instance["connections"] == 2
                await eventually(lambda: first.received.video and second.received.video, 10, "frames")
                await first.close()
                await eventually(lambda: connections(m) == 1, 20, "the closed session's connection back")
                status, body = await second.post(http, "/is_speaking")
                assert (status, body) == (200, {"code": 0, "data": False})
            finally:
                await second.close()

    run(scenario())
    # Its last session closed: no connection left, so with IDLE_TIMEOUT=0 it stops at once.
    wait_for(lambda: m.info("demo") is None, 30, "the instance to stop once no session holds it")


def test_the_sessions_of_a_stopped_instance_are_forgotten(fleet):
    """A relayed session's record holds a connection of its instance; once that instance is gone
    (stopped with the session still open), nothing is left to hold, and the record goes too."""
    from avatar_manager.relayed_sessions import KIND
    from avatar_manager.store.sqlite import SqliteStore

    m = fleet()
    store = SqliteStore(m.data_dir / "manager.sqlite3")

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await Viewer(m.url + "/avatar/demo").connect(http)
            try:
                assert [d["sessionid"] for d in store.list_docs(KIND)] == [viewer.sessionid]
                assert m.post("/avatar/stop", {"avatar_id": "demo"}).status_code == 200
                await eventually(lambda: not store.list_docs(KIND), 20, "the stopped instance's sessions forgotten")
            finally:
                await viewer.close()

    try:
        run(scenario())
    finally:
        store.close()


def test_an_offer_the_worker_refuses_gives_its_connection_back_at_once(fleet):
    m = fleet()
    config = m.data_dir / "avatars" / "demo" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "max_session": 1}))

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await Viewer(m.url + "/avatar/demo").connect(http)
            try:
                assert connections(m) == 1
                with pytest.raises(RuntimeError, match="429"):   # the worker's own refusal, relayed
                    await Viewer(m.url + "/avatar/demo").connect(http)
                assert connections(m) == 1   # at once: not left for the health checks to find
            finally:
                await viewer.close()

    run(scenario())


def test_an_offer_reaches_the_worker_with_how_speech_is_answered(manager):
    """What the console's microphone asks for (mode, barge_in) is in the offer's body, which the
    relay passes on as it came: it checks sdp and type only."""
    m = manager(start=False, WORKER_MODULE="tests.fake_worker")
    make_avatar(m.data_dir, "listener")
    m.start()
    offer = {"sdp": "v=0", "type": "offer", "mode": "echo", "barge_in": False}
    assert requests.post(m.url + "/avatar/listener/offer", json=offer, timeout=60).status_code == 404  # the fake's
    worker = f"http://127.0.0.1:{m.info('listener')['port']}"
    assert requests.get(worker + "/offers", timeout=5).json() == [offer]


def test_a_relayed_offer_to_a_full_fleet_is_refused_with_503(fleet):
    m = fleet("other", MAX_AVATARS="1")
    assert m.start_avatar("other_user_1", "other").status_code == 200   # held: nothing to evict
    response = requests.post(m.url + "/avatar/demo/offer", json={"sdp": "v=0", "type": "offer"}, timeout=60)
    body = response.json()
    assert (response.status_code, body["code"], body["reason"]) == (503, -1, "capacity")
    assert "MAX_AVATARS=1" in body["msg"]
    assert m.info("demo") is None and connections(m, "other") == 1


def read_events(stream: requests.Response, last: str) -> list[tuple[str, dict]]:
    """(name, data) of each event of a text/event-stream until one named `last` (the stream's read
    timeout bounds each wait)."""
    events, name = [], None
    for line in stream.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
            if name == last:
                return events
    raise AssertionError(f"the stream ended before {last!r}: {events}")


def test_the_workers_event_stream_is_relayed_with_chat_replies(fleet, upstream):
    llm = upstream("openai")
    m = fleet(LLM_URL=llm.url + "/v1", LLM_MODEL="tiny-chat")

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await Viewer(m.url + "/avatar/demo").connect(http)
            other = await Viewer(m.url + "/avatar/demo").connect(http)
            stream = await asyncio.to_thread(requests.get, m.url + "/avatar/demo/sse", timeout=(2, 20), stream=True,
                                             params={"sessionid": viewer.sessionid})
            try:
                assert stream.status_code == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
                reading = asyncio.ensure_future(asyncio.to_thread(read_events, stream, "reply_end"))
                await asyncio.sleep(0.3)   # subscribed before anything is said
                assert (await other.post(http, "/human", text="Not for that stream.", type="echo"))[0] == 200
                status, _ = await viewer.post(http, "/human", text="What can you do?", type="chat")
                assert status == 200
                events = await reading
            finally:
                stream.close()
                await viewer.close()
                await other.close()
        assert {data["sessionid"] for _, data in events} == {viewer.sessionid}   # only its own session
        names = [name for name, _ in events]
        assert "reply" in names and names[-1] == "reply_end"
        replied = "".join(data["delta"] for name, data in events if name == "reply")
        assert replied and replied == events[-1][1]["text"]
        assert all(isinstance(data["time"], float) for _, data in events)

    run(scenario())
    bad = requests.get(m.url + "/avatar/demo/sse", params={"sessionid": "-1"}, timeout=10)
    assert (bad.status_code, bad.json()["code"]) == (400, -1)
    assert requests.get(m.url + "/avatar/nobody/sse", timeout=10).status_code == 404


def test_relayed_streams_are_bounded_and_freed_when_their_clients_go(fleet):
    # One API process: its MAX_STREAMS are all there is. The workers (who inherit the environment)
    # send a keep-alive every second, at which a relay notices that its client went.
    m = fleet(WEB_CONCURRENCY="1", SSE_KEEPALIVE_SECONDS="1")
    assert m.start_avatar("demo_user_1", "demo").status_code == 200
    streams = []
    try:
        for _ in range(relay.MAX_STREAMS):
            streams.append(requests.get(m.url + "/avatar/demo/sse", stream=True, timeout=(2, 20)))
            assert streams[-1].status_code == 200
        refused = requests.get(m.url + "/avatar/demo/sse", timeout=10)
        assert (refused.status_code, refused.json()["code"]) == (503, -1)
        assert m.get("/avatar/info/demo").status_code == 200   # plain requests still find a thread
    finally:
        for stream in streams:
            stream.close()

    def opens() -> bool:
        with requests.get(m.url + "/avatar/demo/sse", stream=True, timeout=(2, 20)) as response:
            return response.status_code == 200
    wait_for(opens, 60, "a stream slot to be freed once its client went")
