"""The Hermesflow page of the Airflow plugin: an HTML shell, one script and one style sheet.

The shell is rendered on the server so a user who is logged in sees the page's structure at
once; `static/hermesflow.js` then polls the plugin's JSON API (`api/...`, relative to this
page, so the page works wherever the plugin app is mounted) and draws the tables, the PDGraphs
and the ACT charts itself — vanilla JavaScript and SVG, no build step and no CDN, because an
Airflow deployment often has no route to the internet.

The files are package data of `hermesflow.plugins`, read once. Every route here sits behind the
plugin app's authentication like the JSON API: the browser sends Airflow's `_token` cookie.
"""

from __future__ import annotations

import hashlib
from functools import cache
from html import escape
from importlib.metadata import version
from importlib.resources import files
from string import Template

from fastapi import APIRouter, HTTPException, Response
from fastapi.responses import HTMLResponse

STATIC_TYPES = {
    "hermesflow.js": "text/javascript; charset=utf-8",
    "hermesflow.css": "text/css; charset=utf-8",
}
"""The files under `static/` the page may load, with their media types; nothing else is served."""
POLL_MS = 2000
"""How often the page asks the JSON API for the live state."""
SECURITY_HEADERS = {
    # Only this page's own script and style run; Airflow's UI (same origin) may frame it.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
"""Headers of every response: the page draws API data, so scripts from anywhere else must not
run even if a value slipped past the script's escaping."""
STATIC_CACHE = "private, max-age=86400"
"""The shell names the files with a hash of their content (`?v=...`), so a changed script is
fetched at once and an unchanged one is not fetched again for a day."""

router = APIRouter(tags=["page"])


@cache
def _resource(*parts: str) -> str:
    return files("hermesflow.plugins").joinpath(*parts).read_text(encoding="utf-8")


@cache
def _assets_version() -> str:
    digest = hashlib.sha256()
    for name in sorted(STATIC_TYPES):
        digest.update(_resource("static", name).encode())
    return digest.hexdigest()[:12]


@router.get("/ui", response_class=HTMLResponse, summary="The Hermesflow page")
def page() -> HTMLResponse:
    """The shell: headings, empty tables and the script that fills them."""
    html = Template(_resource("templates", "page.html")).substitute(
        version=version("hermesflow"), assets=_assets_version(), poll_ms=POLL_MS
    )
    return HTMLResponse(html, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    """The page's script and style sheet (not in the JSON API's schema: no client but the page
    has a use for them)."""
    media_type = STATIC_TYPES.get(name)
    if media_type is None:
        raise HTTPException(404, f"no static file {name!r}; the page uses {sorted(STATIC_TYPES)}")
    return Response(
        _resource("static", name),
        media_type=media_type,
        headers={**SECURITY_HEADERS, "Cache-Control": STATIC_CACHE},
    )


def login_required(status_code: int, login_url: str) -> HTMLResponse:
    """What a browser gets instead of the page without a valid Airflow login: the same 401 or
    403 the JSON API answers, as a page that says so and links to Airflow's login."""
    if status_code == 401:
        reason = "You are not logged in to Airflow"
    else:
        reason = "Your Airflow login is not valid any more"
    html = (
        "<!doctype html><html lang=en><meta charset=utf-8><title>Hermesflow — log in</title>"
        f"<p>{reason}. <a href=\"{escape(login_url)}\">Log in to Airflow</a> to see the "
        "Hermesflow page.</p></html>"
    )
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
