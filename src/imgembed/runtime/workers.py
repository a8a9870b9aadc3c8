"""How many CPU worker threads preprocessing gets when the configuration leaves it to the machine.

Decoding (Pillow), resizing and (de)serialising release the GIL, so the worker pool scales with the
CPUs this process may use: the scheduler's affinity mask (``taskset``, cpusets), and, in a container,
the cgroup's CPU quota (``cpu.max``), which the affinity mask does not show.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

logger = logging.getLogger(__name__)

MIN_WORKERS = 2
"""Fewest workers chosen: one slow image (a large PNG) does not hold up every other request."""
MAX_WORKERS = 32
"""Most workers chosen: beyond this, threads mostly contend for the GIL and memory bandwidth."""
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpu_limit(path: Path = CGROUP_CPU_MAX) -> int | None:
    """CPUs a cgroup v2 quota allows (``"<quota> <period>"``, rounded up), ``None`` without one."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def available_cpus(cgroup_path: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may run on: its affinity mask (else ``os.cpu_count()``), capped by the
    cgroup quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_path)
    return max(1, min(cpus, limit) if limit is not None else cpus)


def worker_count(configured: int, cpus: int | None = None) -> int:
    """The CPU worker threads to start.

    Args:
        configured: ``compute_threads`` from the configuration; 0 leaves it to the machine.
        cpus: CPUs available; by default :func:`available_cpus`.

    Returns:
        ``configured`` when above 0, else one per available CPU, between :data:`MIN_WORKERS` and
        :data:`MAX_WORKERS`.
    """
    if configured > 0:
        return configured
    available = available_cpus() if cpus is None else cpus
    return max(MIN_WORKERS, min(MAX_WORKERS, available))
