"""The worker's HTTP surface as a browser, a LiveTalking client or a fuzzer meets it: CORS, the
request log, the pages, the event stream, hostile bodies and the OpenAPI document. Real worker
processes, real aiortc viewers, real HTTP clients over loopback."""
import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import pytest
import requests

from conftest import ROOT, run
from harness.ports import free_port
from harness.viewer import Viewer
from upstreams import CHAT_REPLY

ORIGIN = "https://app.example.com"
LONG_TEXT = ("This sentence is long enough to keep the avatar talking for a good while, so that it can be "
             "interrupted in the middle of it without any doubt about whether it was still speaking.")


@pytest.fixture
def worker(spawn, demo_source):
    """worker(**env) -> a started worker serving the prepared demo avatar."""
    def start(**env: str):
        return spawn([sys.executable, "-m", "lipsync_worker", "--avatar_id", "demo", "--listenport", "{port}",
                      "--instance_token", "tok-http"],
                     env={"AVATAR_DATA_DIR": str(demo_source.parent.parent), "CORS_ORIGINS": "", "API_TOKEN": "",
                          **env})
    return start


def preflight(url: str, path: str, origin: str, headers: str = "content-type", method: str = "POST") -> requests.Response:
    return requests.options(url + path, timeout=5, headers={
        "Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers})


# --- CORS ---------------------------------------------------------------------------------

def test_cors_star_allows_any_origin_on_every_route(worker):
    server = worker(CORS_ORIGINS="*")
    paths = requests.get(server.url + "/openapi.json", timeout=5).json()["paths"]
    for path, operations in paths.items():
        method = next(iter(operations)).upper()
        concrete = re.sub(r"\{\w+\}", "1", path)
        answer = preflight(server.url, concrete, "http://anywhere.example", "content-type, authorization", method)
        assert answer.status_code == 200, (path, answer.text)
        assert answer.headers["Access-Control-Allow-Origin"] == "http://anywhere.example"
        assert {h.strip().lower() for h in answer.headers["Access-Control-Allow-Headers"].split(",")} == \
            {"content-type", "authorization"}
    simple = requests.post(server.url + "/is_speaking", json={"sessionid": 7}, timeout=5,
                           headers={"Origin": "http://anywhere.example"})
    assert simple.status_code == 404
    assert simple.headers["Access-Control-Allow-Origin"] == "http://anywhere.example"
    # A header a page has no reason to send is not allowed.
    assert preflight(server.url, "/human", "http://anywhere.example", "x-custom").status_code == 403


def test_cors_allows_a_listed_origin_only(worker):
    server = worker(CORS_ORIGINS=f"{ORIGIN}, http://localhost:3000/")
    for origin in (ORIGIN, "http://localhost:3000"):
        answer = preflight(server.url, "/human", origin)
        assert answer.status_code == 200 and answer.headers["Access-Control-Allow-Origin"] == origin
    refused = preflight(server.url, "/human", "https://evil.example")
    assert refused.status_code == 403 and "Access-Control-Allow-Origin" not in refused.headers
    health = requests.get(server.url + "/health", headers={"Origin": ORIGIN}, timeout=5)
    assert health.headers["Access-Control-Allow-Origin"] == ORIGIN
    other = requests.get(server.url + "/health", headers={"Origin": "https://evil.example"}, timeout=5)
    assert other.status_code == 200 and "Access-Control-Allow-Origin" not in other.headers


@pytest.mark.parametrize("env", [{"CORS_ORIGINS": "none"}, {"API_TOKEN": "secret"}])
def test_cors_with_no_origin_configured_sends_no_allow_origin(worker, env):
    server = worker(**env)
    refused = preflight(server.url, "/human", ORIGIN)
    assert refused.status_code == 403 and "Access-Control-Allow-Origin" not in refused.headers
    simple = requests.post(server.url + "/is_speaking", json={"sessionid": 7}, headers={"Origin": ORIGIN}, timeout=5)
    assert simple.status_code == (401 if "API_TOKEN" in env else 404)   # 401: no token sent
    assert "Access-Control-Allow-Origin" not in simple.headers


def test_a_malformed_cors_setting_stops_the_worker_with_a_reason(demo_source):
    result = subprocess.run([sys.executable, "-m", "lipsync_worker", "--avatar_id", "demo",
                             "--listenport", str(free_port())], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={"AVATAR_DATA_DIR": str(demo_source.parent.parent), "CORS_ORIGINS": "app.example.com"})
    assert result.returncode == 2 and "is not an origin like https://" in result.stderr


# --- the request log and the pages ----------------------------------------------------------

def test_every_request_leaves_one_log_line(worker):
    server = worker()
    requests.post(server.url + "/human", json={"sessionid": 424242, "text": "hi"}, timeout=5)
    requests.post(server.url + "/interrupt_talk", json={"sessionid": "31337"}, timeout=5)
    requests.post(server.url + "/is_speaking", data=b"not json", timeout=5)
    requests.get(server.url + "/nowhere%0Afake", timeout=5)
    for _ in range(3):
        requests.get(server.url + "/health", timeout=5)
    deadline = time.monotonic() + 5
    while "GET /nowhere" not in server.log.read_text():
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.05)
    log = server.log.read_text()
    assert re.search(r"POST /human 404 session=424242 \d+\.\d ms", log), log
    assert len(re.findall(r"POST /human ", log)) == 1, log
    assert re.search(r"POST /interrupt_talk 404 session=31337 \d+\.\d ms", log), log
    assert re.search(r"POST /is_speaking 400 session=- \d+\.\d ms", log), log
    # The path is logged as sent, percent-encoded: a client cannot forge a second log line.
    assert re.search(r"GET /nowhere%0Afake 404 session=- \d+\.\d ms", log), log
    # Health probes are logged at DEBUG, below the worker's INFO level.
    assert "GET /health" not in log


def test_livetalking_page_names_serve_the_worker_page(worker):
    server = worker()
    page = requests.get(server.url + "/", timeout=5)
    assert page.status_code == 200 and page.text.startswith("<!doctype html>")
    for path in ("/index.html", "/webrtcapi.html"):
        answer = requests.get(server.url + path, timeout=5)
        assert answer.status_code == 200 and answer.text == page.text
        assert answer.headers["Content-Type"].startswith("text/html")


# --- hostile bodies ------------------------------------------------------------------------

JSON_ROUTES = ("/offer", "/human", "/is_speaking", "/interrupt_talk")


def raw_request(port: int, head: bytes, pieces: list[bytes], wait: float = 10) -> tuple[int, bytes]:
    """Send a request in separate writes (the server reads the body while it arrives); the status
    line's code and the body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(head)
        for piece in pieces:
            time.sleep(0.1)
            s.sendall(piece)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < content_length(answer):
            data = s.recv(65536)
            if not data:
                break
            answer += data
    return int(answer.split(b" ", 2)[1]), answer.split(b"\r\n\r\n", 1)[1]


def content_length(answer: bytes) -> int:
    found = re.search(rb"(?i)content-length: (\d+)", answer)
    return int(found.group(1)) if found else 0


def test_deeply_nested_json_gets_400_on_every_json_route(worker):
    server = worker()
    for path in JSON_ROUTES:
        for body in ("[" * 50000, '{"sessionid": ' + "[" * 30000 + "]" * 30000 + "}"):
            answer = requests.post(server.url + path, data=body, headers={"Content-Type": "application/json"},
                                   timeout=10)
            assert answer.status_code == 400, (path, answer.text)
            assert answer.json()["code"] == -1
    assert requests.get(server.url + "/health", timeout=5).json()["sessions"] == 0


def test_chunked_bodies_are_read_within_the_limit(worker):
    server = worker()

    def chunks(total: int):
        for _ in range(total // 1024):
            yield b" " * 1024

    for path in JSON_ROUTES:
        big = requests.post(server.url + path, data=chunks(200 * 1024), timeout=10)
        assert big.status_code == 413 and "larger than 65536 bytes" in big.json()["msg"], (path, big.text)
    fine = requests.post(server.url + "/human", data=iter([b'{"sessionid": 5,', b' "text": "hi"}']), timeout=10)
    assert fine.status_code == 404 and fine.json()["msg"].startswith("no session 5")
    # A chunk size that is not hexadecimal: refused at once when it comes with the headers; when
    # it comes after the handler started reading, aiohttp never ends that body, and the read times out.
    head = b"POST /human HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
    assert raw_request(server.port, head + b"zz\r\nabc\r\n0\r\n\r\n", [])[0] == 400
    status, body = raw_request(server.port, head, [b"5\r\n{\"ses\r\n", b"zz\r\nabc\r\n0\r\n\r\n"], wait=30)
    assert status == 408 and json.loads(body)["msg"] == "the body stopped arriving for 10 s", body
    # An upload form above the limit, chunked.
    form = (b"--xx\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n"
            + b"\0" * (21 * 1024 * 1024) + b"\r\n--xx--\r\n")
    big_form = requests.post(server.url + "/humanaudio", data=iter([form[i:i + (1 << 20)] for i in range(0, len(form), 1 << 20)]),
                             headers={"Content-Type": "multipart/form-data; boundary=xx"}, timeout=30)
    assert big_form.status_code == 413, big_form.text
    assert requests.get(server.url + "/health", timeout=5).json()["sessions"] == 0


def test_bodies_are_checked_against_their_schemas(worker):
    server = worker()
    cases = [
        ("/human", {"sessionid": 1.5, "text": "hi"}, 400, "sessionid: must be the number /offer returned"),
        ("/human", {"sessionid": True, "text": "hi"}, 400, "sessionid: must be the number /offer returned"),
        ("/human", {"sessionid": "12", "text": "hi"}, 404, "no session 12"),
        ("/human", {"sessionid": 12, "text": "hi", "interrupt": "perhaps"}, 400, "interrupt: Not a valid boolean"),
        ("/human", {"sessionid": 12}, 400, "text: Missing data for required field"),
        ("/offer", {"sdp": "", "type": "offer"}, 400, "sdp: must be a non-empty SDP offer"),
        ("/offer", {"sdp": "\0", "type": "offer"}, 400, "invalid SDP offer"),
        ("/is_speaking", {"sessionid": None}, 400, "sessionid: Field may not be null"),
    ]
    for path, body, status, message in cases:
        answer = requests.post(server.url + path, json=body, timeout=5)
        assert answer.status_code == status and message in answer.json()["msg"], (path, body, answer.text)
    assert requests.post(server.url + "/human", data="1e999", timeout=5).status_code == 400
    form = requests.post(server.url + "/humanaudio", data={"sessionid": "12", "file": "not a file"}, timeout=5)
    assert form.status_code == 404  # no session 12; a text "file" would be refused once one exists
    assert requests.post(server.url + "/humanaudio", files={"file": ("a.wav", b"x")}, timeout=5).json()["msg"] == \
        "sessionid: Missing data for required field."


# --- OpenAPI --------------------------------------------------------------------------------

def test_openapi_document_is_valid_and_lists_every_route(worker):
    from schemathesis.specs.openapi.definitions import OPENAPI_30_VALIDATOR

    server = worker()
    document = requests.get(server.url + "/openapi.json", timeout=5).json()
    OPENAPI_30_VALIDATOR.validate(document)
    operations = {(path, method) for path, item in document["paths"].items() for method in item}
    assert operations >= {
        ("/offer", "post"), ("/human", "post"), ("/humanaudio", "post"), ("/interrupt_talk", "post"),
        ("/is_speaking", "post"), ("/health", "get"), ("/metrics", "get"), ("/sse", "get"), ("/", "get"),
        ("/index.html", "get"), ("/webrtcapi.html", "get"), ("/openapi.json", "get")}
    human = document["paths"]["/human"]["post"]
    assert human["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Human"}
    assert {"200", "400", "404", "413"} <= set(human["responses"])
    assert "multipart/form-data" in document["paths"]["/humanaudio"]["post"]["requestBody"]["content"]
    assert document["components"]["schemas"]["Human"]["required"] == ["sessionid", "text"]
    # What the worker answers conforms to what the document says.
    health_schema = document["components"]["schemas"]["Health"]
    health = set(requests.get(server.url + "/health", timeout=5).json())
    assert health == set(health_schema["properties"])   # no API token: every field, to anyone
    assert set(health_schema["required"]) == {"status", "ready"}   # what a caller without the token gets


# --- the event stream -----------------------------------------------------------------------

class EventStream:
    """A reader of /sse that keeps every event (and comment) it has read, in order."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.events: list[tuple[str, dict]] = []
        self.comments: list[str] = []
        self.ended = asyncio.Event()
        self.status: int | None = None
        self.headers = None
        self._task: asyncio.Task | None = None

    async def open(self) -> "EventStream":
        opened = asyncio.Event()
        self._task = asyncio.create_task(self._read(opened))
        await asyncio.wait_for(opened.wait(), 10)
        return self

    async def _read(self, opened: asyncio.Event) -> None:
        try:
            async with self.http.get(self.url, timeout=aiohttp.ClientTimeout(total=120)) as response:
                self.status, self.headers = response.status, response.headers
                opened.set()
                name = None
                async for raw in response.content:
                    line = raw.decode().rstrip("\n")
                    if line.startswith(":"):
                        self.comments.append(line)
                    elif line.startswith("event: "):
                        name = line[len("event: "):]
                    elif line.startswith("data: "):
                        self.events.append((name, json.loads(line[len("data: "):])))
        finally:
            opened.set()
            self.ended.set()

    def of(self, sessionid: int) -> list[tuple[str, dict]]:
        return [(name, data) for name, data in self.events if data["sessionid"] == sessionid]

    async def until(self, sessionid: int, name: str, count: int = 1, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while sum(n == name for n, _ in self.of(sessionid)) < count:
            assert time.monotonic() < deadline, f"no {name} (x{count}) within {timeout} s: {self.of(sessionid)}"
            assert not self.ended.is_set(), f"stream ended before {name}: {self.of(sessionid)}"
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def names(events: list[tuple[str, dict]]) -> list[str]:
    return [name for name, _ in events]


def test_sse_tells_each_utterance_in_order(worker, upstream):
    llm = upstream("openai")
    server = worker(LLM_URL=llm.url + "/v1", LLM_MODEL="tiny-chat", SSE_KEEPALIVE_SECONDS="1")

    async def scenario():
        async with aiohttp.ClientSession() as http:
            stream = await EventStream(http, server.url + "/sse").open()
            assert stream.status == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
            viewer = await Viewer(server.url).connect(http)
            sid = viewer.sessionid
            await stream.until(sid, "connected")

            # An echo, played to its end.
            assert (await viewer.post(http, "/human", text="Hello there.", type="echo"))[0] == 200
            await stream.until(sid, "speaking_ended")
            echo = stream.of(sid)

            # An utterance interrupted while it plays.
            assert (await viewer.post(http, "/human", text=LONG_TEXT, type="echo"))[0] == 200
            await stream.until(sid, "text", count=2)
            assert (await viewer.post(http, "/interrupt_talk"))[0] == 200
            await stream.until(sid, "speaking_ended", count=2)
            interrupted = stream.of(sid)[len(echo):]

            # A chat turn: the reply streams, then is spoken sentence by sentence.
            assert (await viewer.post(http, "/human", text="Who are you?", type="chat"))[0] == 200
            await stream.until(sid, "speaking_ended", count=3)
            chat = stream.of(sid)[len(echo) + len(interrupted):]

            # A stream of this session only ends with the session.
            own = await EventStream(http, f"{server.url}/sse?sessionid={sid}").open()
            await asyncio.sleep(1.5)  # an idle second: a keep-alive comes
            await viewer.close()
            await asyncio.wait_for(own.ended.wait(), 15)
            await stream.until(sid, "closed")
            await stream.close()
            return stream, own, sid, echo, interrupted, chat

    stream, own, sid, echo, interrupted, chat = run(scenario())
    assert echo == [("connected", {"sessionid": sid, "time": echo[0][1]["time"]}),
                    ("speaking_started", {"sessionid": sid, "time": echo[1][1]["time"]}),
                    ("text", {"sessionid": sid, "time": echo[2][1]["time"], "kind": "echo", "text": "Hello there."}),
                    ("speaking_ended", {"sessionid": sid, "time": echo[3][1]["time"], "interrupted": False})]
    assert echo[0][1]["time"] <= echo[1][1]["time"] <= echo[2][1]["time"] <= echo[3][1]["time"]
    assert isinstance(echo[0][1]["time"], float) and abs(echo[0][1]["time"] - time.time()) < 300

    assert names(interrupted) == ["speaking_started", "text", "speaking_ended"]
    assert interrupted[1][1]["text"] == LONG_TEXT
    assert interrupted[2][1]["interrupted"] is True

    said = [data["text"] for name, data in chat if name == "text"]
    assert said == ["Hello from the model.", "This is my second sentence!"]
    assert all(data["kind"] == "chat" for name, data in chat if name == "text")
    assert "".join(data["delta"] for name, data in chat if name == "reply") == CHAT_REPLY
    order = names(chat)
    assert order[0] == "reply" and order[-1] == "speaking_ended" and chat[-1][1]["interrupted"] is False
    assert order.count("speaking_started") == 1 and order.count("reply_end") == 1
    assert [data for name, data in chat if name == "reply_end"][0]["text"] == CHAT_REPLY
    assert order.index("speaking_started") < order.index("text")
    last_reply = max(i for i, name in enumerate(order) if name == "reply")
    assert last_reply < order.index("reply_end") < len(order) - 1
    assert last_reply < max(i for i, name in enumerate(order) if name == "text")

    assert names(own.events)[-1] == "closed" and own.events[-1][1] == {
        "sessionid": sid, "time": own.events[-1][1]["time"], "reason": "peer closed"}
    assert {data["sessionid"] for _, data in own.events} == {sid}
    assert ": keep-alive" in own.comments and len(own.comments) >= 2
    assert names(stream.of(sid))[-1] == "closed"


def test_sse_refuses_a_bad_or_unknown_session(worker):
    server = worker()
    bad = requests.get(server.url + "/sse?sessionid=abc", timeout=5)
    assert bad.status_code == 400 and bad.json()["msg"] == "sessionid: must be the number /offer returned"
    unknown = requests.get(server.url + "/sse?sessionid=123", timeout=5)
    assert unknown.status_code == 404 and unknown.json()["code"] == -1


def test_a_worker_stops_promptly_with_event_readers_connected(worker):
    server = worker()

    async def scenario():
        async with aiohttp.ClientSession() as http:
            streams = [await EventStream(http, server.url + "/sse").open() for _ in range(3)]
            viewer = await Viewer(server.url).connect(http)
            await streams[0].until(viewer.sessionid, "connected")
            server.proc.send_signal(signal.SIGTERM)
            for stream in streams:
                await asyncio.wait_for(stream.ended.wait(), 10)
            exit_code = await asyncio.to_thread(server.proc.wait, 10)
            await viewer.close()
            return streams, viewer.sessionid, exit_code

    streams, sid, exit_code = run(scenario())
    assert exit_code == 0
    for stream in streams:
        assert stream.of(sid)[-1][0] == "closed" and stream.of(sid)[-1][1]["reason"] == "worker stopping"


def test_a_reader_that_falls_behind_is_cut_off_and_the_others_are_not():
    from lipsync_worker.events import EventBus

    async def scenario():
        bus = EventBus(queue_events=4)
        slow, keen, other = bus.subscribe(), bus.subscribe(), bus.subscribe(sessionid=2)
        got = []
        for i in range(10):
            bus.publish("text", 1, text=str(i))
            got.append((await keen.get()).data["text"])
        assert await slow.get() is None                 # its stream is over, its backlog dropped
        assert len(bus) == 2 and got == [str(i) for i in range(10)]
        bus.publish("closed", 2, reason="expired")
        bus.close()
        assert (await other.get()).encode().startswith(b'event: closed\ndata: {"sessionid": 2, "time": ')
        assert (await keen.get()).name == "closed"
        assert await other.get() is None and await keen.get() is None
        assert await bus.subscribe().get() is None      # a closed bus ends new readers at once

    run(scenario())
