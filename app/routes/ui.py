"""The dashboard at ``/ui``: static files (no build step), served with a strict Content
Security Policy. The page holds the API key in the browser's session storage and sends it
as a Bearer header on every request; it never travels in a URL."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

UI_DIR = Path(__file__).resolve().parents[1] / "static" / "ui"
HEADERS = {
    # Scripts only from these files (no inline script, no eval): an injected string cannot
    # run. Inline styles: uPlot sizes its canvases with them, and matplotlib's SVG has one.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' "
    "'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class UiFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def mount(app: FastAPI) -> None:
    app.mount("/ui", UiFiles(directory=UI_DIR, html=True), name="ui")
