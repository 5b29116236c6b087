"""Prometheus metrics read from the store at scrape time, so every API process (and host) answers
the same: instances by state, connections, starts, failures, start latency, GPU memory."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .gpus import read_gpus
from .instances import State
from .settings import Settings
from .store.base import Store

START_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120)


def start_observation(seconds: float) -> dict[str, float]:
    """The counter increments that record one start latency in the histogram."""
    counts = {"start_seconds_sum": seconds, "start_seconds_count": 1, "starts_total": 1}
    for bound in START_BUCKETS:
        if seconds <= bound:
            counts[f"start_seconds_le_{bound:g}"] = 1
    return counts


class _StoreCollector:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings, self.store = settings, store

    def collect(self):
        instances = self.store.list()
        counts = self.store.counts()
        by_state = GaugeMetricFamily("avatar_instances", "Instances by lifecycle state", labels=["state"])
        for state in State:
            by_state.add_metric([state.value], sum(i.state == state for i in instances))
        yield by_state
        yield GaugeMetricFamily("avatar_instances_max", "MAX_AVATARS", value=self.settings.max_avatars)
        yield GaugeMetricFamily("avatar_connections", "Connections counted over all instances",
                                value=sum(i.connections for i in instances))
        for name, text in (("starts", "Workers that became ready"),
                           ("start_failures", "Workers that failed to start"),
                           ("crashes", "Ready workers that exited on their own")):
            yield CounterMetricFamily(f"avatar_{name}", text, value=counts.get(f"{name}_total", 0))
        # Each observation increments every bucket it fits, so the stored counts are cumulative.
        buckets = [(f"{b:g}", counts.get(f"start_seconds_le_{b:g}", 0)) for b in START_BUCKETS]
        buckets.append(("+Inf", counts.get("start_seconds_count", 0)))
        yield HistogramMetricFamily("avatar_start_seconds", "Spawn to ready", buckets=buckets,
                                    sum_value=counts.get("start_seconds_sum", 0))
        total = GaugeMetricFamily("avatar_gpu_memory_total_mb", "GPU memory", labels=["gpu"])
        free = GaugeMetricFamily("avatar_gpu_memory_free_mb", "GPU memory free", labels=["gpu"])
        for gpu in read_gpus(self.settings.gpu_ids):
            total.add_metric([str(gpu.index)], gpu.total_mb)
            free.add_metric([str(gpu.index)], gpu.free_mb)
        yield total
        yield free


def render(settings: Settings, store: Store) -> bytes:
    registry = CollectorRegistry()
    registry.register(_StoreCollector(settings, store))
    return generate_latest(registry)
