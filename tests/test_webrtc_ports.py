"""WEBRTC_PORT_RANGE: a worker's WebRTC host candidates bind only to the ports of the range
(lipsync_worker/udp_ports.py), and a malformed range stops the worker and the manager at start."""
import asyncio
import errno
import os
import socket
import subprocess
import sys

import aiohttp
import pytest

from conftest import ROOT, run
from contracts.settings import ConfigError, port_range
from harness.ports import free_port, free_port_block
from harness.viewer import Viewer
from lipsync_worker.udp_ports import bind_in_range

NOT_HERE = "198.19.255.254"   # an address of no interface of this machine


def free_udp_ports(width: int) -> range:
    """`width` consecutive UDP ports free now, below the ports the kernel picks for port 0 (which
    the viewers' own sockets get), so only the worker binds there."""
    base = free_port_block(width, socket.SOCK_DGRAM)
    return range(base, base + width)


# --- the setting ------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, ports", [("40000-40099", range(40000, 40100)), (" 5000-5000 ", range(5000, 5001)),
                                        ("", None), (" ", None)])
def test_a_range_is_read_as_its_ports(raw, ports):
    assert port_range({"WEBRTC_PORT_RANGE": raw}, "WEBRTC_PORT_RANGE") == ports
    assert port_range({}, "WEBRTC_PORT_RANGE") is None


@pytest.mark.parametrize("raw", ["40099-40000", "0-10", "abc", "40000", "40000-70000", "40000-", "-40000-40099"])
def test_a_malformed_range_is_refused_with_the_reason(raw):
    with pytest.raises(ConfigError) as refused:
        port_range({"WEBRTC_PORT_RANGE": raw}, "WEBRTC_PORT_RANGE")
    assert str(refused.value) == (f"WEBRTC_PORT_RANGE={raw!r} must be LOW-HIGH with 1024 <= LOW <= HIGH <= 65535, "
                                  "e.g. 40000-40099")


def test_a_malformed_range_stops_the_worker_with_the_reason(demo_source):
    result = subprocess.run([sys.executable, "-m", "lipsync_worker", "--avatar_id", "demo",
                             "--listenport", str(free_port())], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "AVATAR_DATA_DIR": str(demo_source.parent.parent),
                                 "WEBRTC_PORT_RANGE": "40000-70000"})
    assert result.returncode == 2, result.stderr
    assert "lipsync_worker: WEBRTC_PORT_RANGE='40000-70000' must be LOW-HIGH" in result.stderr


def test_a_malformed_range_stops_the_manager_before_any_worker(tmp_path):
    log_dir = tmp_path / "logs"
    env = {k: v for k, v in os.environ.items() if k not in ("API_TOKEN", "REDIS_URL")}
    env.update({"AVATAR_DATA_DIR": str(tmp_path / "data"), "LOG_DIR": str(log_dir),
                "AVATAR_MANAGER_PORT": str(free_port()), "WEBRTC_PORT_RANGE": "40000:40099"})
    result = subprocess.run([sys.executable, "-m", "avatar_manager"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result
    assert result.stderr.strip().splitlines() == [
        "avatar_manager: WEBRTC_PORT_RANGE='40000:40099' must be LOW-HIGH with 1024 <= LOW <= HIGH <= 65535, "
        "e.g. 40000-40099"]
    assert not log_dir.exists()   # nothing started, so no worker's log either


# --- the event loop's UDP binds -----------------------------------------------------------------

class Closing(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc) -> None:
        self.closed.set_result(None)   # the transport closes its socket as this returns


def test_endpoints_with_local_port_0_bind_inside_the_range_until_it_is_full():
    block = free_udp_ports(4)
    ports, fixed_port = block[:3], block[3]

    async def scenario():
        loop = asyncio.get_running_loop()
        bind_in_range(ports)
        opened = []

        async def endpoint(local_addr=None, remote_addr=None) -> int:
            transport, protocol = await loop.create_datagram_endpoint(Closing, local_addr, remote_addr)
            opened.append((transport, protocol))
            return transport.get_extra_info("sockname")[1]

        try:
            bound = [await endpoint(("127.0.0.1", 0)) for _ in ports]
            with pytest.raises(OSError) as full:
                await endpoint(("127.0.0.1", 0))
            # The range is full, so any of these would fail had they been bound inside it.
            fixed = await endpoint(("127.0.0.1", fixed_port))
            to_server = await endpoint(remote_addr=("127.0.0.1", ports[0]))
            from_port_0_to_server = await endpoint(("127.0.0.1", 0), ("127.0.0.1", ports[0]))
            # An error other than "in use" is raised as it is, not retried on the next port.
            with pytest.raises(OSError) as elsewhere:
                await endpoint((NOT_HERE, 0))
            return bound, full.value, fixed, to_server, from_port_0_to_server, elsewhere.value
        finally:
            for transport, protocol in opened:
                transport.close()
                await protocol.closed

    bound, full, fixed, to_server, from_port_0_to_server, elsewhere = run(scenario())
    assert sorted(bound) == list(ports)
    assert full.errno == errno.EADDRINUSE
    assert f"no free UDP port on 127.0.0.1 in WEBRTC_PORT_RANGE={ports[0]}-{ports[-1]}" in str(full)
    assert fixed == fixed_port
    assert to_server not in ports and from_port_0_to_server not in ports
    assert elsewhere.errno == errno.EADDRNOTAVAIL and "WEBRTC_PORT_RANGE" not in str(elsewhere)


def test_binds_start_at_a_random_port_of_the_range():
    ports = free_udp_ports(20)

    async def scenario():
        loop = asyncio.get_running_loop()
        bind_in_range(ports)
        taken = set()
        for _ in range(10):   # one at a time, each closed before the next: the whole range is free each time
            transport, protocol = await loop.create_datagram_endpoint(Closing, ("127.0.0.1", 0))
            taken.add(transport.get_extra_info("sockname")[1])
            transport.close()
            await protocol.closed
        return taken

    taken = run(scenario())
    assert taken <= set(ports) and len(taken) > 1   # all ten on one port: odds of 1 in 20**9


# --- a real worker and a real viewer ----------------------------------------------------------

def test_a_worker_offers_host_candidates_only_inside_the_range_and_streams(spawn, demo_source):
    ports = free_udp_ports(4)
    server = spawn([sys.executable, "-m", "lipsync_worker", "--model", "puppet", "--avatar_id", "demo",
                    "--listenport", "{port}"],
                   env={"AVATAR_DATA_DIR": str(demo_source.parent.parent),
                        "WEBRTC_PORT_RANGE": f"{ports[0]}-{ports[-1]}"})

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await Viewer(server.url, decode_video=False).connect(http)
            answer = viewer.pc.remoteDescription.sdp
            await asyncio.sleep(1)
            await viewer.close()
            return answer, viewer.received.video

    answer, video = run(scenario())
    # a=candidate:FOUNDATION COMPONENT udp PRIORITY ADDRESS PORT typ host
    candidates = [line.split() for line in answer.splitlines() if line.startswith("a=candidate:")]
    host_ports = [int(c[5]) for c in candidates if c[7] == "host"]
    assert host_ports and all(port in ports for port in host_ports), answer
    assert len(video) >= 10
    # The default --max_session 8 could need more ports than these 4.
    assert "WEBRTC_PORT_RANGE has 4 ports, fewer than --max_session 8" in server.log.read_text()
