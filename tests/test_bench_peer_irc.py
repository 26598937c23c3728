"""bench/peer_irc.py's core side, briefly: the benchmark issue 16 is judged by still runs.

Its figures are read by hand (docs/performance.md#core-efficiency); this only checks that the
clients log in to a real core, ping-pong, and report a row without errors. The ngircd side
needs Debian's ngircd, which only the hand-run benchmark installs.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_core_pairs_ping_pong_and_report_a_row() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "bench/peer_irc.py",
            "--only",
            "core",
            "--pairs",
            "3",
            "--seconds",
            "0.5",
            "--no-build",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| server |"))
    rows = [line for line in lines if line.startswith("| core | 3 |")]
    assert rows, run.stdout
    cells = dict(zip(_cells(header), _cells(rows[-1]), strict=True))
    assert int(cells["errors"]) == 0, run.stdout
    assert float(cells["messages/s"].replace(",", "")) > 0, run.stdout


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]
