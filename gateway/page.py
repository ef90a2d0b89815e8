"""The browser page at `/`: five clients side by side, served from files shipped in the package.

The page fetches nothing from anywhere but this origin (the markdown renderer
is vendored under `static/vendor/`); its Content-Security-Policy makes the
browser refuse anything else, so model output cannot pull in a remote image.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from .names import FALLBACK, FORMAT, LABELS, PAGE, ROUTES

__all__ = ["STATIC", "CSP", "add_page", "render_index"]

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


def render_index() -> str:
    """index.html with a panel per transport and the names app.js uses, both from gateway/names.py."""
    panels = "\n".join(
        f'  <section class="panel" data-kind="{t}" aria-labelledby="h-{t}">\n'
        f'    <h2 id="h-{t}">{html.escape(LABELS[t])} <span class="how">{html.escape(ROUTES[t])}</span></h2>\n'
        f'  </section>' for t in PAGE)
    names = {"transports": {t.value: {"label": LABELS[t], "format": FORMAT[t]} for t in PAGE},
             "fallback": [t.value for t in FALLBACK]}
    # Data, not a script: the CSP's script-src does not apply, and "</" cannot end the element early.
    data = json.dumps(names).replace("</", "<\\/")
    return ((STATIC / "index.html").read_text()
            .replace("<!-- panels: rendered by gateway/page.py from gateway/names.py -->", panels)
            .replace("<!-- transports -->", f'<script type="application/json" id="transports">{data}</script>'))


def add_page(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    page = render_index()

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"content-security-policy": CSP, "cache-control": "no-cache"})
