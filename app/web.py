"""HTTP: the pages, the JSON API views (docs/protocol.md#http-api), and ``create_app``.

Every route is registered in :func:`_routes`. Views parse HTTP (with app/http_api.py:
cookie, query, JSON body), hand the request to the :class:`Gateway` and turn its answer or its
error code into a response; the codes and their statuses are the contract's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from legacy_socket_server.client import CoreError, CoreUnavailable
from legacy_socket_server.contract import MAX_WAIT_MS
from legacy_socket_server.server import CoreServer, ServerConfig
from legacy_socket_server.storage_files import StoreError

from .config import WebConfig
from .gateway import Gateway, NotLoggedIn
from .http_api import (
    CONFIG_KEY,
    COOKIE,
    CORE_KEY,
    GATEWAY_KEY,
    NO_STORE,
    SECURITY_HEADERS,
    ApiError,
    api_json,
    client_address,
    csrf_refusal,
    error_response,
    is_https,
    json_body,
    origin_refusal,
    pick,
    query_int,
    session_of,
)
from .limits import FailedLogins, Refused
from .session_store import SessionStore, SessionStoreUnavailable
from .shared_sessions import SharedSessions
from .ws import open_socket, push

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
__all__ = ["COOKIE", "CORE_KEY", "GATEWAY_KEY", "connect_host", "create_app"]
# -- middleware and signals ---------------------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Security headers on every response, CSRF check for POSTs, errors as JSON.

    One middleware rather than a middleware plus an ``on_response_prepare``
    signal: the 100 ms poll runs through here 5k times a second, and each
    layer costs a coroutine call.
    """
    try:
        if request.method == "POST":
            why = csrf_refusal(request)
            if why is not None:
                response = error_response("csrf", why)
            elif (request.content_length or 0) > request.app[CONFIG_KEY].max_body_bytes:
                response = error_response("too_large", "the request body is over the limit")
            else:
                response = await handler(request)
        else:
            response = await handler(request)
    except web.HTTPException as exc:  # redirects, 404, 405: headers on them too
        exc.headers.update(SECURITY_HEADERS)
        raise
    except ApiError as exc:
        response = error_response(exc.code, exc.message)
    except NotLoggedIn:
        response = error_response("not_logged_in", "log in first")
    except CoreUnavailable:
        response = error_response("core_unavailable", "the chat server is unreachable; retrying")
    except SessionStoreUnavailable:
        # The shared session table (--database-url) is away: a session held here goes on,
        # one that is not cannot be looked up. Never a login page: it may be valid.
        response = error_response(
            "storage_unavailable", "the chat cannot reach its session store; retrying"
        )
        response.headers["Retry-After"] = "2"
    except (CoreError, Refused) as exc:
        response = error_response(exc.code, exc.message)
    response.headers.update(SECURITY_HEADERS)
    return response


# -- pages ---------------------------------------------------------------------------------------
async def chat_page(request: web.Request) -> web.StreamResponse:
    try:
        session = await session_of(request)
    except NotLoggedIn:
        # The query (e.g. ?transport=poll) goes along: the login page brings it back.
        query = f"?{request.query_string}" if request.query_string else ""
        raise web.HTTPFound(f"/login{query}")
    context = {"username": session.username, "transport": request.app[CONFIG_KEY].transport}
    return aiohttp_jinja2.render_template("chat.html", request, context)


async def login_page(request: web.Request) -> web.StreamResponse:
    try:
        await session_of(request)
    except NotLoggedIn:
        return aiohttp_jinja2.render_template("login.html", request, {})
    raise web.HTTPFound("/")


