"""The hosts of the fleet as the store records them: one document per host agent, written by
that agent every second while it holds its host lease, and read by the API to place instances.

A host is live while its document's `expires` (the store's clock: Redis's own TIME, not the
hosts') is ahead; one whose agent stopped renewing is lost, and the fleet's leader places its
instances again on the others (replacement.py).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from . import gpus, ports
from .lease import TTL  # a host's document is live as long as its lease
from .settings import Settings

if TYPE_CHECKING:  # the store's base imports placement, which reads Host
    from .store.base import Store

KIND = "host"
RENEW_EVERY = 1.0


@dataclass(frozen=True)
class Host:
    id: str
    address: str                 # where the API processes and the agent reach its workers
    public_host: str             # where clients reach them, URL-ready (webrtc_url)
    max_instances: int           # its MAX_AVATARS
    ports: list[int]             # its worker ports that were free when it last looked
    gpus: list[tuple[int, int]]  # (index, free MB), in its GPU_IDS order; empty: CPU only
    measured_at: float = 0.0     # when `gpus` was read, on the host's own clock
    expires: float = 0.0         # on the store's clock
    gpu_detail: list[dict] = field(default_factory=list)  # what /status shows of each GPU
    gpu_error: str | None = None  # why it lists no GPU, if it does not

    def live(self, now: float) -> bool:
        return now < self.expires

    def to_doc(self) -> dict:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict) -> "Host":
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "gpus": [tuple(g) for g in known.get("gpus", [])]})


def measure(settings: Settings) -> Host:
    """This host as it is now: its free worker ports and its GPUs' free memory."""
    measured_at = time.time()
    found = gpus.read_gpus(settings.gpu_ids)
    return Host(id=settings.host_id, address=settings.host_address, public_host=settings.public_host,
                max_instances=settings.max_avatars, ports=ports.free_ports(settings.ports),
                gpus=[(g.index, g.free_mb) for g in found], measured_at=measured_at,
                gpu_detail=[g.to_api(0, 0) for g in found],
                gpu_error=gpus.unavailable_reason() if not found else None)


def publish(store: "Store", host: Host) -> Host:
    """Write the host's document, live for TTL from the store's clock now."""
    renewed = Host(**{**host.__dict__, "expires": store.clock() + TTL})
    store.put_doc(KIND, host.id, renewed.to_doc())
    return renewed


def all_hosts(store: "Store") -> list[Host]:
    return [Host.from_doc(d) for d in store.list_docs(KIND)]


def live_hosts(store: "Store") -> list[Host]:
    now = store.clock()
    return [h for h in all_hosts(store) if h.live(now)]
