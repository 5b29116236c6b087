"""The manager's API under clients that are slow, stalled or malicious, against a real manager
(`python -m avatar_manager`: supervisor + gunicorn) over raw sockets on loopback: stalled request
heads, idle keep-alive connections, broken and endless chunked bodies, a forged Host header."""
from __future__ import annotations

import http.client
import json
import resource
import socket

import pytest
import requests

from avatar_manager.settings import ConfigError, Settings
from harness.manager import Manager

STALLED = 500
PUBLIC_HOST = "avatars.example.test"
BODY_TIMEOUT = 2  # REQUEST_BODY_TIMEOUT for this manager, so a stalled body is given up soon


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    m = Manager(tmp_path_factory.mktemp("slow"), {"WORKER_MODULE": "tests.fake_worker", "PUBLIC_HOST": PUBLIC_HOST,
                                                  "REQUEST_BODY_TIMEOUT": str(BODY_TIMEOUT)})
    m.avatar("demo")
    m.avatar("other")
    with m:
        yield m


@pytest.fixture
def many_files():
    """Room for STALLED sockets in this process (a soft limit of 1024 is common)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = STALLED + 200
    if soft != resource.RLIM_INFINITY and soft < wanted:
        # Root (as CI runs) may raise the hard limit too; anyone else gets a failure that says why.
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard) if hard != resource.RLIM_INFINITY
                                                        else hard))
        except (ValueError, OSError) as exc:
            pytest.fail(f"this test needs {wanted} open files and the hard limit is {hard} ({exc}): "
                        f"raise it (ulimit -Hn) or run as root")
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def connect(m: Manager) -> socket.socket:
    return socket.create_connection(("127.0.0.1", m.port), timeout=30)


def exchange(m: Manager, data: bytes) -> tuple[int, dict, bool]:
    """Send raw bytes on a new connection; the status, the JSON body, and whether the server then
    closed the connection (it must, after a body it could not read to its end)."""
    with connect(m) as s:
        s.sendall(data)
        response = http.client.HTTPResponse(s)
        response.begin()
        body = json.loads(response.read())
        s.settimeout(2)  # a close comes at once; a connection kept open stays silent
        try:
            closed = s.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            closed = False
        return response.status, body, closed


def post_head(extra: str) -> bytes:
    return (f"POST /avatar/start HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}"
            f"\r\n").encode()


def chunked(body: bytes, size: int = 4096) -> bytes:
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def no_instances(m: Manager) -> bool:
    return m.get("/avatar/list?all=1", timeout=5).json()["data"] == []


# --- stalled clients -------------------------------------------------------------------------------

def test_api_answers_while_500_clients_stall_mid_header(manager, many_files):
    stalled: list[socket.socket] = []
    try:
        for _ in range(STALLED):
            s = connect(manager)
            stalled.append(s)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Stalled: ")  # and never the rest
        health = manager.get("/health", timeout=5)
        assert health.status_code == 200, health.text
        started = manager.post("/avatar/start", {"avatar_id": "demo"}, timeout=30)
        assert started.status_code == 200, started.text
        assert started.json()["data"]["state"] == "RUNNING"
        assert manager.get("/health", timeout=5).status_code == 200
        # They were being held open, not refused: none of them got an answer.
        for s in stalled[:20]:
            s.settimeout(0.01)
            with pytest.raises(TimeoutError):
                s.recv(1)
    finally:
        for s in stalled:
            s.close()
        manager.post("/avatar/stop", {"avatar_id": "demo"}, timeout=30)


def test_an_idle_keep_alive_connection_is_still_usable_after_6_s(manager):
    """Longer than the 5 s the API kept idle connections before, and than httpx keeps them."""
    connection = http.client.HTTPConnection("127.0.0.1", manager.port, timeout=30)
    try:
        connection.request("GET", "/health")
        first = connection.getresponse()
        assert first.status == 200 and first.getheader("Connection", "").lower() == "keep-alive"
        first.read()
        sock = connection.sock
        sock.settimeout(6)
        with pytest.raises(TimeoutError):  # 6 s idle: the server neither answers nor closes
            sock.recv(1)
        sock.settimeout(30)
        connection.request("GET", "/health")
        again = connection.getresponse()
        assert connection.sock is sock, "the client had to reconnect"
        assert again.status == 200 and json.loads(again.read())["status"] == "healthy"
    finally:
        connection.close()


# --- chunked and stalled bodies --------------------------------------------------------------------

def test_a_bad_chunk_size_is_a_400_and_closes_the_connection(manager):
    status, body, closed = exchange(manager, post_head("Transfer-Encoding: chunked\r\n")
                                    + b"zz\r\n{\"avatar_id\": \"demo\"}\r\n0\r\n\r\n")
    assert status == 400, body
    assert body["status"] == "error" and "chunk" in body["message"].lower(), body
    assert closed
    assert no_instances(manager)


def test_a_chunked_body_over_the_limit_is_a_413(manager):
    big = json.dumps({"avatar_id": "demo", "pad": "x" * (70 * 1024)}).encode()  # MAX_JSON_BYTES is 64 KiB
    status, body, _ = exchange(manager, post_head("Transfer-Encoding: chunked\r\n") + chunked(big))
    assert status == 413, body
    assert body["status"] == "error"
    assert no_instances(manager)


def test_a_chunked_body_within_the_limit_is_served(manager):
    status, body, closed = exchange(manager, post_head("Transfer-Encoding: chunked\r\n")
                                    + chunked(json.dumps({"avatar_id": "other"}).encode(), size=5))
    try:
        assert status == 200, body
        assert body["data"]["real_avatar_name"] == "other"
        assert not closed
    finally:
        manager.post("/avatar/stop", {"avatar_id": "other"}, timeout=30)


@pytest.mark.parametrize("head, sent", [
    ("Content-Length: 100\r\n", b'{"avatar_id": '),
    ("Transfer-Encoding: chunked\r\n", b'e\r\n{"avatar_id": \r\n'),
], ids=["content-length", "chunked"])
def test_a_body_that_stops_arriving_is_a_408_and_closes_the_connection(manager, head, sent):
    status, body, closed = exchange(manager, post_head(head) + sent)
    assert status == 408, body
    assert "REQUEST_BODY_TIMEOUT" in body["message"]
    assert closed
    assert no_instances(manager)


# --- the advertised address ------------------------------------------------------------------------

def test_a_forged_host_header_does_not_reach_webrtc_url(manager):
    forged = {"Host": "evil.example:6666"}
    started = requests.post(manager.url + "/avatar/start", json={"avatar_id": "demo"}, headers=forged, timeout=30)
    try:
        assert started.status_code == 200, started.text
        data = started.json()["data"]
        assert data["webrtc_url"] == f"http://{PUBLIC_HOST}:{data['port']}/offer"

        def get(path: str) -> dict:
            return requests.get(manager.url + path, headers=forged, timeout=5).json()["data"]
        urls = [get("/avatar/info/demo")["webrtc_url"], *(i["webrtc_url"] for i in get("/avatar/list")),
                *(i["webrtc_url"] for i in get("/status")["manager"]["avatars"])]
        assert urls == [data["webrtc_url"]] * 3
    finally:
        manager.post("/avatar/stop", {"avatar_id": "demo"}, timeout=30)


@pytest.mark.parametrize("env, public", [
    ({}, "127.0.0.1"),
    ({"AVATAR_MANAGER_HOST": "0.0.0.0"}, "127.0.0.1"),
    ({"AVATAR_MANAGER_HOST": "::"}, "127.0.0.1"),
    ({"AVATAR_MANAGER_HOST": "198.18.0.20"}, "198.18.0.20"),
    ({"AVATAR_MANAGER_HOST": "::1"}, "[::1]"),
    ({"AVATAR_MANAGER_HOST": "0.0.0.0", "PUBLIC_HOST": "avatars.example.com"}, "avatars.example.com"),
    ({"PUBLIC_HOST": "2001:db8::7"}, "[2001:db8::7]"),
])
def test_public_host_defaults_to_the_bound_address(env, public):
    assert Settings.from_env(env).public_host == public


@pytest.mark.parametrize("value", ["http://a.example", "a.example:80", "a.example/x", "0.0.0.0", "a b", "-a.example"])
def test_a_bad_public_host_stops_the_manager_at_start(value):
    with pytest.raises(ConfigError, match="PUBLIC_HOST"):
        Settings.from_env({"PUBLIC_HOST": value})
