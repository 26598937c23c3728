"""Codec properties for ``bench/fuzz.py``: what the framing decoder must do with any bytes.

Streams of well-formed, malformed and truncated frames, fed in arbitrary pieces,
must give the same items as one feed, never raise outside a fatal ``bad_frame``,
and every decoded object must be encodable again; encodable objects round-trip.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from legacy_socket_server.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameDecoder,
    ProtocolError,
    encode,
)

#: Objects the codec must carry unchanged.
ENCODABLE = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=8,
    ),
    max_size=4,
).map(lambda d: {**d, "purpose": str(d.get("purpose", "p"))})

FRAMEISH = st.one_of(
    st.binary(max_size=40),
    ENCODABLE.map(encode),
    st.sampled_from(
        [
            b"$",
            b"$0$",
            b"$2{}$",
            b"$9999999",
            b"$12345678",
            b"$3abc$",
            b"$4null$",
            b"$2[]",
            b'$15{"purpose":1}$',
            b'$15{"purpose":"\xff"}$',
            b"$7{NaN:1}$",
            b'$24{"purpose":"\\ud800"}$',
            b"x",
            b"$$",
        ]
    ),
    st.integers(0, 10**7).map(lambda n: b"$%d" % n),
)
STREAMS = st.tuples(
    st.lists(FRAMEISH, max_size=12).map(b"".join),
    st.lists(st.integers(0, 2000), max_size=8),  # split points
    st.sampled_from([DEFAULT_MAX_FRAME_BYTES, 1, 20, 64, 1000]),
)


def _split(data: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({p % (len(data) + 1) for p in points})
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def _normal(items: list[Any]) -> list[Any]:
    return [(i.code, i.message) if isinstance(i, ProtocolError) else i for i in items]


def check_stream(data: bytes, points: list[int], max_bytes: int) -> None:
    """Feeding ``data`` in pieces: no exception, bounded buffer, same items as in one go."""
    pieces = _split(data, points)
    dec = FrameDecoder(max_bytes)
    got: list[Any] = []
    for piece in pieces:
        items = dec.feed(piece)  # must not raise while the decoder is alive
        got.extend(items)
        assert dec.pending <= max_bytes + 9, (dec.pending, max_bytes)
        for k, item in enumerate(items):
            if isinstance(item, ProtocolError):
                assert item.code in ("bad_frame", "bad_request"), item.code
                if item.fatal:
                    assert k == len(items) - 1, "bad_frame must be the last item"
            else:
                assert isinstance(item, dict) and isinstance(item["purpose"], str), item
                encode(item)  # anything decoded can be echoed back
        if items and isinstance(items[-1], ProtocolError) and items[-1].fatal:
            try:
                dec.feed(b"more")
            except ProtocolError as exc:
                assert exc.code == "bad_frame"
            else:
                raise AssertionError("a dead decoder accepted more bytes")
            break
    whole = FrameDecoder(max_bytes).feed(data)
    assert _normal(got) == _normal(whole[: len(got)]), "splitting changed the result"


def check_roundtrip(objs: list[dict[str, Any]], points: list[int]) -> None:
    """Encoded objects come back unchanged, however the stream is cut."""
    data = b"".join(encode(o) for o in objs)
    dec = FrameDecoder()
    got: list[Any] = []
    for piece in _split(data, points):
        got.extend(dec.feed(piece))
    assert got == objs and dec.pending == 0
