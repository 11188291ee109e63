"""The pages: /monitor and /config (static HTML, CSS and JS from webui/static, nothing from the internet)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent / "static"

routes = web.RouteTableDef()


def _page(name: str) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / name, headers={"Content-Type": "text/html; charset=utf-8",
                                                        "Cache-Control": "no-cache"})


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": "/monitor"})


@routes.get("/monitor")
async def monitor_page(request: web.Request) -> web.FileResponse:
    return _page("monitor.html")


@routes.get("/config")
async def config_page(request: web.Request) -> web.FileResponse:
    return _page("config.html")


@routes.get("/favicon.ico")
async def favicon(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "favicon.svg", headers={"Content-Type": "image/svg+xml"})


routes.static("/static", STATIC_DIR)
