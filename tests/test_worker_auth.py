"""With API_TOKEN set, the workers and TTS servers the manager starts require it too; the relay,
the supervisor's probes and a worker's TTS client send it. Real processes, real aiortc viewers."""
from __future__ import annotations

import asyncio
import sys
import time

import aiohttp
import psutil
import requests

from contracts.auth import authorized
from conftest import run, tts_argv
from harness.processes import wait_for
from harness.viewer import Viewer, loud_after

TOKEN = "s3cret-token"
WITH_TOKEN = {"Authorization": f"Bearer {TOKEN}"}
WRONG_TOKEN = {"Authorization": "Bearer not-the-token"}
ORIGIN = "http://app.test"
LOUD_RMS = 300
TEXT = "The token lets this sentence through."


def refused_by_worker(response: requests.Response) -> bool:
    return (response.status_code == 401 and response.json() == {
        "code": -1, "msg": "missing or wrong API token (Authorization: Bearer ...)"}
        and response.headers["WWW-Authenticate"] == "Bearer")


def tts_requests(tts_url: str) -> int:
    """How many speech requests the TTS server has handled, whatever their outcome."""
    metrics = requests.get(tts_url + "/metrics", headers=WITH_TOKEN, timeout=5).text
    return int(sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("tts_requests_total{")))


async def offer_of(viewer: Viewer) -> dict:
    viewer.pc.addTransceiver("video", direction="recvonly")
    viewer.pc.addTransceiver("audio", direction="recvonly")
    await viewer.pc.setLocalDescription(await viewer.pc.createOffer())
    return {"sdp": viewer.pc.localDescription.sdp, "type": "offer"}


async def say_and_hear(http, viewer: Viewer) -> None:
    """/human is taken, and its speech reaches the viewer within 10 s."""
    said = time.monotonic()
    status, body = await viewer.post(http, "/human", text=TEXT)
    assert (status, body) == (200, {"code": 0, "msg": "ok"})
    deadline = time.monotonic() + 10
    while loud_after(viewer.received.audio, said, LOUD_RMS) is None:
        assert time.monotonic() < deadline, "no speech arrived"
        await asyncio.sleep(0.1)

def test_a_worker_and_its_voice_server_answer_only_with_the_token(spawn, demo_source):
    tts = spawn(tts_argv("espeak"), env={"API_TOKEN": TOKEN})
    worker = spawn([sys.executable, "-m", "lipsync_worker", "--avatar_id", "demo", "--listenport", "{port}",
                    "--instance_token", "tok-auth", "--tts", "espeak", "--TTS_SERVER", tts.url],
                   env={"AVATAR_DATA_DIR": str(demo_source.parent.parent), "API_TOKEN": TOKEN,
                        "CORS_ORIGINS": ORIGIN})

    # The voice server: speech only with the token, in its own error format; nothing spoken without.
    for headers in ({}, WRONG_TOKEN):
        for path in ("/tts", "/tts/events"):
            answer = requests.post(tts.url + path, json={"text": "hello"}, headers=headers, timeout=5)
            assert answer.status_code == 401, (path, answer.text)
            assert answer.json() == {"status": "error",
                                     "message": "missing or wrong API token (Authorization: Bearer ...)"}
        assert requests.get(tts.url + "/voices", headers=headers, timeout=5).status_code == 401
        assert requests.get(tts.url + "/metrics", headers=headers, timeout=5).status_code == 401
    assert tts_requests(tts.url) == 0
    assert requests.get(tts.url + "/health", timeout=5).json()["status"] == "ok"
    spoken = requests.post(tts.url + "/tts", json={"text": TEXT}, headers=WITH_TOKEN, timeout=10)
    assert spoken.status_code == 200 and len(spoken.content) > 16000   # over half a second of PCM
    assert tts_requests(tts.url) == 1

    async def scenario():
        viewer = Viewer(worker.url)
        offer = await offer_of(viewer)
        async with aiohttp.ClientSession() as http:
            for headers in ({}, WRONG_TOKEN):
                async with http.post(worker.url + "/offer", json=offer, headers=headers) as answer:
                    assert answer.status == 401 and (await answer.json())["code"] == -1
        await viewer.pc.close()
        assert requests.get(worker.url + "/health", headers=WITH_TOKEN, timeout=5).json()["sessions"] == 0

        async with aiohttp.ClientSession(headers=WITH_TOKEN) as http:
            viewer = await Viewer(worker.url).connect(http)
            try:
                session = {"sessionid": viewer.sessionid}
                # Without the token nothing is said, asked or stopped, and no event stream opens.
                for path, body in (("/human", {**session, "text": TEXT}), ("/is_speaking", session),
                                   ("/interrupt_talk", session)):
                    answer = requests.post(worker.url + path, json=body, timeout=5)
                    assert refused_by_worker(answer), (path, answer.text)
                for path in ("/sse", "/metrics", f"/record/{viewer.sessionid}"):
                    assert refused_by_worker(requests.get(worker.url + path, timeout=5)), path
                await asyncio.sleep(1.0)
                assert tts_requests(tts.url) == 1
                assert loud_after(viewer.received.audio, 0, LOUD_RMS) is None

                await say_and_hear(http, viewer)
                status, body = await viewer.post(http, "/is_speaking")
                assert status == 200 and body["code"] == 0
            finally:
                await viewer.close()

    run(scenario())
    # The worker's voice came from the server, which it called with its own token.
    assert tts_requests(tts.url) == 2
    assert "offline voice" not in worker.log.read_text()


