"""Run a module (the web app) with its cyclic-GC pauses timed and, optionally, tracemalloc.

    python bench/_gc_probe.py [--tracemalloc FRAMES] -m app --host 127.0.0.1 ...

The probe lives here, not in ``app/``: it is the benchmark's instrument. It adds a
``gc.callbacks`` hook that times every collection (start to stop of one
collection is the pause every coroutine of the process waits through) and keeps,
per generation, the count, total and longest pause; pauses of ``LOG_MS`` or more
are also written to stderr as they happen (``gc gen2 pause 63 ms ... at HH:MM:SS``).

The bench drives it through the process's stdin, one command a line, read by a
thread (a signal handler would wait for the event loop to run Python code; a
thread answers at once, under load or idle):

* ``mark`` prints ``gcprobe <json>``: the stats since the previous mark, then resets them;
* ``snap PATH`` (with ``--tracemalloc``) dumps a tracemalloc snapshot to PATH and
  prints ``gcprobe snap PATH``;
* ``trim`` runs a full collection and glibc's ``malloc_trim(0)`` (what is freed
  but still held from the OS goes back), then prints ``gcprobe trimmed``: the RSS
  after it is what the live objects hold, before it also the high-water of a storm;
* ``census PATH`` writes the objects the cyclic GC tracks (what a full collection
  walks), by type: ``{type: [objects, references they hold]}`` as JSON to PATH,
  and prints ``gcprobe census PATH``. A collection visits every reference a
  tracked object holds, so a list of a thousand events costs a thousand visits.

:func:`start` launches a module under the probe and returns a :class:`Probe`.
"""

from __future__ import annotations

import gc
import json
import os
import re
import resource
import runpy
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Pauses this long are logged one by one (the aim is no pause over 50 ms).
LOG_MS = 20.0
#: With GCPROBE_EXPLAIN=1, full collections this long are followed by a census.
EXPLAIN_MS = 50.0


class _Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = [0, 0, 0]
        self.total_ms = [0.0, 0.0, 0.0]
        self.max_ms = [0.0, 0.0, 0.0]
        self.collected = [0, 0, 0]

    def export(self) -> dict[str, list]:
        return {
            "count": self.count,
            "total_ms": [round(x, 2) for x in self.total_ms],
            "max_ms": [round(x, 2) for x in self.max_ms],
            "collected": self.collected,
        }


