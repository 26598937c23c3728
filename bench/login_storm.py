"""A login storm from one address, and a login from another address meanwhile.

    python bench/login_storm.py [--storm 300] [--runs 3]

Starts a core in this process on a temp data dir, opens ``--storm`` connections
from 127.0.0.2 that each send a wrong password, then logs Bob in from
127.0.0.3 and prints how long his login took and how many storm checks still
waited. The hash gate takes waiting checks round-robin across addresses, so
Bob's check runs at its next turn (docs/protocol.md#limits-per-client); the
aim is under 0.5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from core_helpers import DEMO, RawClient, seed_users  # noqa: E402

from legacy_socket_server.protocol import encode  # noqa: E402
from legacy_socket_server.server import CoreServer, ServerConfig  # noqa: E402


async def connect(port: int, source: str) -> RawClient:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    return RawClient(reader, writer)


async def run(storm_size: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        seed_users(data, Path(tmp) / "template")
        config = ServerConfig(port=0, data_dir=data, max_connections_per_ip=storm_size + 10)
        core = await CoreServer.start(config)
        try:
            storm = [await connect(core.port, "127.0.0.2") for _ in range(storm_size)]
            for i, c in enumerate(storm):
                login = {"purpose": "login", "id": 1, "username": f"nobody{i}", "password": "x"}
                c.writer.write(encode(login))
            deadline = time.monotonic() + 10
            while core.service.hash_gate.waiting < 10 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            bob = await connect(core.port, "127.0.0.3")
            t0 = time.monotonic()
            reply = await bob.request("login", username="Bob", password=DEMO["Bob"], timeout=60)
            elapsed = time.monotonic() - t0
            assert reply["ok"], reply
            return elapsed, core.service.hash_gate.waiting
        finally:
            await core.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storm", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    for k in range(args.runs):
        elapsed, waiting = asyncio.run(run(args.storm))
        print(
            f"run {k + 1}: login from another address took {elapsed * 1000:.0f} ms "
            f"with {waiting} storm checks still waiting"
        )


if __name__ == "__main__":
    main()
