"""Request strategies for ``bench/fuzz.py``: what strangers may send ``ChatService.handle``.

The real purposes (weighted towards sending and polling, where the state is) and random
strings; each purpose's fields mostly plausible, sometimes any JSON value (huge and
negative integers, floats, lone surrogates, nested lists and objects); scenarios of
several sessions with dropped connections and timer ticks in between.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from legacy_socket_server.chat import HANDLERS

DEMO = {"Alice": "123", "Bob": "456", "Charlie": "789"}
PURPOSES = sorted(HANDLERS)
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
