"""``python -m imgembed.runpod``: start the RunPod serverless worker (or its local test mode)."""

from __future__ import annotations

import logging
import os

from imgembed.runpod import handler


def main() -> None:
    """Starts the RunPod worker loop with :func:`imgembed.runpod.handler`."""
    try:
        import runpod
    except ImportError as error:
        raise SystemExit(
            "the RunPod worker needs the runpod SDK: pip install 'imgembed[runpod]'"
        ) from error
    logging.basicConfig(level=os.environ.get("IMGEMBED_LOG_LEVEL", "INFO").upper())
    runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