# -- the API (docs/protocol.md#http-api) ---------------------------------------------------
async def api_login(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    gateway = request.app[GATEWAY_KEY]
    # The core judges (and throttles) the credentials; they are not kept here.
    session, reply = await gateway.login(
        body.get("username"), body.get("password"), client_address(request)
    )
    resp = api_json(reply)
    resp.set_cookie(
        COOKIE,
        session.sid,
        httponly=True,
        samesite="Strict",
        path="/",
        secure=request.app[CONFIG_KEY].secure_cookies or is_https(request),
    )
    return resp


async def api_logout(request: web.Request) -> web.StreamResponse:
    session = await session_of(request)
    await json_body(request)  # read it: a chunked body over the limit is 413 here too
    await request.app[GATEWAY_KEY].end(session)
    resp = web.Response(status=204)
    resp.del_cookie(COOKIE, path="/")
    return resp


async def api_users(request: web.Request) -> web.StreamResponse:
    session = await session_of(request)
    # ``cursor`` is the poll position the list is exact at: a tab that
    # (re)loads counts what arrives after it on top of the list's counts.
    return api_json(await request.app[GATEWAY_KEY].users(session))


async def api_poll(request: web.Request) -> web.StreamResponse:
    session = await session_of(request)
    cursor = query_int(request, "cursor")
    wait_ms = query_int(request, "wait_ms", 0, MAX_WAIT_MS) or 0
    reply = await request.app[GATEWAY_KEY].poll(session, cursor, wait_ms / 1000)
    # The buffer keeps events encoded: the body is joined, not re-encoded.
    return web.Response(
        body=reply.body(), content_type="application/json", charset="utf-8", headers=NO_STORE
    )


async def api_ws(request: web.Request) -> web.StreamResponse:
    """The WebSocket push stream (docs/protocol.md#websocket-push)."""
    session = await session_of(request)  # no cookie: 401 before any upgrade
    why = origin_refusal(request, "open a socket here")
    if why is not None:  # cross-site WebSocket hijacking: 403, no upgrade
        raise ApiError("csrf", why)
    cursor = query_int(request, "cursor")
    if not session.connected:  # the core is away: 503 as for a poll, no upgrade
        raise CoreUnavailable("reconnecting to the core")
    bound = request.app[CONFIG_KEY].ws_send_buffer
    ws = open_socket(bound)
    ws.headers.update(SECURITY_HEADERS)
    await ws.prepare(request)
    assert request.transport is not None
    config = request.app[CONFIG_KEY]
    await push(
        request.app[GATEWAY_KEY], session, ws, request.transport, cursor, bound, config.ws_keepalive
    )
    return ws


async def api_send(request: web.Request) -> web.StreamResponse:
    session = await session_of(request)
    body = await json_body(request)
    fields = pick(body, "to", "room", "text", "client_msg_id")
    reply = await request.app[GATEWAY_KEY].call(session, "send_message", **fields)
    return api_json({"message": reply["message"]})


async def api_history(request: web.Request) -> web.StreamResponse:
    session = await session_of(request)
    fields: dict[str, Any] = pick(dict(request.query), "with", "room")
    for name in ("before", "limit"):
        value = query_int(request, name, lo=-(2**53))
        if value is not None:
            fields[name] = value
    reply = await request.app[GATEWAY_KEY].call(session, "history", **fields)
    return api_json({"messages": reply["messages"], "has_more": reply["has_more"]})


async def api_read(request: web.Request) -> web.StreamResponse:
    session = await session_of(request)
    body = await json_body(request)
    await request.app[GATEWAY_KEY].call(session, "read", **pick(body, "with", "room", "up_to"))
    return web.Response(status=204)


# -- rooms (docs/protocol.md#rooms) ------------------------------------------------------------
async def api_rooms(request: web.Request) -> web.StreamResponse:
    session = await session_of(request)
    # Like the user list: ``cursor`` is the poll position its counts hold at.
    return api_json(await request.app[GATEWAY_KEY].rooms(session))


async def api_create_room(request: web.Request) -> web.StreamResponse:
    session = await session_of(request)
    body = await json_body(request)
    fields = pick(body, "room", "private", "members")
    reply = await request.app[GATEWAY_KEY].call(session, "create_room", **fields)
    return web.json_response({"room": reply["room"]}, status=201, headers=NO_STORE)


async def api_join_room(request: web.Request) -> web.StreamResponse:
    session = await session_of(request)
    await json_body(request)
    room = request.match_info["name"]
    reply = await request.app[GATEWAY_KEY].call(session, "join_room", room=room)
    return api_json({"room": reply["room"]})


async def api_leave_room(request: web.Request) -> web.StreamResponse:
    session = await session_of(request)
    await json_body(request)
    await request.app[GATEWAY_KEY].call(session, "leave_room", room=request.match_info["name"])
    return web.Response(status=204)


async def api_add_member(request: web.Request) -> web.StreamResponse:
    session = await session_of(request)
    body = await json_body(request)
    fields = {"room": request.match_info["name"], **pick(body, "username")}
    await request.app[GATEWAY_KEY].call(session, "add_member", **fields)
    return web.Response(status=204)


async def api_room_members(request: web.Request) -> web.StreamResponse:
    session = await session_of(request)
    room = request.match_info["name"]
    reply = await request.app[GATEWAY_KEY].call(session, "room_members", room=room)
    return api_json({"members": reply["members"]})


async def healthz(request: web.Request) -> web.StreamResponse:
    if await request.app[GATEWAY_KEY].healthy():
        return web.json_response({"status": "ok"})
    return web.json_response({"status": "unavailable", "error": "core_unavailable"}, status=503)


def _routes(app: web.Application) -> None:
    """Every route of the app, in one place."""
    app.router.add_get("/", chat_page, name="chat")
    app.router.add_get("/login", login_page, name="login")
    app.router.add_post("/api/login", api_login)
    app.router.add_post("/api/logout", api_logout)
    app.router.add_get("/api/users", api_users)
    app.router.add_get("/api/poll", api_poll)
    app.router.add_get("/api/ws", api_ws)
    app.router.add_post("/api/messages", api_send)
    app.router.add_get("/api/history", api_history)
    app.router.add_post("/api/read", api_read)
    app.router.add_get("/api/rooms", api_rooms)
    app.router.add_post("/api/rooms", api_create_room)
    app.router.add_post("/api/rooms/{name}/join", api_join_room)
    app.router.add_post("/api/rooms/{name}/leave", api_leave_room)
    app.router.add_post("/api/rooms/{name}/members", api_add_member)
    app.router.add_get("/api/rooms/{name}/members", api_room_members)
    app.router.add_get("/healthz", healthz)
    app.router.add_static("/static/", HERE / "static", name="static")


# -- the application ----------------------------------------------------------------------------
def connect_host(host: str) -> str:
    """Where to reach a server listening on ``host`` from this machine."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Start the embedded core (if any), then the gateway; stop them in reverse."""
    config = app[CONFIG_KEY]
    gateway = app[GATEWAY_KEY]
    if config.database_url is not None:
        try:
            store = await SessionStore.open(config.database_url)
        except SessionStoreUnavailable as exc:
            raise StoreError(f"--database-url (browser sessions): {exc}") from None
        gateway.shared = SharedSessions(store, gateway, config.session_refresh)
    core: CoreServer | None = None
    if config.core is None:
        try:
            core = await CoreServer.start(
                ServerConfig(
                    host=config.host,
                    port=config.core_port,
                    data_dir=config.data_dir,
                    fsync=config.fsync,
                    tls=config.tls,
                    database_url=config.database_url,
                )
            )
        except BaseException:
            if gateway.shared is not None:
                await gateway.shared.close()
            raise
        app[CORE_KEY] = core
        gateway.core = (connect_host(config.host), core.port)
    await gateway.start()
    if gateway.shared is not None:
        gateway.shared.start()
    yield
    await gateway.close()
    if core is not None:
        await core.stop()


async def _on_shutdown(app: web.Application) -> None:
    # Held polls answer now, so shutting down does not wait out their wait_ms.
    app[GATEWAY_KEY].begin_shutdown()


def create_app(config: WebConfig | None = None) -> web.Application:
    """The web app; with ``config.core`` unset it also runs an embedded core."""
    config = config or WebConfig()
    app = web.Application(middlewares=[guard], client_max_size=config.max_body_bytes)
    app[CONFIG_KEY] = config
    app[GATEWAY_KEY] = Gateway(
        config.core,
        core_tls=config.core_tls,
        idle_timeout=config.idle_timeout,
        buffer_events=config.buffer_events,
        max_sessions_per_user=config.max_sessions_per_user,
        max_sessions_per_address=config.max_sessions_per_ip,
        max_sessions=config.max_sessions,
        failed_logins=FailedLogins(
            burst=config.failed_logins_per_minute, refill=60 / config.failed_logins_per_minute
        ),
    )
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_on_shutdown)
    _routes(app)
    return app
