"""Reading HTTP requests and writing error replies: the helpers every view shares.

The cookie, the query, the JSON body, the browser's address and origin
(docs/protocol.md#http-api), and the contract's error codes with their statuses.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from legacy_socket_server.addresses import normalize
from legacy_socket_server.protocol import parse_json
from legacy_socket_server.server import CoreServer

from .config import WebConfig
from .gateway import BrowserSession, Gateway

COOKIE = "chat_session"

CONFIG_KEY = web.AppKey("config", WebConfig)
GATEWAY_KEY = web.AppKey("gateway", Gateway)
CORE_KEY = web.AppKey("embedded_core", CoreServer)

STATUS = {
    "bad_request": 400,
    "empty_text": 400,
    "unknown_user": 400,
    "invalid_name": 400,
    "not_a_member": 403,
    "unknown_room": 404,
    "room_exists": 409,
    "not_logged_in": 401,
    "invalid_credentials": 401,
    "invalid_token": 401,
    "csrf": 403,
    "text_too_long": 413,
    "too_large": 413,
    "rate_limited": 429,
    "too_many_sessions": 429,
    "server_busy": 503,
    "core_unavailable": 503,
    "storage_unavailable": 503,
}

#: No inline script or style anywhere, so the policy can forbid both: an injected
#: ``<script>`` or ``onerror=`` would not run even if text ever reached the DOM as HTML.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
NO_STORE = {"Cache-Control": "no-store"}


class ApiError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_response(code: str, message: str) -> web.Response:
    return web.json_response(
        {"error": code, "message": message}, status=STATUS.get(code, 500), headers=NO_STORE
    )


def api_json(data: Any) -> web.Response:
    """A JSON reply that no cache keeps (it is one user's private state)."""
    return web.json_response(data, headers=NO_STORE)


# -- request helpers ------------------------------------------------------------------------
def is_https(request: web.Request) -> bool:
    """Was this request made over HTTPS (directly, or at a trusted proxy)?"""
    if request.secure:
        return True
    if request.app[CONFIG_KEY].trust_proxy:
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip()
        return proto.lower() == "https"
    return False


def client_address(request: web.Request) -> str:
    """The browser's address: the peer's, or the proxy's ``X-Forwarded-For`` with --trust-proxy.

    Our proxy appends the address it saw to the header, so the last entry is
    the one to believe; entries before it are whatever the client claimed.
    """
    if request.app[CONFIG_KEY].trust_proxy:
        forwarded = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
        if forwarded:
            return normalize(forwarded)
    return normalize(request.remote or "")


def own_origin(request: web.Request) -> str:
    host = request.host
    if request.app[CONFIG_KEY].trust_proxy:
        host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
    return f"{'https' if is_https(request) else 'http'}://{host}".lower()


def csrf_refusal(request: web.Request) -> str | None:
    """Why a POST is refused as cross-site, or None (docs/protocol.md#http-api)."""
    # A cross-site form can only send form or text content types; JSON needs CORS.
    if request.content_type != "application/json":
        return "a POST must send Content-Type: application/json"
    return origin_refusal(request, "post here")


def origin_refusal(request: web.Request, what: str) -> str | None:
    """Why a request from another site's page is refused, or None (no Origin: not a browser's
    cross-site request; a browser always sends Origin on POSTs and WebSocket upgrades)."""
    origin = request.headers.get("Origin")
    if origin is not None:
        origin = origin.rstrip("/").lower()
        if origin != own_origin(request) and origin not in request.app[CONFIG_KEY].allowed_origins:
            return f"origin {origin!r} may not {what}"
    return None


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError("too_large", "the request body is over the limit")
    try:
        body = parse_json(raw or b"{}")  # what the core can be sent as it is
    except ValueError:
        # The standard library decides what the fast parser refused: JSON in UTF-16 or
        # with a byte-order mark is JSON (RFC 8259 lets a parser accept it); NaN, 1e400
        # or "\ud800" parse but could not be sent on.
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ApiError("bad_request", "the body is not valid JSON")
        try:
            json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except ValueError:
            raise ApiError("bad_request", "the body holds NaN, an infinity or a lone surrogate")
    if not isinstance(body, dict):
        raise ApiError("bad_request", "the body must be a JSON object")
    return body


def query_int(request: web.Request, name: str, lo: int = 0, hi: int | None = None) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise ApiError("bad_request", f"{name} must be an integer")
    if number < lo or (hi is not None and number > hi):
        raise ApiError("bad_request", f"{name} must be between {lo} and {hi}")
    return number


def pick(body: dict[str, Any], *names: str) -> dict[str, Any]:
    """The named fields that are present, forwarded as sent (the core validates them)."""
    return {n: body[n] for n in names if n in body}


def session_cookie(request: web.Request) -> str | None:
    """The session cookie's value, or None.

    A plain split rather than ``request.cookies``: the generic parser builds a
    Morsel per cookie, ~8% of the 100 ms poll's CPU, for the one value we read.
    """
    for header in request.headers.getall("Cookie", ()):
        for part in header.split(";"):
            name, sep, value = part.partition("=")
            if sep and name.strip() == COOKIE:
                return value.strip()
    return None


async def session_of(request: web.Request) -> BrowserSession:
    """The request's session: one held here, else adopted from the shared table (with
    ``--database-url``); raise NotLoggedIn (401) when there is none."""
    gateway = request.app[GATEWAY_KEY]
    sid = session_cookie(request)
    session = gateway.sessions.get(sid) if sid else None
    if session is not None and not session.ended:
        return session
    return await gateway.adopt(sid, client_address(request))
