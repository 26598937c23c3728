"""``python -m app`` (or ``chat-web``): the whole product from one command.

Without ``--core`` the core runs embedded in this process and event loop, and
desktop clients connect to it on ``--core-port``.
"""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from legacy_socket_server.server import run, wait_for_stop_signal
from legacy_socket_server.storage_files import StoreError

from .config import WebConfig, build_parser, config_from_args
from .web import CORE_KEY, connect_host, create_app


def _bound_port(site: web.TCPSite, fallback: int) -> int:
    server = site._server  # aiohttp keeps the asyncio server here; port 0 needs it
    sockets = getattr(server, "sockets", None)
    return sockets[0].getsockname()[1] if sockets else fallback


async def serve(config: WebConfig) -> None:
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, backlog=4096)
        await site.start()
        port = _bound_port(site, config.port)
        host = connect_host(config.host)
        url_host = f"[{host}]" if ":" in host else host
        if config.core is None:
            core_host, core_port = host, app[CORE_KEY].port
            core_note = "embedded core"
        else:
            core_host, core_port = config.core
            core_note = "core"
        # The one place this program talks to a person rather than to the log.
        print(f"Chat is running: http://{url_host}:{port}/", flush=True)
        print(
            f"Desktop client ({core_note} at {core_host}:{core_port}): "
            f"python chatapp.py --host {core_host} --port {core_port}",
            flush=True,
        )
        await wait_for_stop_signal()
        logging.getLogger("app").info("shutting down")
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        run(serve(config_from_args(args)))
    except StoreError as exc:
        logging.getLogger("app").error("refusing to start: %s", exc)
        return 2
    except OSError as exc:
        logging.getLogger("app").error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
