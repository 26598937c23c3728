"""Password login: the per-name lockout, then argon2 through the hash gate.

A mixin of :class:`~legacy_socket_server.chat.ChatService` (the rest of a login,
starting the session, is the service's): kept apart because it is the one
request whose reply may come later for CPU reasons rather than disk ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from mypy_extensions import trait

from .limits import HashGate, LoginThrottle
from .session import ChatError, Session
from .tokens import TokenStore
from .users import UserStore
from .validation import BadRequest, get_str

log = logging.getLogger(__name__)


@trait
class PasswordLogin:
    """``login``: judged by the throttle and argon2, spaced by the hash gate."""

    users: UserStore
    tokens: TokenStore
    throttle: LoginThrottle
    hash_gate: HashGate
    clock: Callable[[], float]

    def loop(self) -> asyncio.AbstractEventLoop:
        raise NotImplementedError

    def _start_session(self, session: Session, name: str, token: str) -> dict[str, Any]:
        raise NotImplementedError

    def _check_sessions(self, name: str) -> None:
        raise NotImplementedError

    def _login(self, session: Session, req: dict[str, Any], base: dict[str, Any]) -> Any:
        if session.username is not None:
            raise BadRequest("already logged in; log in again on a new connection")
        name = get_str(req, "username", max_len=64)
        password = get_str(req, "password", max_len=1024)
        client = get_str(req, "client", max_len=64, required=False)
        self._check_lock(name)
        # Only the argon2 check goes through the gate: it is what a storm of
        # logins under many names would pile onto the loop. The gate is fair
        # per client address; a trusted gateway names the browser's, and a
        # trusted connection that names none is not capped per address.
        key: object = session.client
        if session.trusted:
            key = client if client else session.id
        verdict = self.hash_gate.run(lambda: self._password_ok(session, name, password), key)
        if verdict is None:
            raise ChatError("rate_limited", "the server is busy with logins; try again in a moment")
        if not isinstance(verdict, asyncio.Future):
            return self._login_fields(session, name, verdict)
        reply: asyncio.Future[dict[str, Any]] = self.loop().create_future()

        def decided(f: asyncio.Future[bool | None]) -> None:
            if reply.done():
                return
            if f.cancelled():  # the gate closed (shutdown)
                reply.cancel()
                return
            try:
                reply.set_result(
                    {**base, "ok": True, **self._login_fields(session, name, f.result())}
                )
            except ChatError as exc:
                reply.set_result({**base, "ok": False, "error": exc.code, "message": exc.message})

        def abandoned(r: asyncio.Future[dict[str, Any]]) -> None:
            if r.cancelled():  # the connection went away: no hashing for nobody
                verdict.cancel()

        verdict.add_done_callback(decided)
        reply.add_done_callback(abandoned)
        return reply

    def _check_lock(self, name: str) -> None:
        wait = self.throttle.locked_for(name, self.clock())
        if wait:
            raise ChatError(
                "rate_limited", f"too many failed logins; try again in {int(wait) + 1} s"
            )

    def _password_ok(self, session: Session, name: str, password: str) -> bool | None:
        """The argon2 check; ``None`` when it no longer matters or may not run."""
        if session.closed or self.throttle.locked_for(name, self.clock()):
            return None  # gone while waiting, or locked meanwhile: spend nothing
        self.users.refresh()
        t0 = time.perf_counter()
        ok = self.users.verify(name, password)
        log.debug("argon2 verify took %.1f ms", (time.perf_counter() - t0) * 1000)
        return ok

    def _login_fields(self, session: Session, name: str, ok: bool | None) -> dict[str, Any]:
        """The reply fields once the password is judged; raise :class:`ChatError` if refused."""
        if session.closed:
            raise ChatError("not_logged_in", "the connection closed during login")
        if session.username is not None:  # two logins raced on one session
            raise ChatError("bad_request", "already logged in; log in again on a new connection")
        if ok is None:
            self._check_lock(name)
        if not ok:
            self.throttle.failed(name, self.clock())
            raise ChatError("invalid_credentials", "wrong user name or password")
        self.throttle.succeeded(name)
        self._check_sessions(name)
        token = self.tokens.issue(name, self.users.fingerprint(name) or "")
        return self._start_session(session, name, token)
