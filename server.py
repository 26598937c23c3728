"""Run the chat core server: ``python server.py [--help]``.

Kept at the repo root because that is how the product has always been
started; the code lives in ``legacy_socket_server/``.
"""

from legacy_socket_server.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
