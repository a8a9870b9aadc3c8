"""The benchmarks' device handling: where models run, and CUDA synchronised around each clock."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_util


def test_cpu_and_auto_without_a_gpu_resolve_to_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_util.resolve_device("cpu") == torch.device("cpu")
    assert bench_util.resolve_device("auto") == torch.device("cpu")


def test_auto_with_a_gpu_resolves_to_the_indexed_current_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert bench_util.resolve_device("auto") == torch.device("cuda", 1)
    assert bench_util.resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_a_gpu_stops_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device cpu"):
        bench_util.resolve_device("cuda")


def test_device_argument_defaults_to_auto_and_refuses_others() -> None:
    parser = argparse.ArgumentParser()
    bench_util.add_device_argument(parser)
    assert parser.parse_args([]).device == "auto"
    assert parser.parse_args(["--device", "cuda"]).device == "cuda"
    with pytest.raises(SystemExit):
        parser.parse_args(["--device", "tpu"])


def test_cuda_synchroniser_waits_on_its_own_device(monkeypatch: pytest.MonkeyPatch) -> None:
    waited: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "synchronize", waited.append)
    assert bench_util.synchronizer(torch.device("cpu")) is bench_util.no_synchronize
    bench_util.synchronizer(torch.device("cuda", 1))()
    assert waited == [torch.device("cuda", 1)]


def test_every_timed_run_is_synchronised_before_the_clock_starts_and_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    clock = iter(range(1000))
    monkeypatch.setattr(
        bench_util.time, "perf_counter", lambda: events.append("clock") or next(clock)
    )
    monkeypatch.setattr(bench_util.CpuSnapshot, "take", classmethod(lambda cls, pids: cls(0, 0)))

    def case() -> None:
        events.append("case")

    samples = bench_util.run_interleaved(
        {"a": case, "b": case},
        repeats=2,
        log=lambda line: None,
        warmup=1,
        synchronize=lambda: events.append("sync"),
    )
    assert [len(runs.wall_s) for runs in samples.values()] == [2, 2]
    runs = [events[index : index + 5] for index in range(0, len(events), 5)]
    assert len(runs) == 6  # 2 warm-ups, 4 timed runs
    assert all(run == ["sync", "clock", "case", "sync", "clock"] for run in runs), events


def test_device_phrase_names_the_gpu_the_models_ran_on() -> None:
    machine = {"gpus": [{"name": "A", "memory_gib": 80.0}, {"name": "B", "memory_gib": 141.0}]}
    assert bench_util.device_phrase(machine) == "no GPU used"
    assert bench_util.device_phrase({**machine, "device": "cpu"}) == "no GPU used"
    assert bench_util.device_phrase({**machine, "device": "cuda:1"}) == (
        "models on cuda:1, B (141.0 GiB)"
    )
