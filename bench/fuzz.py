"""Fuzz the codec and the chat rules with hypothesis (issue 7, hardening).

Two components take bytes and requests from strangers, so both are fuzzed here:

* ``protocol.FrameDecoder.feed``: arbitrary bytes (random garbage mixed with
  real and almost-real frames) cut at arbitrary points. It must never raise
  while alive (a ``bad_frame`` item is the last thing a decoder returns; only a
  ``feed`` after that raises, as documented), never buffer more than
  ``max_bytes + 9`` bytes, return the same items however the bytes are split,
  and give back every encoded object unchanged.
* ``ChatService.handle``: arbitrary request dicts (the real purposes plus random
  strings; fields of every JSON type: huge and negative integers, floats, lone
  surrogates, nested lists and objects; plus plausible values so the deep paths
  run) on sessions that are logged in or not, with held polls, exits and
  dropped connections in between. ``handle`` must never raise; every reply
  (immediate, held-poll or future) is a dict with ``purpose`` and ``ok``, an
  error code from the protocol's set when not ok, and encodable by
  ``protocol.encode`` within the frame limit.

Usage::

    python bench/fuzz.py --examples 100000          # every property, 100k examples each
    python bench/fuzz.py --examples 2000 --only service

tests/test_fuzz_short.py runs the same properties with a few hundred examples. The
inputs and codec checks live in bench/_fuzz_codec.py, the request strategies in
bench/_fuzz_requests.py; this file has the service harness and the runner.

Two cost settings differ from production, both documented here: the send
rate limit is raised (or after 600 sends every ``send_message`` would stop at
``rate_limited`` and the storing path would go unfuzzed), and the demo users'
argon2 hashes (and the dummy hash verified for unknown names) use minimal
parameters, so a fuzzed login costs microseconds instead of ~40 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _fuzz_codec import ENCODABLE, STREAMS, check_roundtrip, check_stream  # noqa: E402
from _fuzz_requests import DEMO, SCENARIOS, TOKEN  # noqa: E402
from argon2 import PasswordHasher  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from legacy_socket_server import users as users_module  # noqa: E402
from legacy_socket_server.chat import ChatService, Session  # noqa: E402
from legacy_socket_server.protocol import (  # noqa: E402
    FrameDecoder,
    ProtocolError,
    decode_data,
    encode,
)
from legacy_socket_server.store import HistoryStore  # noqa: E402
from legacy_socket_server.tokens import TokenStore  # noqa: E402
from legacy_socket_server.users import UserStore  # noqa: E402

#: Every error code docs/protocol.md#requests-and-replies allows in a ChatService.handle reply.
ERROR_CODES = frozenset(
    {
        "bad_request",
        "unknown_purpose",
        "not_logged_in",
        "invalid_credentials",
        "rate_limited",
        "invalid_token",
        "unknown_user",
        "empty_text",
        "text_too_long",
        "storage_unavailable",
        "too_many_sessions",
        "invalid_name",
        "room_exists",
        "unknown_room",
        "not_a_member",
    }
)


# -- the service harness ------------------------------------------------------------------------
class ServiceHarness:
    """A real ChatService over real stores in a temp dir, on its own event loop."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="chat-fuzz-")
        data = Path(self._tmp.name)
        cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        users_module._DUMMY_HASH = cheap.hash("not a real password")
        (data / "users.json").write_text(
            json.dumps({n: {"password_hash": cheap.hash(p)} for n, p in DEMO.items()})
        )
        logging.getLogger("legacy_socket_server").setLevel(logging.CRITICAL)
        self.loop = asyncio.new_event_loop()
        self.svc: ChatService = self.loop.run_until_complete(self._make(data))
        self.tokens: dict[str, str] = {}
        self.replies = 0
        self.errors: dict[str, int] = {}
        self.outcomes: dict[str, int] = {}

    @staticmethod
    async def _make(data: Path) -> ChatService:
        return ChatService(
            UserStore(data),
            HistoryStore(data, fsync="everysec", min_compact_bytes=64 * 1024 * 1024),
            TokenStore(data),
            send_burst=1e12,
            send_rate=1e12,
        )

    def close(self) -> None:
        self.loop.run_until_complete(asyncio.sleep(0))
        self.svc.close()
        self.loop.close()
        self._tmp.cleanup()

    # -- checks --
    def check_reply(self, reply: Any, purpose: Any) -> None:
        assert isinstance(reply, dict), f"reply is not a dict: {reply!r}"
        assert "purpose" in reply and reply["purpose"] == purpose, reply
        assert reply.get("ok") in (True, False), reply
        key = f"{reply['purpose']}:{'ok' if reply['ok'] else reply.get('error')}"
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        if not reply["ok"]:
            assert reply.get("error") in ERROR_CODES, f"unknown error code in {reply!r}"
            assert isinstance(reply.get("message"), str) and reply["message"], reply
            self.errors[reply["error"]] = self.errors.get(reply["error"], 0) + 1
        # Raises if it could not be sent; what arrives must be what was meant (a NaN
        # would arrive as null).
        packet = encode(reply, self.svc.max_frame_bytes)
        assert FrameDecoder(self.svc.max_frame_bytes).feed(packet) == [reply], reply
        self.replies += 1

    # -- one scenario --
    def run(self, scenario: tuple[list[str | None], list[tuple[int, str, dict]], bool]) -> None:
        self.loop.run_until_complete(self._run(*scenario))

    async def _session(self, user: str | None, out: list[tuple[Session, dict]]) -> Session:
        s = Session(lambda r: out.append((s, r)), peer="fuzz")
        if user is None:
            return s
        token = self.tokens.get(user)
        reply = None
        if token is not None:
            reply = self.svc.handle(s, {"purpose": "resume", "token": token})
        if reply is None or not reply["ok"]:  # first use, or a fuzzed exit ended the token
            # Mint the token directly (as bench/_setup.py does): a fuzzed storm of
            # wrong passwords may have locked the name's login, which is not our topic.
            s = Session(lambda r: out.append((s, r)), peer="fuzz")
            token = self.svc.tokens.issue(user, self.svc.users.fingerprint(user) or "")
            reply = self.svc.handle(s, {"purpose": "resume", "token": token})
            assert isinstance(reply, dict) and reply["ok"], reply
            self.tokens[user] = token
        return s

    def _resolve(self, req: dict[str, Any], session: Session) -> dict[str, Any]:
        req = dict(req)
        if req.get("token") == TOKEN:
            live = session.token or next(iter(self.tokens.values()), None)
            req["token"] = live if live is not None else "no token yet"
        cur = req.get("cursor")
        if isinstance(cur, tuple):
            req["cursor"] = self.svc.cursor() + cur[1]
        return req

    async def _run(
        self, logins: list[str | None], steps: list[tuple[int, str, dict]], via_codec: bool
    ) -> None:
        out: list[tuple[Session, dict]] = []  # held-poll replies arrive here
        sessions = [await self._session(u, out) for u in logins]
        pending: list[tuple[asyncio.Future, Any]] = []
        try:
            for index, action, raw in steps:
                s = sessions[index % len(sessions)]
                if s.closed:
                    continue  # exited or dropped: the server reads nothing more from it
                if action == "drop":
                    self.svc.disconnect(s)
                    continue
                if action == "tick":
                    await asyncio.sleep(0.002)
                    continue
                req = self._resolve(raw, s)
                if via_codec:
                    try:
                        # What a client on the wire can send: ASCII escapes let lone
                        # surrogates through, huge numbers too (then the decoder judges).
                        data = json.dumps(req, ensure_ascii=True).encode()
                    except ValueError:
                        continue
                    try:
                        req = decode_data(data)
                    except ProtocolError as exc:
                        assert exc.code == "bad_request", exc
                        continue
                result = self.svc.handle(s, req)  # must never raise
                if isinstance(result, asyncio.Future):
                    pending.append((result, req["purpose"]))
                elif result is not None:
                    self.check_reply(result, req["purpose"])
                elif req["purpose"] != "poll":
                    raise AssertionError(f"no reply to {req!r}")
            await asyncio.sleep(0)
            for fut, purpose in pending:
                self.check_reply(await asyncio.wait_for(fut, 5), purpose)
        finally:
            for s in sessions:
                self.svc.disconnect(s)
        for _s, reply in out:
            self.check_reply(reply, reply.get("purpose"))
            assert reply["purpose"] == "poll" and reply["ok"], reply


