"""The data directory: where the core keeps users, history, journal and tokens.

The repository ships ``users.json`` (the demo users) and ``history.json``
(empty) as seed data and never writes them. A run without ``--data-dir``
keeps its state in ``data/`` (ignored by git), created from the seed files on
first use, so ``make run`` or the users CLI leave a clone's ``git status``
clean. A checkout where an older version kept its state at the top level
(a ``history.journal`` or ``tokens.json`` there) has that state carried into
``data/`` once, so nobody's history is left behind.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .settings import DEFAULT_DATA_DIR, REPO_ROOT

log = logging.getLogger(__name__)

SEED_FILES = ("users.json", "history.json")
#: What an older version wrote next to the seed files while it ran.
LEGACY_STATE = ("history.journal", "history.journal.*", "tokens.json", "tokens.journal*")


def prepare(data_dir: Path, seed_dir: Path = REPO_ROOT, default: Path = DEFAULT_DATA_DIR) -> Path:
    """Make sure ``data_dir`` exists; seed it on first use if it is ``default``. Returns it."""
    data_dir = Path(data_dir)
    if data_dir.resolve() != default.resolve() or (data_dir / "users.json").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        return data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    legacy = [p for pattern in LEGACY_STATE for p in sorted(seed_dir.glob(pattern))]
    for name in SEED_FILES:
        src = seed_dir / name
        if src.exists() and not (data_dir / name).exists():
            shutil.copy2(src, data_dir / name)
    for src in legacy:
        shutil.copy2(src, data_dir / src.name)
    if legacy:
        log.warning(
            "carried the state of an older run (%s) from %s into %s; the old files can be deleted",
            ", ".join(p.name for p in legacy),
            seed_dir,
            data_dir,
        )
    else:
        log.info("created %s from the shipped %s", data_dir, " and ".join(SEED_FILES))
    return data_dir
