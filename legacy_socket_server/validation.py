"""Typed access to request fields: a missing or ill-typed field is ``bad_request``."""

from __future__ import annotations

from typing import Any

from .contract import is_text


class BadRequest(Exception):
    pass


def get_str(req: dict[str, Any], name: str, *, max_len: int | None, required: bool = True) -> Any:
    value = req.get(name)
    if value is None:
        if required:
            raise BadRequest(f"missing field {name!r}")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"field {name!r} must be a string")
    if max_len is not None and len(value) > max_len:
        raise BadRequest(f"field {name!r} is longer than {max_len} characters")
    if not is_text(value):
        raise BadRequest(f"field {name!r} contains a lone surrogate")
    if "\x00" in value:  # not text either, and PostgreSQL cannot store it
        raise BadRequest(f"field {name!r} contains a NUL character")
    return value


def get_int(
    req: dict[str, Any],
    name: str,
    *,
    required: bool = True,
    lo: int | None = None,
    hi: int | None = None,
) -> Any:
    value = req.get(name)
    if value is None:
        if required:
            raise BadRequest(f"missing field {name!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"field {name!r} must be an integer")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise BadRequest(f"field {name!r} must be between {lo} and {hi}")
    return value


def get_bool(req: dict[str, Any], name: str, *, required: bool = True) -> Any:
    value = req.get(name)
    if value is None:
        if required:
            raise BadRequest(f"missing field {name!r}")
        return None
    if not isinstance(value, bool):
        raise BadRequest(f"field {name!r} must be true or false")
    return value
