"""``python -m legacy_socket_server``: run the core server."""

from .cli import main

raise SystemExit(main())
