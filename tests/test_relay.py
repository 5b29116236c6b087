"""The manager relays a worker's signalling: LiveTalking's /offer, /human, /humanaudio,
/interrupt_talk and /is_speaking at /avatar/NAME/..., so a client needs only the manager's port.
A real aiortc viewer, a real worker, a real voice; plus /tts and /console/config."""
from __future__ import annotations

import asyncio
import io
import json
import time
import wave

import aiohttp
import requests

from conftest import run
from managers import make_avatar
from upstreams import tone
from viewer import Viewer, loud_after

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
                pcm = tone("x" * 30, 16000)
                buffer = io.BytesIO()
                with wave.open(buffer, "wb") as wav:
                    wav.setnchannels(1), wav.setsampwidth(2), wav.setframerate(16000), wav.writeframes(pcm)
                form = aiohttp.FormData()
                form.add_field("sessionid", str(viewer.sessionid))
                form.add_field("file", buffer.getvalue(), filename="tone.wav", content_type="audio/wav")
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
    status, body = relay("/avatar/broken/offer")
    assert (status, body["code"]) == (503, -1) and "broken is FAILED, not RUNNING" in body["msg"]

    assert m.start_avatar("demo_user_1", "demo").status_code == 200
    status, body = relay("/avatar/demo/offer", {"sdp": "not an sdp", "type": "offer"})
    assert status == 400 and body["code"] == -1              # the worker's own answer
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