# -- runners --------------------------------------------------------------------------------------
def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


def codec_stream_property(examples: int) -> Callable[[], None]:
    @_settings(examples)
    @given(STREAMS)
    def prop(case: tuple[bytes, list[int], int]) -> None:
        check_stream(*case)

    return prop


def codec_roundtrip_property(examples: int) -> Callable[[], None]:
    @_settings(examples)
    @given(st.lists(ENCODABLE, max_size=6), st.lists(st.integers(0, 5000), max_size=8))
    def prop(objs: list[dict[str, Any]], points: list[int]) -> None:
        check_roundtrip(objs, points)

    return prop


def service_property(examples: int, harness: ServiceHarness) -> Callable[[], None]:
    @_settings(examples)
    @given(SCENARIOS)
    def prop(scenario: Any) -> None:
        harness.run(scenario)

    return prop


def run_one(name: str, examples: int) -> str:
    """Run one property for ``examples`` examples; return a summary line (raises on failure)."""
    if name == "service":
        harness = ServiceHarness()
        try:
            service_property(examples, harness)()
        finally:
            replies, errors = harness.replies, dict(sorted(harness.errors.items()))
            stored = len(harness.svc._messages)
            harness.close()
        return f"{replies} replies checked, {stored} messages stored, errors {errors}"
    prop = codec_stream_property if name == "codec" else codec_roundtrip_property
    prop(examples)()
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=10_000, help="examples per property")
    parser.add_argument(
        "--only", choices=["codec", "roundtrip", "service"], action="append", default=None
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes per property (examples are split)"
    )
    args = parser.parse_args(argv)
    chosen = args.only or ["codec", "roundtrip", "service"]
    total = time.perf_counter()
    failed = False
    for name in chosen:
        t0 = time.perf_counter()
        if args.jobs <= 1:
            detail = run_one(name, args.examples)
        else:
            # Independent processes, each with its own random seed and share of examples.
            share = -(-args.examples // args.jobs)
            procs = [
                subprocess.Popen(
                    [sys.executable, __file__, "--examples", str(share), "--only", name],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for _ in range(args.jobs)
            ]
            outs = [p.communicate()[0] for p in procs]
            failed |= any(p.returncode for p in procs)
            detail = " | ".join(o.strip().splitlines()[0] for o in outs if o.strip())
        status = "FAILED" if failed else "no failure"
        print(
            f"{name}: {args.examples} examples in {time.perf_counter() - t0:.1f} s, "
            f"{status}{'; ' + detail if detail else ''}",
            flush=True,
        )
    print(f"total {time.perf_counter() - total:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
