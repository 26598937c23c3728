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

tests/test_fuzz_short.py runs the same properties with a few hundred examples.

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
from argon2 import PasswordHasher  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from legacy_socket_server import users as users_module  # noqa: E402
from legacy_socket_server.chat import HANDLERS, ChatService, Session  # noqa: E402
from legacy_socket_server.protocol import (  # noqa: E402
    FrameDecoder,
    ProtocolError,
    decode_data,
    encode,
)
from legacy_socket_server.store import HistoryStore  # noqa: E402
from legacy_socket_server.tokens import TokenStore  # noqa: E402
from legacy_socket_server.users import UserStore  # noqa: E402

DEMO = {"Alice": "123", "Bob": "456", "Charlie": "789"}
PURPOSES = sorted(HANDLERS)
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
FIELDS = (
    "id",
    "username",
    "password",
    "token",
    "to",
    "with",
    "text",
    "client_msg_id",
    "cursor",
    "wait_ms",
    "before",
    "limit",
    "up_to",
    "room",
    "private",
    "members",
    "echo",
)
LONE_SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff", "a\ud83d", "\ude00b"]

#: Markers replaced at run time by live values (a real token, the current cursor).
TOKEN = "<live token>"
CURSOR = "<live cursor>"


# -- strategies ---------------------------------------------------------------------------------
def _texts() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=30),
        st.sampled_from(LONE_SURROGATES),
        st.builds(
            lambda a, s, b: a + s + b,
            st.text(max_size=5),
            st.sampled_from(LONE_SURROGATES),
            st.text(max_size=5),
        ),
        st.sampled_from(["", " ", "\n\t ", "\u3000", "\x00", "x" * 10_000, "é" * 10_001]),
        st.integers(0, 70).map(lambda n: "k" * n),
    )


def _ints() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(-5, 300),
        st.integers(),
        st.sampled_from([-(2**63), 2**63, 2**64 + 1, 10**30, -(10**30), 10**400, 2**53 + 1]),
    )


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    _ints(),
    st.floats(),  # NaN and infinities included: handle must refuse, not crash
    _texts(),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)

PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "id": st.one_of(st.integers(0, 10**6), st.text(max_size=70)),
    "username": st.sampled_from([*DEMO, "alice", "Nobody", ""]),
    "password": st.sampled_from([*DEMO.values(), "wrong", ""]),
    "token": st.just(TOKEN),
    "to": st.sampled_from(["Bob", "Charlie", "Alice", "Nobody"]),
    "with": st.sampled_from(["Bob", "Charlie", "Alice", "Nobody"]),
    "text": st.one_of(
        st.just("hi"), st.text(min_size=1, max_size=20), st.sampled_from(["  ", "x" * 10_001])
    ),
    "client_msg_id": st.one_of(
        st.uuids().map(str), st.sampled_from(["c1", "c2", "k" * 64, "k" * 65])
    ),
    "cursor": st.tuples(st.just(CURSOR), st.integers(-3, 3)),
    "wait_ms": st.one_of(st.integers(0, 5), st.sampled_from([30_000, 30_001, -1])),
    "before": st.integers(-2, 50),
    "limit": st.integers(-1, 205),
    "up_to": st.integers(-2, 10**6),
    "room": st.sampled_from(["general", "General", "side", "secret", "bad name", "", "x" * 41]),
    "private": st.booleans(),
    "members": st.lists(st.sampled_from([*DEMO, "Nobody"]), max_size=3),
    "echo": st.booleans(),
}

#: Sending and polling are where the state is; exit ends a session, so it comes rarely.
WEIGHTED_PURPOSES = ["send_message"] * 4 + ["poll"] * 3 + [
    "history", "read", "users", "login", "resume", "ping", "exit",
    "rooms", "create_room", "join_room", "leave_room", "add_member", "room_members",
]  # fmt: skip
assert set(WEIGHTED_PURPOSES) == set(PURPOSES)

#: The fields each purpose reads (the rest are ignored, so they are sent more rarely).
FIELDS_FOR: dict[str, tuple[str, ...]] = {
    "login": ("username", "password"),
    "resume": ("token",),
    "send_message": ("to", "text", "client_msg_id"),
    "poll": ("cursor", "wait_ms"),
    "history": ("with", "before", "limit"),
    "read": ("with", "up_to", "echo"),
    "create_room": ("room", "private", "members"),
    "join_room": ("room",),
    "leave_room": ("room",),
    "add_member": ("room", "username"),
    "room_members": ("room",),
}


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """One request dict: a purpose, its fields (mostly plausible, sometimes wild), extras."""
    # Hypothesis favours small draws (0 and the first element), so the plain,
    # plausible choice sits there and the wild one at the far end.
    if draw(st.integers(0, 9)) == 9:
        purpose = draw(st.text(max_size=12))
    else:
        purpose = draw(st.sampled_from(WEIGHTED_PURPOSES))
    req: dict[str, Any] = {}
    if draw(st.integers(0, 7)) == 7:
        req.update(draw(st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=2)))
    names = list(FIELDS_FOR.get(purpose, ()))
    if draw(st.integers(0, 3)) == 3:
        names += draw(st.lists(st.sampled_from(FIELDS), max_size=2, unique=True))
    for name in names:
        if name in req or draw(st.integers(0, 9)) == 9:
            continue  # a missing field now and then
        wild = draw(st.integers(0, 4)) == 4
        req[name] = draw(JSON_VALUES if wild else PLAUSIBLE[name])
    req["purpose"] = purpose
    return req


#: One step of a scenario: (session index, action, request). Actions: "req" sends
#: the request, "drop" loses the connection, "tick" lets the loop run a little
#: (held-poll timers fire).
STEPS = st.tuples(
    st.integers(0, 3),
    st.sampled_from(["req"] * 20 + ["drop", "tick"]),
    requests(),
)
SCENARIOS = st.tuples(
    # each session: logged in as this user first, or not logged in (None)
    st.lists(st.sampled_from(["Alice", "Bob", "Charlie", None]), min_size=1, max_size=4),
    st.lists(STEPS, min_size=1, max_size=8),
    st.booleans(),  # send requests through the codec (encode/decode) or hand them over as-is
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
