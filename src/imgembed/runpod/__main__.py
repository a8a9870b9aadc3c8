"""``python -m imgembed.runpod``: start the RunPod serverless worker (or its local test mode)."""

from __future__ import annotations

import os

from imgembed.logs import configure_logging
from imgembed.runpod import handler


def main() -> None:
    """Starts the RunPod worker loop with :func:`imgembed.runpod.handler`."""
    try:
        import runpod
    except ImportError as error:
        raise SystemExit(
            "the RunPod worker needs the runpod SDK: pip install 'imgembed[runpod]'"
        ) from error
    configure_logging(
        os.environ.get("IMGEMBED_LOG_LEVEL", "INFO"),
        "json" if os.environ.get("IMGEMBED_LOG_FORMAT") == "json" else "text",
    )
    runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
