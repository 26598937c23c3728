"""Baseline for bench/system_load.py: the barest aiohttp JSON API.

``GET /api/poll?cursor=N`` answers ``{"cursor": N, "events": []}`` and
``POST /api/login`` sets a cookie, on the same aiohttp server setup as the web
app (uvloop, no access log, backlog 4096), with no session, no gateway and no
middleware. Whatever ``GET /api/poll`` costs in app/ beyond this is the price
of the gateway.

Run: ``python bench/bare_aiohttp.py PORT`` (0: any free port; it prints it).
"""

from __future__ import annotations

import asyncio
import secrets
import sys

from aiohttp import web


async def poll(request: web.Request) -> web.Response:
    cursor = int(request.query.get("cursor") or 0)
    return web.json_response({"cursor": cursor, "events": []})


async def login(request: web.Request) -> web.Response:
    body = await request.json()
    resp = web.json_response({"username": body.get("username"), "users": [], "cursor": 0})
    resp.set_cookie("chat_session", secrets.token_urlsafe(32), httponly=True, samesite="Strict")
    return resp


async def main(port: int) -> None:
    app = web.Application()
    app.router.add_get("/api/poll", poll)
    app.router.add_post("/api/login", login)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"bare aiohttp listening on 127.0.0.1:{bound}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    try:
        import uvloop

        uvloop.run(main(port))
    except ImportError:
        asyncio.run(main(port))
