"""``python -m legacy_socket_server``: run the core server."""

from .server import main

raise SystemExit(main())
