"""Small file helpers shared by the stores: atomic writes and readable load errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class StoreError(Exception):
    """A data file cannot be used; the message names the file and what to do."""


class StorageUnavailable(Exception):
    """The disk refused a write (full, read-only, I/O error); nothing was acknowledged."""


def fsync_dir(path: Path) -> None:
    # A rename is only durable once the directory entry itself is flushed.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, fsync: bool = True, mode: int | None = None) -> None:
    """Replace ``path`` with ``data``: temp file, (fsync), rename.

    A reader (or a crash) sees the old file or the new one, never a mix. With
    ``mode`` the file is created with it (a private key is never readable by
    others, not even briefly); without, as ``open`` makes files.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    if mode is None:
        f = open(tmp, "wb")  # noqa: SIM115 - closed by the with below
    else:
        f = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb")
        os.fchmod(f.fileno(), mode)  # a leftover temp file keeps its old mode otherwise
    with f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)


def load_json_file(path: Path) -> Any:
    """Read a JSON file; a syntax error becomes a :class:`StoreError` naming the line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise StoreError(
            f"{path} line {line}: not valid UTF-8 — fix or restore the file; it was not modified"
        ) from None
    except json.JSONDecodeError as exc:
        raise StoreError(
            f"{path} line {exc.lineno} column {exc.colno}: {exc.msg} — "
            "fix or restore the file; it was not modified"
        ) from None
