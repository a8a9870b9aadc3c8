"""Prometheus metrics, one registry per engine (so tests and several engines never collide).

Scraped at ``GET /metrics``. Names follow Prometheus conventions (``_total`` counters, ``_seconds``
histograms); ``model`` is the canonical model name and ``route`` the route template.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from imgembed.engine.feature_cache import CacheStats
from imgembed.runtime.batcher import BatchStats

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class Metrics:
    """The service's metrics.

    Attributes:
        registry: The registry :meth:`render` exposes.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "imgembed_requests_total",
            "HTTP requests answered, by route, model and status code.",
            ["route", "model", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "imgembed_request_duration_seconds",
            "Time from request arrival to response, by route and model.",
            ["route", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_seconds = Histogram(
            "imgembed_queue_duration_seconds",
            "Time a request waited for its batch to start, by model.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.compute_seconds = Histogram(
            "imgembed_compute_duration_seconds",
            "Time of one batch on the device, by model: device time between CUDA events on a GPU "
            "(the stream's time from the batch's first kernel to its last), wall time on a CPU.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "imgembed_batch_size",
            "Requests per forward pass, by model.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.dropped = Counter(
            "imgembed_dropped_total",
            "Requests dropped before computing (deadline passed or client gone), by model.",
            ["model"],
            registry=registry,
        )
        self.queued = Gauge(
            "imgembed_queued_requests",
            "Requests waiting for a batch, by model.",
            ["model"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "imgembed_in_flight_requests",
            "Requests in the batch running now, by model.",
            ["model"],
            registry=registry,
        )
        self.model_load_seconds = Gauge(
            "imgembed_model_load_seconds",
            "Time the model took to load at start-up, by model.",
            ["model"],
            registry=registry,
        )
        self.device_memory_bytes = Gauge(
            "imgembed_device_memory_allocated_bytes",
            "Device memory held by tensors (CUDA only), by device.",
            ["device"],
            registry=registry,
        )

        self.cache_events = Counter(
            "imgembed_cache_events_total",
            "Embedding cache lookups and evictions, by model and event (hit, miss, eviction).",
            ["model", "event"],
            registry=registry,
        )
        self.cache_bytes = Gauge(
            "imgembed_cache_bytes",
            "Bytes of features held in the embedding cache, by model.",
            ["model"],
            registry=registry,
        )
        self.cache_entries = Gauge(
            "imgembed_cache_entries",
            "Images held in the embedding cache, by model.",
            ["model"],
            registry=registry,
        )

    def cache_observer(self, model: str) -> Callable[[CacheStats], None]:
        """A callback for :class:`~imgembed.engine.feature_cache.FeatureCache` that records
        ``model``'s cache counters."""
        last = CacheStats()

        def observe(stats: CacheStats) -> None:
            for event, now, before in (
                ("hit", stats.hits, last.hits),
                ("miss", stats.misses, last.misses),
                ("eviction", stats.evictions, last.evictions),
            ):
                if now > before:
                    self.cache_events.labels(model, event).inc(now - before)
            last.hits, last.misses, last.evictions = stats.hits, stats.misses, stats.evictions
            self.cache_bytes.labels(model).set(stats.bytes)
            self.cache_entries.labels(model).set(stats.entries)

        return observe

    def batch_observer(self, model: str) -> Callable[[BatchStats], None]:
        """A callback for :class:`~imgembed.runtime.batcher.DynamicBatcher` that records ``model``'s
        batches."""

        def observe(stats: BatchStats) -> None:
            if stats.dropped:
                self.dropped.labels(model).inc(stats.dropped)
            if stats.size == 0:
                return
            self.batch_size.labels(model).observe(stats.size)
            self.compute_seconds.labels(model).observe(stats.compute_seconds)
            for seconds in stats.queue_seconds:
                self.queue_seconds.labels(model).observe(seconds)

        return observe

    def track_model(
        self, model: str, queued: Callable[[], int], in_flight: Callable[[], int], load_s: float
    ) -> None:
        """Registers a model's live queue gauges and its load time."""
        self.queued.labels(model).set_function(queued)
        self.in_flight.labels(model).set_function(in_flight)
        self.model_load_seconds.labels(model).set(load_s)

    def render(self, device_memory: dict[str, int] | None = None) -> bytes:
        """The exposition text; ``device_memory`` (device name to bytes) is refreshed first."""
        for device, allocated in (device_memory or {}).items():
            self.device_memory_bytes.labels(device).set(allocated)
        return generate_latest(self.registry)
