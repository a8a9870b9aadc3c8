"""Helpers every benchmark here shares: interleaved timing, the device, machine facts, the
results file."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

DeviceName = Literal["auto", "cpu", "cuda"]
"""A benchmark's ``--device``: ``auto`` is CUDA when torch sees a GPU, else the CPU."""

_NUMBER = re.compile(r"^[-+]?[\d.,]+(e[-+]?\d+)?( ?%|x)?$")
"""A table cell that reads as a number (``12.3``, ``4.5 %``, ``1.02x``): right-aligned."""

Case = Callable[[], Mapping[str, Any] | None]
"""One timed unit of work; it may return details (a server's own timings, sizes) to keep."""

_STARTED = time.perf_counter()
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
OTHER_CORES_LIMIT = 0.15
"""A timed run during which other processes kept more than this many cores busy is redone."""


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU time used so far: by the whole machine, and by the processes being measured.

    Attributes:
        busy_ticks: Non-idle time of all CPUs (user, system, interrupts, steal), in clock ticks.
        own_ticks: User plus system time of the watched processes, all threads, in clock ticks.
    """

    busy_ticks: int
    own_ticks: int

    @classmethod
    def take(cls, pids: Sequence[int]) -> CpuSnapshot:
        """Reads ``/proc/stat`` and ``/proc/<pid>/stat`` for each watched process."""
        fields = Path("/proc/stat").read_text(encoding="utf-8").split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
        own = 0
        for pid in pids:
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1]
                values = stat.split()  # from field 3 (state) on: utime is field 14, stime 15
                own += int(values[11]) + int(values[12])
        return cls(busy_ticks=user + nice + system + irq + softirq + steal, own_ticks=own)

    def other_cores(self, earlier: CpuSnapshot, wall_s: float) -> float:
        """Cores that processes other than the watched ones kept busy since ``earlier``."""
        other = (self.busy_ticks - earlier.busy_ticks) - (self.own_ticks - earlier.own_ticks)
        return max(0, other) / _CLOCK_TICKS / max(wall_s, 1e-9)


def wait_until_quiet(
    timeout_s: float,
    log: Callable[[str], None],
    *,
    own_pids: Sequence[int] = (),
    window_s: float = 3.0,
) -> float:
    """Waits until other processes leave the CPUs alone, or ``timeout_s`` passes.

    Args:
        timeout_s: Longest wait.
        log: Receives a line for each busy window.
        own_pids: Processes, besides this one, that do not count as others.
        window_s: Length of each measurement.

    Returns:
        The other processes' load in the last window, in cores.
    """
    pids = [os.getpid(), *own_pids]
    deadline = time.monotonic() + timeout_s
    while True:
        before = CpuSnapshot.take(pids)
        time.sleep(window_s)
        load = CpuSnapshot.take(pids).other_cores(before, window_s)
        if load <= OTHER_CORES_LIMIT or time.monotonic() >= deadline:
            return load
        log(f"other processes keep {load:.2f} cores busy; waiting for a quiet machine")


@dataclass
class Samples:
    """Timed runs of one case.

    Attributes:
        wall_s: Wall time of each run, in seconds, in the order run.
        details: What the case returned for each run (``{}`` when it returned nothing).
        other_cores: Cores other processes kept busy during each run.
        discarded: Runs redone because other processes were busy during them.
    """

    wall_s: list[float] = field(default_factory=list)
    details: list[Mapping[str, Any]] = field(default_factory=list)
    other_cores: list[float] = field(default_factory=list)
    discarded: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.wall_s)

    @property
    def best(self) -> float:
        return min(self.wall_s)

    def detail_median(self, key: str) -> float:
        """Median of a numeric detail over the runs."""
        return statistics.median(float(detail[key]) for detail in self.details)


def paired_ratio(ours: list[float], reference: list[float]) -> float:
    """Median over rounds of our time / the reference's time in the same round.

    Runs of one round are adjacent in time, so a slow patch of the machine cancels out of their
    ratio; this is steadier than a ratio of medians when the machine's speed drifts.
    """
    return statistics.median(a / b for a, b in zip(ours, reference, strict=True))


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """Adds ``--device`` (see :data:`DeviceName`); both sides of a comparison run there."""
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the models run, imgembed's and the reference's alike (default auto: the GPU "
        "when torch sees one, else the CPU); CUDA work is synchronised before each clock read",
    )


def resolve_device(name: DeviceName) -> torch.device:
    """The torch device for ``--device``, with its index on CUDA (``cuda:0``).

    Raises:
        SystemExit: ``cuda`` was asked for and torch sees no GPU.
    """
    import torch

    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit(
            f"--device cuda was asked for, but torch {torch.__version__} sees no CUDA device; "
            "run with --device cpu, or on a machine with a GPU and a CUDA build of torch"
        )
    return torch.device("cuda", torch.cuda.current_device())


def no_synchronize() -> None:
    """The synchroniser of a CPU: its work is done when the call returns."""


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What waits until ``device`` has finished the work queued on it.

    CUDA kernels run asynchronously: without a synchronisation before each clock read, a timing
    measures kernel launches, not the work. On the CPU it does nothing.
    """
    if device.type != "cuda":
        return no_synchronize
    import torch

    return lambda: torch.cuda.synchronize(device)


