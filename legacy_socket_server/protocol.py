"""The framing codec: ``$<LEN><DATA>$`` packets carrying JSON objects.

Sans-IO, like h11 and wsproto: bytes go in through :meth:`FrameDecoder.feed`,
objects come out; :func:`encode` turns an object into bytes to send. Nothing
here touches a socket, so the server, the gateway, the desktop client and the
tests all share this one implementation (docs/protocol.md#framing).

Cost model: a read is scanned where it is, packet after packet, by offset; only an
incomplete packet's bytes are kept, and once its header is in they are not scanned
again until its length has arrived. A flood of small frames or a large packet in many
reads costs O(bytes received), never O(n^2).
"""

from __future__ import annotations

import json
from typing import Any, Final

import msgspec

from .contract import is_text

#: Largest DATA accepted or sent by default (docs/protocol.md#framing): big
#: enough for a 10,000-character message in any script, a history page or a
#: poll batch, small enough that one peer cannot make us buffer much.
DEFAULT_MAX_FRAME_BYTES = 1024 * 1024

#: LEN is 1 to 7 ASCII digits, so no limit above 9,999,999 can be expressed.
MAX_LEN_DIGITS: Final = 7

_DOLLAR: Final = 0x24  # "$"


class ProtocolError(Exception):
    """A packet that cannot be used, with the protocol's error ``code``.

    ``bad_frame`` is fatal (the stream cannot be resynchronised, the peer is
    told and disconnected); ``bad_request`` concerns one packet only.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def fatal(self) -> bool:
        return self.code == "bad_frame"

    def to_reply(self) -> dict[str, Any]:
        return {"purpose": "error", "ok": False, "error": self.code, "message": self.message}


def _reject_constant(name: str) -> Any:
    # json accepts NaN/Infinity by default; they are not JSON (RFC 8259).
    raise ValueError(f"{name} is not valid JSON")


# The standard library's coders, built once (json.loads/dumps with options construct
# a new coder per call). They are the reference: msgspec (below) does the work and
# they take over only where it refuses, so what is accepted, refused and written
# does not depend on msgspec's choices.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_FAST_DECODER = msgspec.json.Decoder()
_FAST_ENCODER = msgspec.json.Encoder()


def dumps(obj: Any) -> bytes:
    """``obj`` as compact UTF-8 JSON: the one encoder of packets, events and journal lines.

    msgspec writes the same strings as the standard library with
    ``ensure_ascii=False`` and compact separators (floats may differ in how an
    exponent is written: ``1e-7`` for ``1e-07``), 10x faster
    (docs/performance.md#core-efficiency). Where it refuses (a lone surrogate,
    a type it does not know) the standard library decides: it raises
    ``ValueError`` as before.
    """
    try:
        return _FAST_ENCODER.encode(obj)
    except (TypeError, ValueError):
        return _ENCODER.encode(obj).encode("utf-8")


class PreEncoded(dict):  # type: ignore[type-arg]
    """A JSON object that carries its own encoding, made once.

    An event that many clients receive (a room message) is encoded when it
    is made; a reply whose ``events`` are all ``PreEncoded`` is written by
    splicing their bytes, so the event is never encoded again per recipient.
    """

    __slots__ = ("json",)

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__(fields)
        self.json: bytes = dumps(fields)


_EMPTY_EVENTS_END = b'"events":[]}'


def _encode_data(obj: dict[str, Any]) -> bytes:
    events = obj.get("events")
    if events and type(events) is list and all(type(e) is PreEncoded for e in events):
        head = dumps({**obj, "events": []})
        if head.endswith(_EMPTY_EVENTS_END):  # "events" is the last field
            return b"%s%s]}" % (head[:-2], b",".join(e.json for e in events))
    return dumps(obj)


def poll_reply_tail(cursor: int, event: PreEncoded) -> bytes:
    """The end of a poll reply holding ``event`` alone, from its ``"ok"`` on.

    With :func:`poll_reply_packet` this writes exactly what :func:`encode` makes of
    ``{"purpose": "poll", "id": ID, "ok": true, "cursor": C, "events": [event]}``;
    a room message's tail is made once and shared by every member's reply.
    """
    return b'"ok":true,"cursor":%d,"events":[%s]}' % (cursor, event.json)


def poll_reply_packet(rid: int | str | None, tail: bytes, stream: bool = False) -> bytes:
    """A framed poll reply: the request's ``id`` (if it had one), ``stream``, a shared tail."""
    if stream:
        tail = b'"stream":true,' + tail
    if rid is None:
        data = b'{"purpose":"poll",' + tail
    elif type(rid) is int:
        data = b'{"purpose":"poll","id":%d,%s' % (rid, tail)
    else:
        data = b'{"purpose":"poll","id":%s,%s' % (dumps(rid), tail)
    return b"$%d%s$" % (len(data), data)


def poll_request_packet(rid: int, cursor: int, wait_ms: int, stream: bool = False) -> bytes:
    """Exactly what :func:`encode` makes of a ``poll`` request (``stream`` last, if asked):
    a client's hot path (a client without ``stream`` sends one per reply)."""
    data = b'{"purpose":"poll","id":%d,"cursor":%d,"wait_ms":%d%s}' % (
        rid,
        cursor,
        wait_ms,
        b',"stream":true' if stream else b"",
    )
    return b"$%d%s$" % (len(data), data)


