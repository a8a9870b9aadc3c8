"""Reading an engine's Prometheus histograms back, for tests and benchmarks."""

from __future__ import annotations

import re

from imgembed.engine import Engine


def histogram_totals(engine: Engine, metric: str, model: str) -> tuple[float, float]:
    """Sum and count of one model's series of a histogram (``imgembed_batch_size``,
    ``imgembed_compute_duration_seconds``), from the engine's exposition text; zeros before the
    first observation."""
    text = engine.metrics.render().decode()
    values = []
    for suffix in ("sum", "count"):
        name = f"{metric}_{suffix}"
        match = re.search(rf'^{name}\{{model="{re.escape(model)}"\}} (\S+)$', text, re.MULTILINE)
        values.append(float(match.group(1)) if match else 0.0)
    return values[0], values[1]
