"""Whether a TCP port is free on this host: try to bind it, as the worker will."""
from __future__ import annotations

import socket
import time


def is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # The worker (aiohttp) binds with SO_REUSEADDR, so a port in TIME_WAIT is free for it too.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_ports(ports: range) -> list[int]:
    return [p for p in ports if is_free(p)]


def wait_free(port: int, timeout: float) -> bool:
    """True once the port can be bound, False if it is still held after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not is_free(port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True