def encode(obj: dict[str, Any], max_bytes: int | None = None) -> bytes:
    """Serialise one object as a packet.

    Raises ``ValueError`` if the DATA would exceed ``max_bytes`` or the object
    holds a string UTF-8 cannot carry (a lone surrogate). A float NaN is written as
    ``null`` (nothing the core sends holds a float).
    """
    data = _encode_data(obj)
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"packet of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    return b"$%d%s$" % (len(data), data)


def parse_json(data: bytes) -> Any:
    """Parse JSON that can be sent on as it is: ``ValueError`` for invalid JSON and for
    what JSON lets through but no packet may carry (NaN, an infinity such as ``1e400``,
    a lone surrogate), which :func:`encode` would not refuse (NaN becomes ``null``)."""
    try:
        return _FAST_DECODER.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def decode_data(data: bytes | bytearray) -> dict[str, Any]:
    """Parse one packet's DATA; raise ``ProtocolError('bad_request')`` if unusable."""
    try:
        obj = _FAST_DECODER.decode(data)
    except (msgspec.DecodeError, RecursionError):
        # Refused by msgspec: the standard library decides, and names the fault.
        obj = _decode_slowly(data)
    return _checked(obj)


def _decode_slowly(data: bytes | bytearray) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as bad_utf8:
        raise ProtocolError(
            "bad_request", f"packet is not valid UTF-8: {bad_utf8.reason}"
        ) from None
    try:
        obj = _DECODER.decode(text)
    except RecursionError:
        raise ProtocolError("bad_request", "JSON is nested too deeply") from None
    except ValueError as exc:
        raise ProtocolError("bad_request", f"packet is not valid JSON: {exc}") from None
    return obj


def _checked(obj: Any) -> dict[str, Any]:
    if type(obj) is not dict:  # decoded JSON: exactly a dict, or not an object
        raise ProtocolError("bad_request", "packet must be a JSON object")
    purpose = obj.get("purpose")
    if type(purpose) is not str:
        raise ProtocolError("bad_request", "packet needs a string 'purpose'")
    if not purpose.isascii() and not is_text(purpose):
        # Every reply echoes the purpose; one JSON accepted as "\ud800" could not be sent back.
        raise ProtocolError("bad_request", "'purpose' contains a lone surrogate")
    return obj


class FrameDecoder:
    """Incremental decoder: feed bytes, get complete objects back.

    :meth:`feed` returns, in order, one item per complete packet: the decoded
    object, or a :class:`ProtocolError` for a packet that cannot be used.
    ``bad_request`` items concern one packet; a ``bad_frame`` item is always
    the last one (packets decoded before it are still returned), after which
    the decoder is dead and every later ``feed`` raises that error.
    The buffered incomplete packet never exceeds ``max_bytes + 9`` bytes.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if not 0 < max_bytes <= 10**MAX_LEN_DIGITS - 1:
            raise ValueError("max_bytes must fit in 7 decimal digits")
        self.max_bytes = max_bytes
        self._buf = bytearray()
        #: Bytes the held packet has in all, once its header is in (0: not known yet).
        self._need = 0
        self._dead: ProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes of an incomplete packet held (0 between packets)."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[dict[str, Any] | ProtocolError]:
        if self._dead is not None:
            raise self._dead
        held = self._buf
        buf: bytes
        if held:
            held += data
            if len(held) < self._need:
                return []  # a large packet still arriving: not scanned again per read
            buf = bytes(held)
            held.clear()
        else:
            # Nothing held: parse ``data`` where it is (the common case: whole packets).
            buf = data if type(data) is bytes else bytes(data)
        out: list[dict[str, Any] | ProtocolError] = []
        try:
            pos = self._packets(buf, out)
        except ProtocolError as exc:
            self._dead = exc
            self._buf = bytearray()
            out.append(exc)
            return out
        if pos < len(buf):
            self._buf += buf[pos:] if pos else buf
        return out

    def _packets(self, buf: bytes, out: list[dict[str, Any] | ProtocolError]) -> int:
        """Decode the whole packets of ``buf`` into ``out``; where the incomplete one starts.

        ``buf`` is ``bytes``: compiled, each ``buf[i]`` is a machine integer (a
        ``bytearray`` or a regular expression costed a third of the core's decoding).
        """
        pos = 0
        end = len(buf)
        self._need = 0
        while pos < end:
            if buf[pos] != _DOLLAR:
                raise ProtocolError("bad_frame", "packet must start with '$'")
            i = pos + 1
            limit = min(end, i + MAX_LEN_DIGITS + 1)
            length = 0
            while i < limit:
                c = buf[i]
                if c < 48 or c > 57:  # not an ASCII digit
                    break
                length = length * 10 + c - 48
                i += 1
            ndigits = i - pos - 1
            if ndigits > MAX_LEN_DIGITS:
                raise ProtocolError("bad_frame", f"length has more than {MAX_LEN_DIGITS} digits")
            if i == end:
                break  # header still arriving
            if ndigits == 0:
                raise ProtocolError("bad_frame", "packet length is missing after '$'")
            if length > self.max_bytes:
                raise ProtocolError(
                    "bad_frame",
                    f"packet of {length} bytes exceeds the {self.max_bytes}-byte limit",
                )
            stop = i + length
            if stop >= end:
                self._need = stop + 1 - pos
                break  # body or trailing '$' still arriving
            if buf[stop] != _DOLLAR:
                raise ProtocolError("bad_frame", "packet must end with '$' after LEN bytes")
            try:
                out.append(decode_data(buf[i:stop]))
            except ProtocolError as exc:
                out.append(exc)
            pos = stop + 1
        return pos
