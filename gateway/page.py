"""The browser page at `/`: five clients side by side, served from files shipped in the package.

The page fetches nothing from anywhere but this origin (the markdown renderer
is vendored under `static/vendor/`); its Content-Security-Policy makes the
browser refuse anything else, so model output cannot pull in a remote image.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC", "CSP", "add_page"]

STATIC = Path(__file__).parent / "static"

CSP = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "style-src-attr 'unsafe-inline'",  # markdown-it's table alignment, nothing else
    "img-src 'self' data:",
    "connect-src 'self'",  # fetch, EventSource and WebSocket to this origin only
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])


def add_page(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"content-security-policy": CSP,
                                                             "cache-control": "no-cache"})
