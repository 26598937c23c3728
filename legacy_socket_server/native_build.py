"""``python -m legacy_socket_server.native_build [build|status|clean]``: see ``native``."""

from __future__ import annotations

import sys

from . import native


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "build"
    if command == "build":
        code = native.build()
        print(
            native.check() if code == 0 else "build failed: the Python modules run", file=sys.stderr
        )
        return code
    if command == "clean":
        native.clean()
        return 0
    if command == "status":
        print(native.check())
        return 0
    print(native.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
