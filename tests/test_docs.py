"""The documentation matches the code: every route of the app is in docs/api.md (and every route
listed there exists), every ``IMGEMBED_*`` setting is in docs/configuration.md with its default,
and the README's and docs' relative links point at files that exist.

The app is built without starting its engine (no model is loaded), as ``imgembed serve`` builds it.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from imgembed.server.app import create_app
from imgembed.settings import SETTINGS, ServerConfig
from imgembed.settings.environment import model_file_keys

try:
    from fastapi.routing import iter_route_contexts
except ImportError:  # FastAPI before lazily included routers: app.routes is already flat.

    def iter_route_contexts(routes: Any) -> Any:
        return iter(routes)


ROOT = Path(__file__).resolve().parents[1]
API_DOC = ROOT / "docs" / "api.md"
CONFIGURATION_DOC = ROOT / "docs" / "configuration.md"

_ROUTE_ROW = re.compile(r"^\|\s*((?:`[A-Z]+`(?:,\s*)?)+)\s*\|\s*`(/[^`]*)`\s*\|")


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return create_app(ServerConfig())


def _app_routes(app: FastAPI) -> dict[str, set[str]]:
    """Path -> methods of every route the app answers (HEAD, which Starlette adds to every GET
    route it builds itself, is left out)."""
    routes: dict[str, set[str]] = {}
    for route in iter_route_contexts(app.routes):
        path = getattr(route, "path", None)
        methods = getattr(route, "methods", None)
        if path is None or methods is None:
            continue
        routes.setdefault(path, set()).update(set(methods) - {"HEAD"})
    assert routes.get("/v1/sam2/embed") == {"POST"}, "the app's routes were not all found"
    return routes


def _documented_routes() -> dict[str, set[str]]:
    """Path -> methods of the route table in docs/api.md."""
    routes: dict[str, set[str]] = {}
    for line in API_DOC.read_text(encoding="utf-8").splitlines():
        match = _ROUTE_ROW.match(line)
        if match:
            methods = set(re.findall(r"`([A-Z]+)`", match.group(1))) - {"HEAD"}
            routes.setdefault(match.group(2), set()).update(methods)
    return routes


def test_the_api_reference_lists_every_route_of_the_app(app: FastAPI) -> None:
    documented = _documented_routes()
    for path, methods in _app_routes(app).items():
        assert path in documented, f"docs/api.md's route table lacks {path}"
        assert methods <= documented[path], f"docs/api.md lacks {sorted(methods)} {path}"


def test_every_route_the_api_reference_lists_exists(app: FastAPI) -> None:
    served = _app_routes(app)
    for path, methods in _documented_routes().items():
        assert path in served, f"docs/api.md lists {path}, which the app does not serve"
        assert methods <= served[path], f"docs/api.md lists {sorted(methods)} {path}"


def test_every_openapi_path_and_the_ui_and_v2_routes_are_documented(app: FastAPI) -> None:
    with warnings.catch_warnings():
        # /ui/ answers GET and HEAD from one function: FastAPI warns of a duplicate operation id.
        warnings.filterwarnings("ignore", "Duplicate Operation ID", UserWarning)
        schema_paths = set(app.openapi()["paths"])
    documented = set(_documented_routes())
    assert schema_paths - documented == set()
    assert {"/ui", "/ui/", "/v2", "/v2/models/{model_name}/infer"} <= documented


def _settings_table() -> dict[str, str]:
    """Variable -> its default cell in docs/configuration.md (a row of two variables, such as
    ``IMGEMBED_HOST``, ``IMGEMBED_PORT``, gives one default each)."""
    rows: dict[str, str] = {}
    for line in CONFIGURATION_DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("| `IMGEMBED_"):
            names_cell, defaults_cell = line.split("|")[1:3]
            names = re.findall(r"`(IMGEMBED_\w+)`", names_cell)
            defaults = [part.strip() for part in defaults_cell.split(",")]
            if len(defaults) != len(names):  # one default for a row of aliases, or a list
                defaults = [defaults_cell.strip()] * len(names)
            rows.update(zip(names, defaults, strict=True))
    return rows


def test_the_configuration_doc_documents_every_variable_with_its_default() -> None:
    rows = _settings_table()
    for setting in SETTINGS:
        if not setting.env.startswith("IMGEMBED_"):
            continue
        assert setting.env in rows, f"docs/configuration.md's settings table lacks {setting.env}"
        cell = rows[setting.env]
        default = setting.default
        if isinstance(default, bool):
            assert cell == f"`{str(default).lower()}`", setting.env
        elif isinstance(default, int | float):
            documented = re.match(r"`?([-\d.]+)", cell)
            assert documented, f"docs/configuration.md gives {cell!r} for {setting.env}"
            assert float(documented.group(1)) == default, setting.env
        elif isinstance(default, str):
            assert cell == f"`{default}`", setting.env
        elif isinstance(default, tuple):
            assert tuple(re.findall(r"`([^`]*)`", cell)) == default, setting.env


def test_the_configuration_doc_lists_every_key_a_models_table_takes() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    paragraph = text[text.index("A `[[models]]` table takes") :].split("\n\n", 1)[0]
    listed = set(re.findall(r"`([a-z_0-9]+)`", paragraph))
    assert set(model_file_keys()) == listed


_LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize(
    "document",
    [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))],
    ids=lambda path: path.relative_to(ROOT).as_posix(),
)
def test_relative_links_point_at_files_that_exist(document: Path) -> None:
    for target in _LINK.findall(document.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (document.parent / target.split("#", 1)[0]).resolve()
        assert path.exists(), f"{document.relative_to(ROOT)} links to {target}, which is missing"