def test_what_stays_open_reveals_nothing(spawn, demo_source):
    worker = spawn([sys.executable, "-m", "lipsync_worker", "--avatar_id", "demo", "--listenport", "{port}",
                    "--instance_token", "tok-open"],
                   env={"AVATAR_DATA_DIR": str(demo_source.parent.parent), "API_TOKEN": TOKEN,
                        "CORS_ORIGINS": ORIGIN})
    assert requests.get(worker.url + "/health", timeout=5).json() == {"status": "ok", "ready": True}
    assert requests.get(worker.url + "/health", headers=WRONG_TOKEN, timeout=5).json() == {
        "status": "ok", "ready": True}
    # A header that is not even UTF-8 is a wrong token like any other, never a 5xx.
    assert refused_by_worker(requests.post(worker.url + "/is_speaking", json={"sessionid": 1}, timeout=5,
                                           headers={"Authorization": b"Bearer \xff\xfe"}))
    detail = requests.get(worker.url + "/health", headers=WITH_TOKEN, timeout=5).json()
    assert detail["instance_token"] == "tok-open" and detail["avatar"] == "demo"
    for page in ("/", "/index.html", "/webrtcapi.html"):
        assert requests.get(worker.url + page, timeout=5).text.startswith("<!doctype html>"), page
    # A browser's preflight carries no credentials: it is answered for the listed origin.
    preflight = requests.options(worker.url + "/human", timeout=5, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200 and preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    # ... and the refusal it then gets is readable by that page.
    refused = requests.post(worker.url + "/human", json={"sessionid": 1, "text": "hi"}, headers={"Origin": ORIGIN},
                            timeout=5)
    assert refused_by_worker(refused) and refused.headers["Access-Control-Allow-Origin"] == ORIGIN

    document = requests.get(worker.url + "/openapi.json", timeout=5).json()
    assert document["components"]["securitySchemes"] == {"token": {"type": "http", "scheme": "bearer"}}
    assert document["paths"]["/offer"]["post"]["security"] == [{"token": []}]
    assert "401" in document["paths"]["/offer"]["post"]["responses"]
    assert document["paths"]["/health"]["get"]["security"] == []
    assert "401" not in document["paths"]["/health"]["get"]["responses"]


def test_the_fleet_works_behind_the_token_and_nothing_gets_in_without_it(fleet):
    m = fleet(API_TOKEN=TOKEN, HEALTH_CHECK_INTERVAL="0.3", IDLE_TIMEOUT="60")
    started = m.start_avatar("demo_user_1", "demo").json()["data"]
    worker = f"http://127.0.0.1:{started['port']}"
    tts = f"http://127.0.0.1:{m.tts_port('espeak')}"
    assert psutil.Process(started["pid"]).environ()["API_TOKEN"] == TOKEN

    # Straight to the worker or its voice server without the token: refused, nothing opened.
    async def knock():
        viewer = Viewer(worker)
        offer = await offer_of(viewer)
        await viewer.pc.close()
        return requests.post(worker + "/offer", json=offer, timeout=10)

    assert refused_by_worker(run(knock()))
    for path in ("/human", "/is_speaking"):
        assert refused_by_worker(requests.post(worker + path, json={"sessionid": 1, "text": "hi"}, timeout=5))
    assert requests.post(tts + "/tts", json={"text": "hi"}, timeout=5).status_code == 401
    assert requests.get(worker + "/health", timeout=5).json().keys() == {"status", "ready"}
    assert requests.get(worker + "/health", headers=WITH_TOKEN, timeout=5).json()["sessions"] == 0

    # Through the relay, with the token shown to the manager: seen, heard, answered.
    async def scenario():
        async with aiohttp.ClientSession(headers=m.headers) as http:
            viewer = await Viewer(m.url + "/avatar/demo").connect(http)
            try:
                await say_and_hear(http, viewer)
                assert viewer.received.video and viewer.received.video[-1][1:] == (512, 512)
                status, body = await viewer.post(http, "/is_speaking")
                assert status == 200 and body["code"] == 0
                assert m.info("demo")["connections"] == 2   # the backend's start and the relayed session
            finally:
                await viewer.close()
        # The supervisor asks the worker (with the token) whether the session lives: it is gone,
        # so its connection comes back.
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: wait_for(lambda: m.info("demo")["connections"] == 1, 20, "the relayed connection back"))

    run(scenario())
    # The worker's voice came from the TTS server the manager started, called with the token.
    assert "offline voice" not in (m.log_dir / f"avatar_{started['avatar_id']}_{started['port']}.log").read_text()
    # The supervisor's probes got through all along (the start waited for one to name the
    # instance token, and the connection above came back from one): same process, never restarted.
    instance = m.info("demo")
    assert instance["state"] == "RUNNING" and instance["pid"] == started["pid"] and instance["restarts"] == 0
    assert "missed health check" not in (m.log_dir / "manager.log").read_text()


def test_the_check_itself():
    assert authorized(None, None) and authorized("Bearer anything", None)   # no token: open
    assert authorized(f"Bearer {TOKEN}", TOKEN)
    for given in (None, "", TOKEN, f"bearer {TOKEN}", f"Bearer {TOKEN} ", f"Bearer {TOKEN[:-1]}", "Bearer \udcff"):
        assert not authorized(given, TOKEN), given
