"""Skips that must not happen: a test skipped for a dependency the project itself installs fails.

``scripts/bootstrap.sh test`` installs everything the tests need (Meta's ``sam2`` reference,
``samexporter``, Debian's chromium and playwright, lancedb, onnx and onnxruntime, Node.js and
onnxruntime-web, the runpod SDK, tritonclient, Triton's ``tritonserver`` from ``nvidia-pytriton``
(through ``scripts/triton_server.sh``), the openai client, schemathesis, pycocotools, opencv). A
skip for one of them means a broken set-up, and a green run that skipped the parity or browser
tests would hide it; so such a skip is turned into a failure. Skips for what the project
cannot install (a CUDA GPU) stay skips.

:func:`required_dependency` decides from the skip's reason; :class:`RequiredSkipGuard` is the
pytest plugin that applies it (``tests/conftest.py`` registers it): a skipped test fails in place,
and a module skipped at collection fails the run at its end, listed in the summary.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

REQUIRED_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "imgembed itself or its own dependencies": (
        r"\bimgembed\b",
        r"\btorch\b",
        r"\btransformers\b",
        r"\btokenizers\b",
        r"\bhuggingface[_-]hub\b",
    ),
    "Meta's sam2 reference": (r"\bsam2\b", r"\bhydra\b", r"\biopath\b"),
    "samexporter": (r"\bsamexporter\b",),
    "chromium and playwright (the browser tests)": (r"\bchromium\b", r"\bplaywright\b"),
    "lancedb (the search extra)": (r"\blancedb\b", r"\bpyarrow\b", r"\bsearch extra\b"),
    "Node.js and onnxruntime-web": (r"\bnode(?:js|\.js)?\b", r"\bnpm\b", r"\bonnxruntime-web\b"),
    "onnx and onnxruntime (the onnx extra)": (
        r"\bonnx\b",
        r"\bonnxscript\b",
        r"\bonnxruntime\b(?!-web)",
        r"\bonnx extra\b",
    ),
    "the runpod SDK": (r"\brunpod\b",),
    "tritonclient": (r"\btritonclient\b",),
    "tritonserver (nvidia-pytriton, scripts/triton_server.sh)": (
        r"\btritonserver\b",
        r"\bnvidia-pytriton\b",
    ),
    "the openai client": (r"\bopenai\b",),
    "schemathesis": (r"\bschemathesis\b",),
    "pycocotools": (r"\bpycocotools\b",),
    "opencv": (r"\bcv2\b", r"\bopencv\b"),
}
"""What the project installs for its tests, each with the words a skip reason names it by (module
names as ``pytest.importorskip`` reports them, and the wording of the tests' own reasons)."""

LEGITIMATE = re.compile(r"\bcuda\b|\bgpus?\b|\bmps\b", re.IGNORECASE)
"""Reasons that are about hardware the project cannot install; these stay skips even when they
name a package ("this onnxruntime has CUDA")."""

_PATTERNS = {
    name: re.compile("|".join(patterns), re.IGNORECASE)
    for name, patterns in REQUIRED_DEPENDENCIES.items()
}


def required_dependency(reason: str) -> str | None:
    """The installed dependency a skip reason is about, or ``None`` for a legitimate skip.

    Args:
        reason: The skip's reason, with or without pytest's ``Skipped:`` prefix.

    Returns:
        A key of :data:`REQUIRED_DEPENDENCIES`, or ``None`` when the reason names none of them or
        is about hardware (:data:`LEGITIMATE`).
    """
    text = reason.removeprefix("Skipped: ")
    if LEGITIMATE.search(text):
        return None
    for name, pattern in _PATTERNS.items():
        if pattern.search(text):
            return name
    return None


def skip_reason(longrepr: Any) -> str:
    """The reason of a skipped report: pytest keeps ``(path, line, "Skipped: reason")``."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _where(report: pytest.TestReport | pytest.CollectReport) -> str:
    return report.nodeid or str(getattr(report, "fspath", "")) or "?"


class RequiredSkipGuard:
    """Fails skips of installed dependencies (see :func:`required_dependency`)."""

    def __init__(self) -> None:
        self.refused: list[tuple[str, str, str]] = []
        """(where, dependency, reason) of every refused skip, in order."""

    def _refuse(self, report: pytest.TestReport | pytest.CollectReport) -> str | None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return None
        reason = skip_reason(report.longrepr)
        dependency = required_dependency(reason)
        if dependency is None:
            return None
        self.refused.append((_where(report), dependency, reason))
        return (
            f"skipped for {dependency}, which the project installs for its tests: run "
            f"scripts/bootstrap.sh test (or fix the set-up) instead of skipping. {reason}"
        )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        message = self._refuse(report)
        if message is not None:
            report.outcome = "failed"
            report.longrepr = message
        return report

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector) -> Any:
        report = yield
        # A module skipped at import: its tests are unknown, so the run fails at its end.
        self._refuse(report)
        return report

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.refused:
            return
        terminalreporter.section("skips of installed dependencies (these fail the run)", red=True)
        for where, dependency, reason in self.refused:
            terminalreporter.line(f"{where}: {dependency}: {reason}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.refused and session.exitstatus in (
            pytest.ExitCode.OK,
            pytest.ExitCode.NO_TESTS_COLLECTED,
        ):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
