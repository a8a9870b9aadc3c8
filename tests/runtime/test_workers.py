"""The CPU worker count chosen from the machine when the configuration leaves it (issue 18, item 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgembed.runtime import workers
from imgembed.runtime.workers import (
    MAX_WORKERS,
    MIN_WORKERS,
    available_cpus,
    cgroup_cpu_limit,
    worker_count,
)


def test_a_configured_count_is_kept() -> None:
    assert worker_count(3, cpus=64) == 3
    assert worker_count(100, cpus=1) == 100


@pytest.mark.parametrize(
    ("cpus", "expected"), [(1, MIN_WORKERS), (2, 2), (12, 12), (500, MAX_WORKERS)]
)
def test_zero_picks_one_per_cpu_within_bounds(cpus: int, expected: int) -> None:
    assert worker_count(0, cpus=cpus) == expected


def test_the_affinity_mask_counts_not_the_machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(workers.os, "cpu_count", lambda: 96)
    assert available_cpus(tmp_path / "absent") == 3
    monkeypatch.setattr(workers, "CGROUP_CPU_MAX", tmp_path / "absent")
    assert worker_count(0) == 3


def test_without_affinity_the_cpu_count_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delattr(workers.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(workers.os, "cpu_count", lambda: 6)
    assert available_cpus(tmp_path / "absent") == 6


@pytest.mark.parametrize(
    ("text", "expected"),
    [("150000 100000\n", 2), ("400000 100000", 4), ("max 100000", None), ("garbage", None)],
)
def test_cgroup_quota(tmp_path: Path, text: str, expected: int | None) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(text)
    assert cgroup_cpu_limit(path) == expected


def test_a_container_quota_caps_the_affinity_mask(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    path = tmp_path / "cpu.max"
    path.write_text("250000 100000")
    assert available_cpus(path) == 3
