"""The codec (docs/protocol.md#framing): encode, FrameDecoder, every error case."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legacy_socket_server.contract import iso_timestamp
from legacy_socket_server.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameDecoder,
    PreEncoded,
    ProtocolError,
    decode_data,
    encode,
    parse_json,
    poll_reply_packet,
    poll_reply_tail,
    poll_request_packet,
)


def frame(data: bytes) -> bytes:
    return b"$%d%s$" % (len(data), data)


def only_error(items: list[Any]) -> ProtocolError:
    assert len(items) == 1 and isinstance(items[0], ProtocolError), items
    return items[0]


# -- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj",
    [
        {"purpose": "ping"},
        {"purpose": "send_message", "id": 7, "to": "Bob", "text": 'héllo 👋 中文 "q" \\ \n'},
        {"purpose": "x", "nested": {"a": [1, 2.5, None, True, False, {"b": []}]}},
        {"purpose": "big", "text": "é" * 100_000},
        {"purpose": ""},
    ],
)
def test_round_trip(obj: dict[str, Any]) -> None:
    data = encode(obj)
    assert data.startswith(b"$") and data.endswith(b"$")
    dec = FrameDecoder()
    assert dec.feed(data) == [obj]
    assert dec.pending == 0


def test_len_counts_bytes_not_characters() -> None:
    data = encode({"purpose": "p", "t": "€"})
    body = json.dumps({"purpose": "p", "t": "€"}, ensure_ascii=False, separators=(",", ":"))
    assert data == b"$%d%s$" % (len(body.encode()), body.encode())
    assert len(body.encode()) == len(body) + 2  # the euro sign is 3 bytes


def test_encode_refuses_over_limit_and_stays_json() -> None:
    with pytest.raises(ValueError):
        encode({"purpose": "p", "t": "x" * 100}, max_bytes=50)
    assert encode({"purpose": "p", "t": "x" * 10}, max_bytes=50)
    # Nothing the core sends holds a float; if one ever were NaN the packet would still be JSON.
    assert decode_data(encode({"purpose": "p", "n": float("nan")})[3:-1]) == {
        "purpose": "p",
        "n": None,
    }
    with pytest.raises(ValueError):  # a lone surrogate cannot be UTF-8
        encode({"purpose": "p", "t": "\ud800"})


def test_byte_by_byte() -> None:
    objs = [{"purpose": "a", "n": i, "t": "ü" * i} for i in range(5)]
    stream = b"".join(encode(o) for o in objs)
    dec = FrameDecoder()
    got: list[Any] = []
    for b in stream:
        got.extend(dec.feed(bytes([b])))
        assert dec.pending <= len(stream)
    assert got == objs
    assert dec.pending == 0


@pytest.mark.parametrize("cut", range(1, 30))
def test_every_split_point(cut: int) -> None:
    stream = encode({"purpose": "a", "t": "abcdefghij"}) + encode({"purpose": "b"})
    dec = FrameDecoder()
    got = dec.feed(stream[:cut]) + dec.feed(stream[cut:])
    assert got == [{"purpose": "a", "t": "abcdefghij"}, {"purpose": "b"}]


def test_coalesced_packets_and_pending() -> None:
    objs = [{"purpose": "m", "i": i} for i in range(1000)]
    stream = b"".join(encode(o) for o in objs)
    dec = FrameDecoder()
    half = encode({"purpose": "tail"})
    assert dec.feed(stream + half[:5]) == objs
    assert dec.pending == 5
    assert dec.feed(half[5:]) == [{"purpose": "tail"}]
    assert dec.pending == 0


def test_leading_zeros_in_len() -> None:
    dec = FrameDecoder()
    assert dec.feed(b'$0016{"purpose":"ok"}$') == [{"purpose": "ok"}]


# -- framing errors: fatal, the decoder is dead afterwards ------------------------------


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b'{"purpose":"ping"}', "start with '$'"),
        (b"x", "start with '$'"),
        (b'${"purpose":"ping"}$', "missing"),
        (b"$12345678{", "7 digits"),
        (b"$99999999", "7 digits"),
        (b"$1048577{", "limit"),
        (b'$18{"purpose":"ping"}X', "end with '$'"),
        (b'$17{"purpose":"ping"}$', "end with '$'"),
    ],
)
def test_framing_errors(data: bytes, words: str) -> None:
    dec = FrameDecoder()
    err = only_error(dec.feed(data))
    assert err.code == "bad_frame" and err.fatal
    assert words in err.message
    reply = err.to_reply()
    assert reply == {"purpose": "error", "ok": False, "error": "bad_frame", "message": err.message}
    assert dec.pending == 0
    with pytest.raises(ProtocolError) as again:
        dec.feed(encode({"purpose": "ping"}))
    assert again.value.code == "bad_frame"


def test_packets_before_a_framing_error_are_returned() -> None:
    dec = FrameDecoder()
    items = dec.feed(encode({"purpose": "a"}) + encode({"purpose": "b"}) + b"garbage")
    assert items[:2] == [{"purpose": "a"}, {"purpose": "b"}]
    assert isinstance(items[2], ProtocolError) and items[2].code == "bad_frame"
    assert len(items) == 3


def test_len_at_limit_is_accepted_over_is_not() -> None:
    dec = FrameDecoder(max_bytes=30)
    body = b'{"purpose":"p","t":"' + b"x" * 8 + b'"}'
    assert len(body) == 30
    assert dec.feed(frame(body)) == [{"purpose": "p", "t": "x" * 8}]
    err = only_error(FrameDecoder(max_bytes=30).feed(b"$31{"))
    assert err.code == "bad_frame"


def test_len_over_limit_detected_before_body_arrives() -> None:
    dec = FrameDecoder()
    err = only_error(dec.feed(b"$%d{" % (DEFAULT_MAX_FRAME_BYTES + 1)))
    assert err.code == "bad_frame"


def test_max_bytes_must_fit_seven_digits() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_bytes=10_000_000)
    with pytest.raises(ValueError):
        FrameDecoder(max_bytes=0)
    FrameDecoder(max_bytes=9_999_999)


# -- bad requests: one packet only, the stream goes on ------------------------------


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b'{"purpose":"\xff"}', "UTF-8"),
        (b'{"purpose":"\xed\xa0\x80"}', "UTF-8"),  # an encoded surrogate is not UTF-8
        (b"not json", "JSON"),
        (b"", "JSON"),
        (b'{"purpose":"ping"', "JSON"),
        (b'["purpose","ping"]', "object"),
        (b'"ping"', "object"),
        (b"null", "object"),
        (b"{}", "purpose"),
        (b'{"purpose":1}', "purpose"),
        (b'{"purpose":null}', "purpose"),
        (b'{"purpose":"p","x":NaN}', "NaN"),
        (b'{"purpose":"p","x":Infinity}', "Infinity"),
        (b'{"purpose":"p","x":-Infinity}', "Infinity"),
        (b'{"purpose":"p","x":' + DEEP + b"}", "deep"),
        (b'{"purpose":"p","x":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}", "deep"),
        (b'{"purpose":"p","n":' + b"9" * 5000 + b"}", "JSON"),
        (b'{"purpose":"\\ud800"}', "purpose"),
    ],
)
def test_bad_requests_keep_the_stream(data: bytes, words: str) -> None:
    dec = FrameDecoder()
    items = dec.feed(frame(data) + encode({"purpose": "after"}))
    assert len(items) == 2, items
    err = items[0]
    assert isinstance(err, ProtocolError)
    assert err.code == "bad_request" and not err.fatal
    assert words.lower() in err.message.lower(), err.message
    assert err.to_reply()["purpose"] == "error"
    assert items[1] == {"purpose": "after"}
    assert dec.pending == 0


def test_decode_data_direct() -> None:
    assert decode_data(b'{"purpose":"ping","id":"x"}') == {"purpose": "ping", "id": "x"}
    with pytest.raises(ProtocolError) as exc:
        decode_data(b"[]")
    assert exc.value.code == "bad_request"


def test_flood_of_small_frames_is_linear() -> None:
    # 200,000 frames in one feed: a quadratic decoder would take minutes.
    one = encode({"purpose": "p"})
    dec = FrameDecoder()
    items = dec.feed(one * 200_000)
    assert len(items) == 200_000


def test_a_large_packet_in_small_reads_is_linear() -> None:
    # 16,000 reads of 64 bytes: copying what is held at each read would move gigabytes.
    big = encode({"purpose": "p", "text": "x" * (DEFAULT_MAX_FRAME_BYTES - 40)})
    dec = FrameDecoder()
    chunks = [big[i : i + 64] for i in range(0, len(big), 64)]
    for n, chunk in enumerate(chunks[:-1]):
        assert dec.feed(chunk) == []
        assert dec.pending == min(len(big), 64 * (n + 1))
    [item] = dec.feed(chunks[-1] + encode({"purpose": "q"})[:3])
    assert item == {"purpose": "p", "text": "x" * (DEFAULT_MAX_FRAME_BYTES - 40)}
    assert dec.pending == 3


# -- property: arbitrary bytes never crash, the buffer stays bounded ------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    max_bytes=st.integers(min_value=1, max_value=64),
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=80),
            st.builds(
                lambda n, body: b"$%d" % n + body,
                st.integers(min_value=0, max_value=99),
                st.binary(max_size=70),
            ),
            st.builds(
                lambda s: b"$%d%s$" % (len(s.encode()), s.encode()),
                st.text(max_size=40),
            ),
        ),
        max_size=20,
    ),
)
def test_arbitrary_bytes_never_crash(max_bytes: int, chunks: list[bytes]) -> None:
    dec = FrameDecoder(max_bytes=max_bytes)
    for chunk in chunks:
        items = dec.feed(chunk)
        for k, item in enumerate(items):
            assert isinstance(item, (dict, ProtocolError))
            if isinstance(item, ProtocolError):
                assert item.code in ("bad_frame", "bad_request")
                if item.fatal:
                    assert k == len(items) - 1
            else:
                assert isinstance(item.get("purpose"), str)
        assert dec.pending <= max_bytes + 9
        if items and isinstance(items[-1], ProtocolError) and items[-1].fatal:
            with pytest.raises(ProtocolError):
                dec.feed(b"$")
            return


@settings(max_examples=200, deadline=None)
@given(
    objs=st.lists(
        st.dictionaries(
            st.text(max_size=5),
            st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
            max_size=4,
        ).map(lambda d: {**d, "purpose": "p"}),
        min_size=1,
        max_size=8,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
)
def test_any_split_of_valid_stream_round_trips(objs: list[dict[str, Any]], cuts: list[int]) -> None:
    # Strings drawn by hypothesis may hold lone surrogates, which JSON cannot carry.
    try:
        stream = b"".join(encode(o) for o in objs)
    except ValueError:
        return
    points = sorted({min(c, len(stream)) for c in cuts})
    dec = FrameDecoder()
    got: list[Any] = []
    prev = 0
    for p in [*points, len(stream)]:
        got.extend(dec.feed(stream[prev:p]))
        prev = p
    assert got == objs


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("rid", [7, 2**40, "tab-1", 'quote " and é', None])
def test_the_shared_poll_reply_is_byte_for_byte_the_general_encoding(
    rid: object, stream: bool
) -> None:
    event = PreEncoded(
        {"type": "message", "message": {"id": 9, "from": "Bob", "room": "general", "text": "hé"}}
    )
    base: dict = {"purpose": "poll"}
    if rid is not None:
        base["id"] = rid
    if stream:
        base["stream"] = True
    reply = {**base, "ok": True, "cursor": 123 << 32 | 9, "events": [event]}
    tail = poll_reply_tail(123 << 32 | 9, event)
    fast = poll_reply_packet(rid, tail, stream)  # type: ignore[arg-type]
    assert fast == encode(reply)
    assert FrameDecoder().feed(fast) == [json.loads(json.dumps(reply))]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("rid", "cursor"), [(1, 0), (2**40, (123 << 32) | 9), (7, 2**53 - 1)])
def test_the_poll_request_template_is_byte_for_byte_the_general_encoding(
    rid: int, cursor: int, stream: bool
) -> None:
    request: dict = {"purpose": "poll", "id": rid, "cursor": cursor, "wait_ms": 25_000}
    if stream:
        request["stream"] = True
    assert poll_request_packet(rid, cursor, 25_000, stream) == encode(request)


def test_message_timestamps_are_utc_milliseconds() -> None:
    before = datetime.now(UTC)
    stamps = [iso_timestamp() for _ in range(3)]
    after = datetime.now(UTC)
    for ts in stamps:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ts), ts
        when = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        # Milliseconds are cut, not rounded, as isoformat(timespec="milliseconds") does.
        assert before - timedelta(milliseconds=1) <= when <= after
    fixed = datetime(2026, 1, 2, 3, 4, 5, 678_999, tzinfo=UTC)
    assert iso_timestamp(lambda: fixed) == "2026-01-02T03:04:05.678Z"


@pytest.mark.parametrize(
    "raw", [b'{"a": NaN}', b'{"a": 1e400}', b'{"a": -Infinity}', b'{"a": "\\ud800"}', b"{", b"\xff"]
)
def test_parse_json_refuses_what_no_packet_may_carry(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_json(raw)


def test_parse_json_keeps_what_json_means() -> None:
    raw = b'{"n": 123456789012345678901234567890, "t": "\\u00e9 \xf0\x9f\x91\x8b"}'
    assert parse_json(raw) == {"n": 123456789012345678901234567890, "t": "é 👋"}
