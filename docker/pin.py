"""Writes docker/constraints.txt: the exact versions, in the environment that runs this script, of
everything ``imgembed[EXTRAS]`` needs, so the image installs what the tests ran against.

    .venv/bin/python docker/pin.py runpod > docker/constraints.txt

torch and its CUDA libraries are left out: docker/install.sh pins torch itself (TORCH_VERSION), from
the CPU or CUDA index, and torch brings the CUDA libraries its build needs.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement

LEFT_TO_TORCH = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str, extras: set[str]) -> dict[str, str]:
    """Installed name -> version for ``root`` with ``extras`` and everything they need."""
    pinned: dict[str, str] = {}
    pending = [(root, extras)]
    while pending:
        name, wanted = pending.pop()
        distribution = metadata.distribution(name)
        key = _canonical(distribution.metadata["Name"])
        first_visit = key not in pinned
        pinned[key] = distribution.version
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is not None:
                environments = [{**default_environment(), "extra": e} for e in wanted or {""}]
                if not any(requirement.marker.evaluate(env) for env in environments):
                    continue
            child = _canonical(requirement.name)
            if (first_visit and child not in pinned) or requirement.extras:
                pending.append((child, set(requirement.extras)))
    return pinned


def main() -> None:
    extras = set(sys.argv[1:])
    pinned = closure("imgembed", extras)
    print(
        f"# imgembed[{','.join(sorted(extras))}]: versions the test suite ran against (docker/pin.py)."
    )
    print("# torch is pinned by docker/install.sh (TORCH_VERSION), from the CPU or CUDA index.")
    for name in sorted(pinned):
        if name != "imgembed" and not LEFT_TO_TORCH.match(name):
            print(f"{name}=={pinned[name]}")


if __name__ == "__main__":
    main()
