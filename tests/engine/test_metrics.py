"""The Prometheus metrics: what batches, caches, queues and devices put into the exposition text."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from imgembed.engine import Engine
from imgembed.engine.feature_cache import CacheStats
from imgembed.engine.metrics import Metrics
from imgembed.runtime.batcher import BatchStats

MODEL = "sam2.1-hiera-tiny"


def samples(metrics: Metrics, device_memory: dict[str, int] | None = None) -> dict[str, float]:
    """Every sample of the rendered text, keyed ``name{label=value,...}`` (labels sorted)."""
    text = metrics.render(device_memory).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{key}={value}" for key, value in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


def test_batches_record_sizes_queue_waits_compute_and_drops() -> None:
    metrics = Metrics()
    observe = metrics.batch_observer(MODEL)
    observe(BatchStats(size=1, dropped=0, queue_seconds=[0.5], compute_seconds=2.0))
    observe(BatchStats(size=4, dropped=1, queue_seconds=[0.1, 0.2, 0.3, 0.4], compute_seconds=3.0))
    observe(BatchStats(size=0, dropped=2, queue_seconds=[], compute_seconds=0.0))

    found = samples(metrics)
    assert found[f"imgembed_batch_size_count{{model={MODEL}}}"] == 2
    assert found[f"imgembed_batch_size_sum{{model={MODEL}}}"] == 5
    assert found[f"imgembed_batch_size_bucket{{le=1.0,model={MODEL}}}"] == 1
    assert found[f"imgembed_batch_size_bucket{{le=4.0,model={MODEL}}}"] == 2
    assert found[f"imgembed_compute_duration_seconds_count{{model={MODEL}}}"] == 2
    assert found[f"imgembed_compute_duration_seconds_sum{{model={MODEL}}}"] == 5.0
    assert found[f"imgembed_queue_duration_seconds_count{{model={MODEL}}}"] == 5
    assert found[f"imgembed_queue_duration_seconds_sum{{model={MODEL}}}"] == pytest.approx(1.5)
    # A batch whose items were all dropped counts the drops, not a batch of size 0.
    assert found[f"imgembed_dropped_total{{model={MODEL}}}"] == 3


def test_cache_counters_grow_by_the_change_and_gauges_show_the_fill() -> None:
    metrics = Metrics()
    observe = metrics.cache_observer(MODEL)
    observe(CacheStats(hits=0, misses=1, evictions=0, entries=1, bytes=1000))
    observe(CacheStats(hits=2, misses=3, evictions=1, entries=2, bytes=2500))
    observe(CacheStats(hits=2, misses=3, evictions=1, entries=2, bytes=2500))

    found = samples(metrics)
    assert found[f"imgembed_cache_events_total{{event=hit,model={MODEL}}}"] == 2
    assert found[f"imgembed_cache_events_total{{event=miss,model={MODEL}}}"] == 3
    assert found[f"imgembed_cache_events_total{{event=eviction,model={MODEL}}}"] == 1
    assert found[f"imgembed_cache_bytes{{model={MODEL}}}"] == 2500
    assert found[f"imgembed_cache_entries{{model={MODEL}}}"] == 2


def test_queue_gauges_are_read_at_scrape_time_and_load_time_is_kept() -> None:
    metrics = Metrics()
    depth = {"queued": 3, "in_flight": 1}
    metrics.track_model(MODEL, lambda: depth["queued"], lambda: depth["in_flight"], 4.25)
    assert samples(metrics)[f"imgembed_queued_requests{{model={MODEL}}}"] == 3

    depth.update(queued=0, in_flight=4)
    found = samples(metrics)
    assert found[f"imgembed_queued_requests{{model={MODEL}}}"] == 0
    assert found[f"imgembed_in_flight_requests{{model={MODEL}}}"] == 4
    assert found[f"imgembed_model_load_seconds{{model={MODEL}}}"] == 4.25


def test_device_memory_is_exposed_per_device_only_when_given() -> None:
    metrics = Metrics()
    assert not any(name.startswith("imgembed_device_memory") for name in samples(metrics))

    found = samples(metrics, {"cuda:0": 123_456_789, "cuda:1": 0})
    assert found["imgembed_device_memory_allocated_bytes{device=cuda:0}"] == 123_456_789
    assert found["imgembed_device_memory_allocated_bytes{device=cuda:1}"] == 0


def test_engine_reports_memory_of_cuda_devices_serving_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``Engine.device_memory`` on an engine whose models sit on two GPUs and the CPU: one
    reading per CUDA device (``torch.cuda.memory_allocated`` stands in for the GPUs here)."""

    def allocated(device: torch.device) -> int:
        return {0: 1000, 1: 2000}[device.index]

    monkeypatch.setattr(torch.cuda, "memory_allocated", allocated)
    models = {
        name: SimpleNamespace(placement=SimpleNamespace(device=torch.device(device)))
        for name, device in (("a", "cuda:0"), ("b", "cuda:0"), ("c", "cuda:1"), ("d", "cpu"))
    }
    engine = SimpleNamespace(_models=models)

    assert Engine.device_memory(engine) == {"cuda:0": 1000, "cuda:1": 2000}  # type: ignore[arg-type]


def test_engine_on_cpu_reports_no_device_memory() -> None:
    models = {"a": SimpleNamespace(placement=SimpleNamespace(device=torch.device("cpu")))}
    assert Engine.device_memory(SimpleNamespace(_models=models)) == {}  # type: ignore[arg-type]
