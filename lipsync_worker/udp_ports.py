"""WEBRTC_PORT_RANGE: the UDP ports this worker's WebRTC sessions receive on, so that a firewall
can open exactly those (without it the OS picks any free port; LiveTalking issue #464).

aiortc leaves the sockets to aioice, and aioice (0.13) has no option for their ports: it binds
each host candidate with loop.create_datagram_endpoint(..., local_addr=(address, 0)). So
bind_in_range() replaces that method on the running event loop with one that binds every
endpoint asked for with local port 0 and no remote address (exactly those host candidates) to a
free port of the range instead. Server-reflexive candidates share the host candidates' sockets,
so they are covered too. Every other endpoint is created as asked: one with a fixed port, one
with a remote address (aioice's TURN client; a relayed candidate's port is the TURN server's),
one on a ready socket (aioice's mDNS).

When no port of the range is free on an address, the bind fails with EADDRINUSE like any failed
bind: aioice logs it and gathers no host candidate on that address.
"""
from __future__ import annotations

import asyncio
import errno
import itertools
import random


def bind_in_range(ports: range) -> None:
    """From now on the running event loop binds each UDP endpoint created with local port 0 and
    no remote address to a free port of `ports` (see above)."""
    loop = asyncio.get_running_loop()
    create = loop.create_datagram_endpoint

    async def create_datagram_endpoint(protocol_factory, local_addr=None, remote_addr=None, **kwargs):
        if remote_addr is not None or not isinstance(local_addr, tuple) or local_addr[1] != 0:
            return await create(protocol_factory, local_addr, remote_addr, **kwargs)
        # From a random port on, each port once: concurrent sessions spread over the range
        # instead of all trying its first ports.
        start = random.randrange(len(ports))
        for port in itertools.chain(ports[start:], ports[:start]):
            try:
                return await create(protocol_factory, (local_addr[0], port, *local_addr[2:]), **kwargs)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, f"no free UDP port on {local_addr[0]} in "
                                        f"WEBRTC_PORT_RANGE={ports[0]}-{ports[-1]}")

    loop.create_datagram_endpoint = create_datagram_endpoint
