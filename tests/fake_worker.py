"""A stand-in lip-sync worker for fault injection: the manager runs it with WORKER_MODULE=tests.fake_worker.

It takes the worker's flags and serves /health with the instance token, like the real one, and
misbehaves as the avatar's config.json asks: "fault": one of, or a list of,
  crash            exit with code 3 before listening
  crash_after:S    serve, then exit with code 4 after S seconds
  freeze_after:S   serve, then stop answering (but keep the port) after S seconds
  hang             never listen
  wrong_token      answer /health with another token
  ignore_term      ignore SIGTERM
  fork:N           start N grandchildren that sleep
  gpu_mb:MB        take MB of memory on its GPU in the fake NVML (tests/fake_nvml) while it lives
  slow:S           wait S seconds before listening
  unreachable      answer /offer with a real SDP answer whose every candidate is a loopback UDP
                   port that reads and never answers: what a browser sees when the network
                   between it and the worker drops UDP (its checks go there and die, and no
                   packet leaves the machine); /health counts what arrived ("dropped_datagrams")
/health also reports its argv and CUDA_VISIBLE_DEVICES, so tests can check how it was started, and
"sessions" from config.json, read at every request (live WebRTC sessions, as the real worker
counts them; default 0), so a test can open and close sessions by editing it. GET /offers lists
the bodies of the offers it was sent, as they came, so a test can check what reached it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from lipsync_worker import fence


class BlackHole:
    """A loopback UDP port that reads every datagram and answers none."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        threading.Thread(target=self._drop, daemon=True).start()

    def _drop(self) -> None:
        while True:
            self.sock.recv(65536)
            self.received += 1


async def unreachable_answer(offer: dict, hole: BlackHole) -> dict:
    """A real answer from aiortc with every candidate moved to the black hole: the browser's ICE
    checks go there and get no reply."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type=offer["type"]))
    await pc.setLocalDescription(await pc.createAnswer())
    sdp = re.sub(r"(a=candidate:\S+ \d+ \w+ \d+ )\S+ \d+( typ)", rf"\g<1>127.0.0.1 {hole.port}\2",
                 pc.localDescription.sdp)
    sdp = re.sub(r"c=IN IP4 \S+", "c=IN IP4 127.0.0.1", sdp)
    await pc.close()
    return {"sdp": sdp, "type": "answer"}


class Server(ThreadingHTTPServer):
    def server_bind(self) -> None:
        # HTTPServer's own asks DNS for the address's name (socket.getfqdn): on a host without a
        # reachable resolver (a test's network namespace) that waits 10 s before listening.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--avatar_id", required=True)
    parser.add_argument("--listenport", type=int, required=True)
    args, _ = parser.parse_known_args()
    config_file = Path(os.environ["AVATAR_DATA_DIR"]) / "avatars" / args.avatar_id / "config.json"
    config = json.loads(config_file.read_text())
    faults = config.get("fault") or []
    faults = [faults] if isinstance(faults, str) else faults
    token = os.environ["INSTANCE_TOKEN"]
    children = []
    frozen = threading.Event()
    for fault in faults:
        name, _, value = fault.partition(":")
        if name == "crash":
            print("fake worker: crashing at start as asked", file=sys.stderr, flush=True)
            sys.exit(3)
        if name == "hang":
            print("fake worker: hanging as asked", file=sys.stderr, flush=True)
            while True:
                time.sleep(60)
        if name == "wrong_token":
            token = "not-" + token
        if name == "ignore_term":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if name == "fork":
            children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
                        for _ in range(int(value))]
        if name == "slow":
            time.sleep(float(value))
        if name == "gpu_mb":
            folder = Path(os.environ["FAKE_NVML"] + ".used")
            folder.mkdir(exist_ok=True)
            (folder / str(os.getpid())).write_text(f"{os.environ['CUDA_VISIBLE_DEVICES']} {value}")
        if name == "crash_after":
            threading.Timer(float(value), lambda: os._exit(4)).start()
        if name == "freeze_after":
            threading.Timer(float(value), frozen.set).start()

    hole = BlackHole() if "unreachable" in faults else None
    offers: list[dict] = []
    health = {"status": "ok", "instance_token": token, "pid": os.getpid(), "avatar": args.avatar_id,
              "argv": sys.argv[1:], "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "children": [c.pid for c in children]}

    class Handler(BaseHTTPRequestHandler):
        def reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if frozen.is_set():
                time.sleep(3600)
            if self.path == "/offers":
                return self.reply(200, json.dumps(offers).encode())
            if self.path != "/health":
                return self.reply(404, b"{}")
            sessions = int(json.loads(config_file.read_text()).get("sessions", 0))
            dropped = {"dropped_datagrams": hole.received} if hole else {}
            self.reply(200, json.dumps({**health, "sessions": sessions, **dropped}).encode())

        def do_POST(self):
            if self.path != "/offer":
                return self.reply(404, b"{}")
            offer = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            offers.append(offer)
            if hole is None:
                return self.reply(404, b"{}")
            self.reply(200, json.dumps({**asyncio.run(unreachable_answer(offer, hole)), "sessionid": 1}).encode())

        def log_message(self, *args):
            pass

    fence.from_env()  # the worker's own fencing, as the real one does it
    server = Server((os.environ.get("WORKER_HOST", "127.0.0.1"), args.listenport), Handler)
    print(f"fake worker: {args.avatar_id} on port {args.listenport}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
