"""Prometheus metrics of a worker process."""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames_sent = Counter("worker_frames_sent_total", "Frames handed to WebRTC senders", ["kind"],
                                   registry=r)
        self.dropped = Counter("worker_frames_dropped_total", "Frames dropped for slow viewers", ["kind"],
                               registry=r)
        self.engine_seconds = Histogram("worker_engine_seconds_per_frame", "Engine time per rendered frame",
                                        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.1),
                                        registry=r)
        self.engine_batch = Histogram("worker_engine_batch_frames", "Frames rendered per engine call (batching)",
                                      buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.fps = Gauge("worker_fps", "Clock ticks in the last second", registry=r)
        self.sessions = Gauge("worker_sessions", "Sessions (peer connections)", registry=r)
        self.speaking = Gauge("worker_speaking_sessions", "Sessions speaking now", registry=r)
        self.queue_depth = Gauge("worker_queue_depth", "Frames waiting in track queues", ["kind"], registry=r)
        self.utterances = Counter("worker_utterances_total", "Texts and audio files spoken", ["type"], registry=r)


METRICS = Metrics()