def _install(stats: _Stats) -> None:
    t0 = [0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            t0[0] = time.perf_counter_ns()
            return
        ms = (time.perf_counter_ns() - t0[0]) / 1e6
        g = info["generation"]
        stats.count[g] += 1
        stats.total_ms[g] += ms
        stats.collected[g] += info["collected"]
        if ms > stats.max_ms[g]:
            stats.max_ms[g] = ms
        if ms >= LOG_MS:
            print(
                f"gc gen{g} pause {ms:.0f} ms (collected {info['collected']}) "
                f"at {time.strftime('%H:%M:%S')}",
                file=sys.stderr,
                flush=True,
            )
            if g == 2 and ms >= EXPLAIN_MS and os.environ.get("GCPROBE_EXPLAIN"):
                _explain()

    gc.callbacks.append(on_gc)


def _census() -> dict[str, list[int]]:
    """The objects the cyclic GC tracks outside the frozen ones, by type:
    ``{type: [objects, references they hold]}`` (what a full collection walks)."""
    counts: dict[str, list[int]] = {}
    for obj in gc.get_objects():
        t = type(obj)
        c = counts.setdefault(f"{t.__module__}.{t.__qualname__}", [0, 0])
        c[0] += 1
        c[1] += len(gc.get_referents(obj))
    return counts


def _explain() -> None:
    """What the full collection just walked.

    A diagnostic (``GCPROBE_EXPLAIN=1``): it stalls the process as long as a census.
    """
    counts = _census()
    top = sorted(counts.items(), key=lambda kv: -kv[1][1])[:10]
    print(
        f"  walked: {sum(v[0] for v in counts.values())} objects; by references: {top}",
        file=sys.stderr,
        flush=True,
    )


def _commands(stats: _Stats) -> None:
    """Answer the bench's commands on stdin until it closes."""
    import tracemalloc

    for cmd in sys.stdin:
        word, _, rest = cmd.strip().partition(" ")
        if word == "mark":
            out = stats.export()
            stats.reset()
            print("gcprobe " + json.dumps(out), file=sys.stderr, flush=True)
        elif word == "snap" and tracemalloc.is_tracing():
            gc.collect()  # count what is alive, not garbage waiting for a collection
            tracemalloc.take_snapshot().dump(rest)
            print(f"gcprobe snap {rest}", file=sys.stderr, flush=True)
        elif word == "trim":
            gc.collect()
            import ctypes

            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except (OSError, AttributeError):  # not glibc: the collection alone
                pass
            print("gcprobe trimmed", file=sys.stderr, flush=True)
        elif word == "census":
            gc.collect()
            Path(rest).write_text(json.dumps(_census()))
            print(f"gcprobe census {rest}", file=sys.stderr, flush=True)


def main() -> None:
    argv = sys.argv[1:]
    frames = 0
    if argv[:1] == ["--tracemalloc"]:
        frames, argv = int(argv[1]), argv[2:]
    if argv[:1] != ["-m"] or len(argv) < 2:
        raise SystemExit("usage: _gc_probe.py [--tracemalloc FRAMES] -m MODULE [ARGS...]")
    module, args = argv[1], argv[2:]
    sys.path.insert(0, str(ROOT))  # as ``python -m`` from the repository root would
    # Thousands of sessions hold two or three sockets each in the web app; a service
    # unit would raise the limit (LimitNOFILE), here the probe does.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if frames:
        import tracemalloc

        tracemalloc.start(frames)
    stats = _Stats()
    _install(stats)
    threading.Thread(target=_commands, args=(stats,), name="gc-probe", daemon=True).start()
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


# ----------------------------------------------------------------------------------------------
# the bench's side
# ----------------------------------------------------------------------------------------------
class Probe:
    """A process started under the probe: its Popen, port, and log."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self._read = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _ask(self, cmd: str, answer: str, timeout: float) -> str:
        """Send a command; return the first log line after the last one read that starts so."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text()
            i = text.find(answer, self._read)
            if i >= 0:
                end = text.find("\n", i)
                if end >= 0:
                    self._read = end + 1
                    return text[i + len(answer) : end]
            time.sleep(0.05)
        raise RuntimeError(f"the probe did not answer {cmd!r} within {timeout} s")

    def mark(self) -> dict[str, list]:
        """GC stats since the previous mark (count, total_ms, max_ms, collected per gen)."""
        return json.loads("{" + self._ask("mark", "gcprobe {", 30))

    def snapshot(self, path: Path, timeout: float = 300) -> Path:
        self._ask(f"snap {path}", f"gcprobe snap {path}", timeout)
        return path

    def trim(self, timeout: float = 120) -> None:
        """A full collection and ``malloc_trim(0)`` in the process."""
        self._ask("trim", "gcprobe trimmed", timeout)

    def census(self, path: Path, timeout: float = 300) -> dict[str, list[int]]:
        """GC-tracked objects by type (``module.qualname``): [objects, references held]."""
        self._ask(f"census {path}", f"gcprobe census {path}", timeout)
        return json.loads(path.read_text())

    def stop(self, timeout: float = 60) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"# pid {self.proc.pid} still running {timeout} s after SIGTERM: killed")
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()


def start(
    module: str,
    *args: str,
    pattern: str = r"Chat is running: http://[^/\s]*:(\d+)/",
    tracemalloc_frames: int = 0,
) -> Probe:
    """Start ``python bench/_gc_probe.py -m module args``; return once its log matches ``pattern``.

    Output goes to a temp file, not a pipe: a pipe nobody drains would block the
    server once its logs fill it.
    """
    log = tempfile.NamedTemporaryFile("w+", prefix="bench-probe-", suffix=".log", delete=False)
    cmd = [sys.executable, str(Path(__file__).resolve())]
    if tracemalloc_frames:
        cmd += ["--tracemalloc", str(tracemalloc_frames)]
    proc = subprocess.Popen(
        [*cmd, "-m", module, *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{module} exited: {Path(log.name).read_text()}")
        m = re.search(pattern, Path(log.name).read_text())
        if m:
            return Probe(proc, int(m.group(1)), Path(log.name))
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{module} did not start in 60 s")


def start_web(core_port: int, *extra: str, tracemalloc_frames: int = 0) -> Probe:
    """``python -m app`` against the core at 127.0.0.1:core_port, under the probe."""
    from _setup import web_args  # here: the probe's own process never needs it

    return start(
        "app",
        *web_args(core_port, *extra),
        tracemalloc_frames=tracemalloc_frames,
    )


if __name__ == "__main__":
    main()
