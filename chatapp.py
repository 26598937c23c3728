"""The desktop chat client: ``python chatapp.py [--host H] [--port P]``."""

import sys

from legacy_socket_server.desktop.window import main

if __name__ == "__main__":
    sys.exit(main())
