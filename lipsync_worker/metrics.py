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
        # Talking by voice (listening.py, turns.py)
        seconds = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2, 5)
        self.turn_stage = Histogram("worker_turn_stage_seconds", "From the end of a viewer's speech to each "
                                    "stage of the answer", ["stage"], buckets=seconds, registry=r)
        self.barge_in = Histogram("worker_barge_in_seconds", "From the first window of a viewer's speech "
                                  "arriving to the avatar silenced", buckets=seconds, registry=r)
        self.turns = Counter("worker_speech_turns_total", "Viewers' speech by outcome (answered, "
                             "too_short, unrecognised, asr_failed)", ["outcome"], registry=r)


METRICS = Metrics()
