"""The baseline for bench/core_load.py: a minimal asyncio framed router.

It speaks just enough of the protocol for the load generator (``resume``
by name, ``send_message``, ``poll`` with ``wait_ms``) with no validation,
persistence, cursors or unread counts, using the same codec. Whatever the
core costs beyond this is the price of its rules and its durability.

Run: ``python bench/baseline_router.py PORT``
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from legacy_socket_server.protocol import FrameDecoder, encode  # noqa: E402

queues: dict[str, list[dict]] = {}
waiters: dict[str, list[tuple[asyncio.Transport, dict]]] = {}
next_id = 1


class Router(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        self.dec = FrameDecoder()
        self.name = ""

    def data_received(self, data: bytes) -> None:
        global next_id
        for req in self.dec.feed(data):
            if not isinstance(req, dict):
                self.t.close()
                return
            p = req["purpose"]
            base = {"purpose": p, "id": req.get("id"), "ok": True}
            if p == "resume":
                self.name = req["token"]
                queues[self.name] = []  # a fresh run starts empty
                self.t.write(encode({**base, "username": self.name, "cursor": 0}))
            elif p == "send_message":
                msg = {"id": next_id, "from": self.name, "to": req["to"], "text": req["text"]}
                next_id += 1
                self.t.write(encode({**base, "message": msg}))
                # As the core: "echo": false leaves the sender out of the event.
                echo = req.get("echo") is not False
                for user in (self.name, req["to"]) if echo else (req["to"],):
                    queues.setdefault(user, []).append({"type": "message", "message": msg})
                    for t, b in waiters.pop(user, []):
                        if not t.is_closing():
                            events, queues[user] = queues[user][:500], queues[user][500:]
                            t.write(encode({**b, "cursor": 0, "events": events}))
            elif p == "poll":
                # Same batch cap as the core (MAX_POLL_EVENTS), so frames stay small.
                q = queues.get(self.name, [])
                events, queues[self.name] = q[:500], q[500:]
                if events or not req.get("wait_ms"):
                    self.t.write(encode({**base, "cursor": 0, "events": events}))
                else:
                    waiters.setdefault(self.name, []).append((self.t, base))
            else:
                self.t.write(encode(base))


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Router, "127.0.0.1", port, backlog=4096)
    print(f"baseline listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if "--uvloop" in sys.argv:
        import uvloop

        uvloop.run(main(port))
    else:
        asyncio.run(main(port))
