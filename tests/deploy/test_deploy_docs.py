"""docs/deploy/: links resolve, RunPod's size table follows benchmarks/RESULTS.md, and the Modal
settings table lists every ``IMGEMBED_MODAL_*`` variable with its default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imgembed.modal_app import ModalSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "docs" / "deploy"
MIB = 1024 * 1024


@pytest.mark.parametrize("document", sorted(DEPLOY.glob("*.md")), ids=lambda p: p.name)
def test_relative_links_resolve(document: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", document.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        assert (document.parent / target.split("#", 1)[0]).resolve().exists(), target


def _wire_mib() -> dict[tuple[str, str], float]:
    """(dtype, encoding) -> MiB on the wire, from RESULTS.md's wire encodings table."""
    sizes = {}
    for line in (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 8 and cells[1].startswith("imgembed npz_base64"):
            encoding = cells[1].removeprefix("imgembed ").split(" ")[0]
            sizes[(cells[0], encoding)] = float(cells[2])
    return sizes


def test_runpod_sizes_are_the_measured_ones_in_megabytes() -> None:
    measured = _wire_mib()
    assert len(measured) == 6
    rows = 0
    for line in (DEPLOY / "runpod.md").read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| (\w+) \| `(npz_base64\w*)` \| all three \| ([\d.]+) MB \|", line)
        if match:
            dtype, encoding, megabytes = match.groups()
            expected = measured[(dtype, encoding)] * MIB / 1e6
            assert float(megabytes) == pytest.approx(expected, abs=0.05), line
            fits = [cell.strip() for cell in line.strip("|").split("|")][4:6]
            assert [cell.startswith("yes") for cell in fits] == [expected < 10, expected < 20], line
            rows += 1
    assert rows == 6


def test_modal_settings_table_lists_every_variable_and_default() -> None:
    text = (DEPLOY / "modal.md").read_text(encoding="utf-8")
    defaults = ModalSettings()
    documented = dict(re.findall(r"^\| `(IMGEMBED_MODAL_\w+)` \| ([^|]+) \|", text, re.MULTILINE))
    assert set(documented) == {
        "IMGEMBED_MODAL_APP",
        "IMGEMBED_MODAL_GPU",
        "IMGEMBED_MODAL_MAX_INPUTS",
        "IMGEMBED_MODAL_SCALEDOWN_S",
        "IMGEMBED_MODAL_MIN_CONTAINERS",
        "IMGEMBED_MODAL_MAX_CONTAINERS",
        "IMGEMBED_MODAL_TIMEOUT_S",
        "IMGEMBED_MODAL_VOLUME",
        "IMGEMBED_MODAL_SECRET",
    }
    for name, value in [
        ("IMGEMBED_MODAL_APP", defaults.app_name),
        ("IMGEMBED_MODAL_GPU", defaults.gpu),
        ("IMGEMBED_MODAL_MAX_INPUTS", defaults.max_inputs),
        ("IMGEMBED_MODAL_SCALEDOWN_S", defaults.scaledown_window_s),
        ("IMGEMBED_MODAL_MIN_CONTAINERS", defaults.min_containers),
        ("IMGEMBED_MODAL_TIMEOUT_S", defaults.timeout_s),
        ("IMGEMBED_MODAL_VOLUME", defaults.volume),
    ]:
        assert documented[name].strip() == f"`{value}`", name