def reference_autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """The precision Meta's examples run SAM 2 in on ``device``: bfloat16 autocast on CUDA (as
    their notebooks and the seeds' GPU workers do, and as imgembed computes there by default),
    plain float32 on the CPU."""
    import torch

    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def ignoring_result(function: Callable[..., object], *args: object) -> Case:
    """A case that calls ``function(*args)`` and drops what it returns."""

    def case() -> None:
        function(*args)

    return case


def run_interleaved(
    cases: Mapping[str, Case],
    *,
    repeats: int,
    log: Callable[[str], None],
    warmup: int = 1,
    own_pids: Sequence[int] = (),
    retries: int | None = None,
    quiet_timeout_s: float = 120,
    synchronize: Callable[[], None] = no_synchronize,
) -> dict[str, Samples]:
    """Times cases in rotating order, so drift in machine speed hits every case alike.

    A run during which other processes kept more than :data:`OTHER_CORES_LIMIT` cores busy is
    discarded and, once the machine is quiet again (or ``quiet_timeout_s`` has passed), redone,
    up to ``retries`` times in all; after that, busy runs are kept (their load is recorded in
    :attr:`Samples.other_cores`).

    Args:
        cases: Name to the work to time.
        repeats: Timed runs per case.
        log: Receives one progress line per run.
        warmup: Untimed runs per case before the first timed one.
        own_pids: Processes, besides this one, whose CPU use is part of the work (a server).
        retries: Redone runs allowed in all; ``repeats * len(cases)`` when ``None``.
        quiet_timeout_s: Longest wait for a quiet machine before redoing a run.
        synchronize: Waits for the device's queued work; called before the clock starts and
            before it is read (see :func:`synchronizer`).

    Returns:
        Name to its timed runs.
    """
    names = list(cases)
    pids = [os.getpid(), *own_pids]
    retries_left = repeats * len(names) if retries is None else retries
    for name in names:
        for _ in range(warmup):
            synchronize()
            started = time.perf_counter()
            cases[name]()
            synchronize()
            log(f"  warm-up {name}: {time.perf_counter() - started:.2f} s")
    results = {name: Samples() for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            while True:
                synchronize()
                before = CpuSnapshot.take(pids)
                started = time.perf_counter()
                detail = cases[name]()
                synchronize()
                elapsed = time.perf_counter() - started
                other = CpuSnapshot.take(pids).other_cores(before, elapsed)
                note = f"{elapsed:.2f} s (other processes: {other:.2f} cores)"
                if other <= OTHER_CORES_LIMIT or retries_left <= 0:
                    break
                retries_left -= 1
                results[name].discarded += 1
                log(f"  discarded {name}: {note}; redoing it")
                wait_until_quiet(quiet_timeout_s, log, own_pids=own_pids)
            results[name].wall_s.append(elapsed)
            results[name].details.append(dict(detail or {}))
            results[name].other_cores.append(other)
            log(f"  run {round_index + 1}/{repeats} {name}: {note}")
    return results


def elapsed_s() -> float:
    """Seconds since this module was imported (the start of a benchmark script)."""
    return time.perf_counter() - _STARTED


def log(message: str) -> None:
    """A progress line on stderr, stamped with seconds since start."""
    print(f"[{elapsed_s():6.1f} s] {message}", file=sys.stderr, flush=True)


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def _memory_gib() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"^MemTotal:\s*(\d+) kB", text, flags=re.MULTILINE)
    return round(int(match.group(1)) / 1024**2, 1) if match else None


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, library versions and thread settings of this process."""
    import numpy
    import torch
    import transformers

    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "cuda_available": torch.cuda.is_available(),
        "gpus": [
            {
                "name": torch.cuda.get_device_name(index),
                "memory_gib": round(
                    torch.cuda.get_device_properties(index).total_memory / 1024**3, 1
                ),
            }
            for index in range(torch.cuda.device_count())
        ]
        if torch.cuda.is_available()
        else [],
    }


def device_phrase(machine: Mapping[str, Any]) -> str:
    """How a results header names where the models ran: ``no GPU used``, or the GPU by name.

    Args:
        machine: :func:`machine_info` with ``device`` added by the benchmark (``cpu`` when absent).
    """
    device = str(machine.get("device", "cpu"))
    if not device.startswith("cuda"):
        return "no GPU used"
    index = int(device.partition(":")[2] or 0)
    gpu = machine["gpus"][index]
    return f"models on {device}, {gpu['name']} ({gpu['memory_gib']} GiB)"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table, numbers right-aligned."""

    def aligned(index: int) -> str:
        numeric = rows and all(_NUMBER.match(str(row[index])) for row in rows)
        return "---:" if numeric else "---"

    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(aligned(i) for i in range(len(headers))) + " |",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def replace_section(path: Path, heading: str, body: str) -> None:
    """Writes ``## heading`` and ``body`` into a Markdown file, replacing only that section.

    The section runs from its ``## `` heading to the next ``## `` heading or the end of the file;
    other sections are kept as they are. A missing file or section is created.
    """
    title = f"## {heading}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    section = f"{title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(title)}\s*$.*?(?=^## |\Z)", flags=re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text, encoding="utf-8")
