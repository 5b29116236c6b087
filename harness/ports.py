"""Free ports for the servers tests and benchmarks start, and waiting for one to answer."""
from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free(port: int, kind: socket.SocketKind) -> bool:
    """TCP: free on loopback. UDP: free on every address (a wildcard bind, IPv6 and IPv4 at once
    where it can), as a worker's WebRTC candidates bind it."""
    if kind == socket.SOCK_STREAM:
        family, address = socket.AF_INET, "127.0.0.1"
    else:
        dual = socket.has_dualstack_ipv6()
        family, address = (socket.AF_INET6, "::") if dual else (socket.AF_INET, "0.0.0.0")
    with socket.socket(family, kind) as s:
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_block(width: int, kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """The first of `width` consecutive ports (TCP, or `kind`) free now, below the kernel's range
    for ports it picks itself (outgoing connections, binds to port 0): one of those could take a
    worker's port between its lease and its bind."""
    for _ in range(200):
        base = random.randrange(10000, _ephemeral_low() - width)
        if all(_free(p, kind) for p in range(base, base + width)):
            return base
    raise RuntimeError(f"no block of {width} free ports")


def manager_ports(max_avatars: int) -> dict[str, str]:
    """AVATAR_MANAGER_PORT, AVATAR_BASE_PORT and every TTS_PORT_* and ASR_PORT_* for one manager,
    from one free block, so they cannot overlap one another (separate blocks could) nor another
    manager's."""
    from contracts.ports import ASR_PORTS, TTS_PORTS

    servers = [f"{kind}_PORT_{name.upper()}" for kind, table in (("TTS", TTS_PORTS), ("ASR", ASR_PORTS))
               for name in sorted(table)]
    base = free_port_block(1 + max_avatars + len(servers))
    return {"AVATAR_MANAGER_PORT": str(base), "AVATAR_BASE_PORT": str(base + 1),
            **{name: str(base + 1 + max_avatars + i) for i, name in enumerate(servers)}}


async def wait_healthy(url: str, path: str = "/health", timeout: float = 20.0) -> None:
    """Until GET url+path answers 200; TimeoutError naming the server otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as http:
        while loop.time() < deadline:
            try:
                async with http.get(url + path) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{url}{path} did not answer within {timeout:g} s")
