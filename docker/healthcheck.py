"""The image's HEALTHCHECK: ``GET /health/ready`` on the served port answers 200.

In ``IMGEMBED_MODE=runpod`` there is no HTTP server (RunPod watches its workers itself), so the check
passes. Python's standard library only: the image has no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    """Exit status 0 when ready (or in RunPod mode), 1 otherwise, with the reason on stderr."""
    if os.environ.get("IMGEMBED_MODE", "http") == "runpod":
        return 0
    port = os.environ.get("IMGEMBED_PORT", "8000")
    url = f"http://127.0.0.1:{port}/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as error:
        print(f"healthcheck: {url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
