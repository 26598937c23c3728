"""Held-poll deadlines grouped in slots (legacy_socket_server/deadlines.py), on a real loop."""

from __future__ import annotations

import asyncio

from waiting import until

from legacy_socket_server.deadlines import SLOT, Deadlines


async def test_items_expire_after_their_delay_never_before_and_at_most_a_slot_late() -> None:
    loop = asyncio.get_running_loop()
    ended: dict[str, float] = {}
    deadlines: Deadlines[str] = Deadlines(
        lambda: loop, lambda item: ended.setdefault(item, loop.time())
    )
    start = loop.time()
    delays = {"a": 0.0, "b": 0.12, "c": 0.12, "d": 0.3}
    for item, delay in delays.items():
        deadlines.add(item, delay)
    await until(lambda: len(ended) == len(delays), timeout=5, what="every item to expire")
    for item, delay in delays.items():
        late = ended[item] - start - delay
        assert -0.001 <= late < SLOT + 0.1, (item, late)  # + scheduling noise on a busy machine


async def test_a_cancelled_item_does_not_expire_and_others_in_its_slot_do() -> None:
    loop = asyncio.get_running_loop()
    ended: list[str] = []
    deadlines: Deadlines[str] = Deadlines(lambda: loop, ended.append)
    kept = deadlines.add("kept", 0.05)
    gone = deadlines.add("gone", 0.05)
    assert kept == gone  # one slot, one timer
    deadlines.cancel("gone", gone)
    again = deadlines.add("again", 0.2)
    deadlines.cancel("again", again)
    deadlines.add("again", 0.1)  # held again after being answered: ends once, later
    await until(lambda: "again" in ended, timeout=5, what="the re-held item")
    await asyncio.sleep(0.3)  # past the cancelled deadline: proving it stays silent
    assert sorted(ended) == ["again", "kept"]
