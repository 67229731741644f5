"""The dashboard page (``/``) and its static files, served from this package; plotly.js comes
from the ``plotly`` wheel's own bundled file, so the page works offline with no build step."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from starlette.responses import FileResponse, HTMLResponse, Response

from metricsmith.api.errors import NotFound

router = APIRouter(include_in_schema=False)
STATIC = Path(str(resources.files("metricsmith.api") / "static"))
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


@cache
def plotly_js() -> Path:
    """plotly.min.js of the installed ``plotly`` package."""
    return Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))


@router.get("/")
def index() -> HTMLResponse:
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})


@router.get("/static/{name}")
def static(name: str) -> Response:
    if name == "plotly.min.js":
        return FileResponse(plotly_js(), media_type=_TYPES[".js"], headers={"Cache-Control": "max-age=86400"})
    path = STATIC / name
    if "/" in name or name.startswith(".") or not path.is_file() or path.suffix not in _TYPES:
        raise NotFound(f"no static file {name!r}")
    return FileResponse(path, media_type=_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})
