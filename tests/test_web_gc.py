"""What an ended browser session leaves to the cyclic GC.

The web app freezes its heap while sessions exist (legacy_socket_server/heap.py): frozen
objects that become cyclic garbage wait for the next full collection, so a
session's own objects must be freed by reference counting when it ends.
"""

from __future__ import annotations

import collections
import gc
from typing import Any

from core_helpers import cyclic_garbage
from waiting import until
from web_helpers import (  # noqa: F401 - fixtures
    MakeWeb,
    fixture_make_web,
    fixture_tcp,
    login,
)

from app.web import GATEWAY_KEY

OUR_MODULES = ("app.", "legacy_socket_server.")


async def test_ended_sessions_leave_none_of_our_objects_to_the_cyclic_gc(
    make_web: MakeWeb, aiohttp_client: Any, tcp: Any
) -> None:
    server = await make_web(idle_timeout=0.5)
    web = await aiohttp_client(server)
    gateway = server.app[GATEWAY_KEY]
    bob = await tcp("Bob")
    gc.collect()
    gc.freeze()  # what existed before is out of sight, as after the app's own freeze
    try:
        for _ in range(3):  # logged out while its socket is open
            cursor = (await login(web, "Alice"))["cursor"]
            async with web.ws_connect(f"/api/ws?cursor={cursor}") as ws:
                await ws.receive_json()
                await bob.client.send_message("Alice", "hi")
                assert (await ws.receive_json())["events"]
                assert (await web.post("/api/logout", json={})).status == 204
                assert (await ws.receive()).data == 4401
            await until(lambda: not gateway.sessions)
        # Ended by the idle reaper after polling over HTTP.
        cursor = (await login(web, "Alice"))["cursor"]
        assert (await web.get(f"/api/poll?cursor={cursor}")).status == 200
        await until(lambda: not gateway.sessions, timeout=10)
        garbage = cyclic_garbage()
    finally:
        gc.unfreeze()
    ours = collections.Counter(
        type(o).__qualname__ for o in garbage if type(o).__module__.startswith(OUR_MODULES)
    )
    assert not ours, f"cycles of ours among {len(garbage)} unreachable objects: {ours}"
