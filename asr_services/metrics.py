"""The ASR server's Prometheus metrics. The real-time factor is
rate(asr_recognition_seconds_total) / rate(asr_audio_seconds_total)."""
from __future__ import annotations

import time
from typing import Awaitable, TypeVar

from prometheus_client import CollectorRegistry, Counter

from .protocol import BYTES_PER_SECOND

T = TypeVar("T")


class Metrics:
    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        self.model = model
        self.requests = Counter("asr_requests_total", "Utterances recognised or refused (POST /transcribe, and "
                                "each final or error on GET /asr) by route and outcome",
                                ["model", "route", "outcome"], registry=self.registry)
        self.audio = Counter("asr_audio_seconds_total", "Seconds of audio recognised", ["model"],
                             registry=self.registry)
        self.recognising = Counter("asr_recognition_seconds_total", "Seconds spent recognising audio", ["model"],
                                   registry=self.registry)

    def outcome(self, route: str, name: str) -> None:
        self.requests.labels(self.model, route, name).inc()

    async def recognise(self, work: Awaitable[T], audio_bytes: int = 0) -> T:
        """The result of `work`, which recognises `audio_bytes` of new audio, with both counted."""
        start = time.perf_counter()
        try:
            return await work
        finally:
            self.recognising.labels(self.model).inc(time.perf_counter() - start)
            self.audio.labels(self.model).inc(audio_bytes / BYTES_PER_SECOND)
