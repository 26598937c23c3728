"""``python -m app`` (or ``chat-web``): the whole product from one command.

Without ``--core`` the core runs embedded in this process and event loop, and
desktop clients connect to it on ``--core-port``.
"""

from __future__ import annotations

import logging

from aiohttp import web

from legacy_socket_server.settings import run_main, setup_logging, wait_for_stop_signal

from .config import WebConfig, build_parser, config_from_args
from .web import CORE_KEY, connect_host, create_app


def _bound_port(runner: web.AppRunner, fallback: int) -> int:
    """The port the site listens on (``--port 0`` asks the OS to choose)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return fallback


def _desktop_hint(app: web.Application, config: WebConfig, host: str) -> str:
    """The command a desktop user runs to reach the core this web app uses."""
    if config.core is not None:
        core_host, core_port = config.core
        return (
            f"Desktop client (core at {core_host}:{core_port}): "
            f"python chatapp.py --host {core_host} --port {core_port}"
        )
    core = app[CORE_KEY]
    if core.tls is not None:
        return (
            f"Desktop client (embedded core, TLS at {host}:{core.tls_port}, certificate "
            f"{core.tls.fingerprint}): python chatapp.py --host {host} --port {core.tls_port} "
            f"--fingerprint {core.tls.fingerprint}"
        )
    return (
        f"Desktop client (embedded core at {host}:{core.port}): "
        f"python chatapp.py --host {host} --port {core.port}"
    )


async def serve(config: WebConfig) -> None:
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, backlog=4096)
        await site.start()
        port = _bound_port(runner, config.port)
        host = connect_host(config.host)
        url_host = f"[{host}]" if ":" in host else host
        # The one place this program talks to a person rather than to the log.
        print(f"Chat is running: http://{url_host}:{port}/", flush=True)
        print(_desktop_hint(app, config, host), flush=True)
        await wait_for_stop_signal()
        logging.getLogger("app").info("shutting down")
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    return run_main(serve(config_from_args(args)), "app")


if __name__ == "__main__":
    raise SystemExit(main())
