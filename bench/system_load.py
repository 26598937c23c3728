"""The whole system under load: desktop clients on the core, browsers through the gateway.

A population of N simulated users: half are desktop-protocol clients (framed TCP to
the core, ``CoreClient``), half are browsers (HTTP to the web app through the
gateway to the core; each a cookie and two keep-alive connections of the lean
client in ``_http.py``, poll and send apart, as a browser has). Every
user polls (every 100 ms after an empty poll, like ``chat.js`` and the desktop
client, or long-polls with ``wait_ms=25000``) and sends messages to random peers
of either kind at ``--rate`` messages/s each. In ``ws`` mode the browsers receive
over ``GET /api/ws`` instead (one WebSocket per browser session, aiohttp's client;
sends stay HTTP requests) and the desktops long-poll: ``--mode ws longpoll``
compares the browsers' two ways of receiving, point by point. The text carries a
``time.perf_counter()`` stamp (CLOCK_MONOTONIC: one clock for every process of
the machine), so the recipient measures send→seen latency.

It prints, per point: send→seen p50/p99/max (and p50 by sender→recipient kind),
messages/s, HTTP and core requests/s (and push frames/s), CPU and RSS of the core
and of the web process, lost and duplicated messages (both must be 0: every
acknowledged message must be seen exactly once by its recipient), and errors;
the web app's RSS per browser session (its RSS once every browser is logged in
and receiving, less its RSS before the first login, over the number of
browsers; after the window again, and then after a full collection and
``malloc_trim(0)``, which leaves what the live objects hold without the login
storm's high-water); its cyclic-GC pauses by generation, in the window and in
the setup (the web app runs under ``bench/_gc_probe.py``); and the generator's
CPU, in all and of its busiest process (near 1.0 that process is saturated:
raise ``--procs``).

    python bench/system_load.py --mode poll --users 200 500 1000 --seconds 10
    python bench/system_load.py --mode ws longpoll --users 2000 5000 10000 --seconds 10
    python bench/system_load.py --mode pollmax --users 200 --seconds 10   # gateway vs bare aiohttp
    python bench/system_load.py --mode ws longpoll --users 2000 --tracemalloc 10
    python bench/system_load.py --mode longpoll --users 1000 --store files postgres
    python bench/system_load.py --mode longpoll --users 2000 --store files postgres cluster
    python bench/system_load.py --mode longpoll --users 2000 --store postgres cluster \
        --database-url postgresql://USER:PASSWORD@HOST/postgres   # an existing server

``pollmax`` is the throughput baseline: browsers only, each in a closed loop of
``GET /api/poll?cursor=<head>`` with no new events, first against the gateway,
then against ``bench/bare_aiohttp.py``.

``--tracemalloc FRAMES`` runs the web app under tracemalloc (slower: that run's
timings are not comparable) and prints what is allocated per browser session, top
lines first: a snapshot before the first login against one once every browser is
receiving. ``--census`` counts, at the same two moments, the objects the web app's
cyclic GC tracks (what a full collection walks), by type, per browser session.

Setup (not measured): users get a cheap argon2 hash (``_setup.make_data_dir_fast``)
so browsers can log in through ``POST /api/login`` by the thousand; desktop users
``resume`` with ready-made tokens. Desktops connect first, then browsers log in,
then everyone drains the presence events of the login storm; only then does the
measured phase start. Load talks only to 127.0.0.1, is bounded by ``--seconds``
and stops by itself. ``--procs`` load-generator processes (``_load_worker.py``)
share the users.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _gc_probe
from _load_worker import worker
from _pg_server import create_database, create_database_at, pg_server
from _setup import (
    cpu_seconds,
    machine_cpu,
    make_data_dir_fast,
    rss_kib,
    start_bare_aiohttp,
    start_core,
)
from _topology import Topology, _stop_core, cluster, single

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


# ----------------------------------------------------------------------------------------------
# orchestration (parent process)
# ----------------------------------------------------------------------------------------------
def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(len(xs) * q))] * 1000


def gather(conns, want: str, timeout: float) -> list[Any]:
    out = []
    deadline = time.monotonic() + timeout
    for c in conns:
        if not c.poll(max(0.1, deadline - time.monotonic())):
            raise RuntimeError(f"a worker did not report {want!r} within {timeout} s")
        tag, val = c.recv()
        if tag == "failed":
            raise RuntimeError(f"worker failed:\n{val}")
        assert tag == want, (tag, want)
        out.append(val)
    return out


def wait_quiet(limit: float, max_busy: float = 0.25) -> float:
    """Wait up to ``limit`` s for the machine to be mostly idle; return the last busy share."""
    deadline = time.monotonic() + limit
    while True:
        a = machine_cpu()
        time.sleep(1.0)
        b = machine_cpu()
        busy = (b[0] - a[0]) / max(1, b[1] - a[1])
        if busy < max_busy or time.monotonic() > deadline:
            return busy


def memory_per_session(base: Path, after: Path, sessions: int, top: int = 20) -> str:
    """What the web app allocated between two tracemalloc snapshots, per browser session."""
    import linecache
    import tracemalloc

    ignore = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, _gc_probe.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
        tracemalloc.Filter(False, "<unknown>"),
    ]
    a = tracemalloc.Snapshot.load(str(base)).filter_traces(ignore)
    b = tracemalloc.Snapshot.load(str(after)).filter_traces(ignore)
    per = max(1, sessions)
    total = sum(st.size for st in b.statistics("filename")) - sum(
        st.size for st in a.statistics("filename")
    )
    out = [
        f"tracemalloc: {total / per:.0f} B allocated and alive per browser session "
        f"({sessions} sessions); top lines (B/session, objects/session, line):"
    ]
    for st in b.compare_to(a, "lineno")[:top]:
        fr = st.traceback[0]
        src = linecache.getline(fr.filename, fr.lineno).strip()[:70]
        name = "/".join(Path(fr.filename).parts[-2:])
        out.append(
            f"  {st.size_diff / per:8.0f} {st.count_diff / per:6.1f}  {name}:{fr.lineno}  {src}"
        )
    out.append("  by file (B/session):")
    for st in b.compare_to(a, "filename")[:12]:
        name = "/".join(Path(st.traceback[0].filename).parts[-3:])
        out.append(f"  {st.size_diff / per:8.0f} {st.count_diff / per:6.1f}  {name}")
    # Allocations made in C (uvloop's transports, handles and read buffers) are
    # charged to the last Python frame: the loop's run_until_complete.
    out.append("  top call sites (B/session, objects/session, innermost frame first):")
    for st in b.compare_to(a, "traceback")[:10]:
        where = " <- ".join(
            f"{'/'.join(Path(f.filename).parts[-2:])}:{f.lineno}" for f in reversed(st.traceback)
        )
        out.append(f"  {st.size_diff / per:8.0f} {st.count_diff / per:6.1f}  {where[:200]}")
    return "\n".join(out)


def census_per_session(
    base: dict[str, list[int]], after: dict[str, list[int]], sessions: int
) -> str:
    """GC-tracked objects added per browser session, by type: what a full collection walks.

    Each type's objects and the references they hold (a collection visits both).
    """
    per = max(1, sessions)
    zero = [0, 0]
    diff = {
        k: [after.get(k, zero)[i] - base.get(k, zero)[i] for i in (0, 1)]
        for k in after.keys() | base.keys()
    }

    def total(d: dict[str, list[int]], i: int) -> int:
        return sum(v[i] for v in d.values())

    out = [
        f"GC census: {total(after, 0)} tracked objects holding {total(after, 1)} references "
        f"({total(base, 0)} / {total(base, 1)} before the first login); per browser session "
        f"{total(diff, 0) / per:.1f} objects, {total(diff, 1) / per:.1f} references. "
        "Top types by objects (objects/session, references/session):"
    ]
    for k, v in sorted(diff.items(), key=lambda kv: -kv[1][0])[:12]:
        out.append(f"  {v[0] / per:8.2f} {v[1] / per:9.2f}  {k}")
    out.append("  top types by references held:")
    for k, v in sorted(diff.items(), key=lambda kv: -kv[1][1])[:8]:
        out.append(f"  {v[0] / per:8.2f} {v[1] / per:9.2f}  {k}")
    return "\n".join(out)


def run_point(
    args, mode: str, n: int, target: str = "gateway", store: str = "files"
) -> dict[str, Any]:
    """One measured point: fresh core (its history in files or, with ``store`` postgres, a
    fresh database) + web (or bare server), n users, --seconds."""
    if args.wait_quiet:
        busy = wait_quiet(args.wait_quiet)
        print(f"# machine busy before the point: {busy * 100:.0f}%", flush=True)
    profiles: list[subprocess.Popen] = []
    probe: _gc_probe.Probe | None = None
    memory = ""
    gc_setup = gc_window = None
    with tempfile.TemporaryDirectory(prefix="system-load-") as tmp:
        tokens = make_data_dir_fast(Path(tmp), n)
        names = list(tokens)
        url = None
        if store in ("postgres", "cluster"):
            name = f"load_{os.getpid()}_{next(_points)}"
            if args.database_url:
                url = asyncio.run(create_database_at(args.database_url, name))
            else:
                url = asyncio.run(create_database(args.pg, name))
        web_extra = ["--idle-timeout", "3600"]
        if target == "bare":
            core, core_port = start_core(Path(tmp), database_url=url)
            bare, web_port = start_bare_aiohttp()
            topo = Topology(
                core_port,
                web_port,
                {"core": [core.pid], "web": [bare.pid]},
                None,  # type: ignore[arg-type]
                [_stop_core(core), lambda: (bare.terminate(), bare.wait(60))],
            )
        elif store == "cluster":
            topo = cluster(Path(tmp), url, web_extra, tracemalloc=args.tracemalloc)  # type: ignore[arg-type]
        else:
            topo = single(Path(tmp), url, web_extra, args.tracemalloc)
        probe = topo.probe
        core_port, web_port = topo.core_port, topo.web_port
        web_pid = topo.pids["web"][0]
        if mode == "pollmax":
            desk, brow = [], names
        else:
            desk, brow = names[::2], names[1::2]
        ctx = mp.get_context("spawn")
        procs, conns = [], []
        setup_t0 = time.perf_counter()
        try:
            for i in range(args.procs):
                parent, child = ctx.Pipe()
                cfg = {
                    "mode": mode,
                    "core_port": core_port,
                    "web_port": web_port,
                    "desktops": desk[i :: args.procs],
                    "browsers": brow[i :: args.procs],
                    "tokens": {k: tokens[k] for k in desk[i :: args.procs]},
                    "all_names": names,
                    "rate": 0.0 if mode == "pollmax" else args.rate,
                    "login_concurrency": args.login_concurrency,
                    "uvloop": not args.no_uvloop,
                }
                p = ctx.Process(target=worker, args=(child, cfg), daemon=True)
                p.start()
                procs.append(p)
                conns.append(parent)
            gather(conns, "desktops_ready", 300)
            # The web app before its first browser session (desktops do not touch it).
            rss_web_base = rss_kib(web_pid)
            if probe and args.tracemalloc:
                snap_base = probe.snapshot(Path(tmp) / "base.tm")
            if probe and args.census:
                census_base = probe.census(Path(tmp) / "base.json")
            for c in conns:
                c.send(("go", None))
            gather(conns, "browsers_ready", 600)
            for c in conns:
                c.send(("go", None))
            gather(conns, "drained", 600)
            setup_s = time.perf_counter() - setup_t0
            # Every browser logged in and receiving (a held poll or an open socket).
            rss_web_sessions = rss_kib(web_pid)
            if probe and args.tracemalloc:
                snap = probe.snapshot(Path(tmp) / "sessions.tm")
                memory = memory_per_session(snap_base, snap, len(brow))
            if probe and args.census:
                census = probe.census(Path(tmp) / "sessions.json")
                memory = "\n".join(
                    filter(None, [memory, census_per_session(census_base, census, len(brow))])
                )
            t_start = time.perf_counter() + 0.5
            t_end = t_start + args.seconds
            for c in conns:
                c.send(("window", (t_start, t_end, args.drain)))
            time.sleep(max(0.0, t_start - time.perf_counter()))
            pids = topo.pids
            gen_pids = [p.pid for p in procs]
            cpu0 = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
            gen0 = [cpu_seconds(p) for p in gen_pids]
            m0 = machine_cpu()
            gc_setup = probe.mark() if probe else None
            if args.profile_dir and target == "gateway":
                d = Path(args.profile_dir)
                d.mkdir(parents=True, exist_ok=True)
                for role in ("core", "web"):
                    out = d / f"{mode}-{n}-{role}.txt"
                    profiles.append(
                        subprocess.Popen(
                            [
                                "py-spy",
                                "record",
                                "--pid",
                                str(pids[role][0]),
                                "-d",
                                str(max(1, int(args.seconds) - 1)),
                                "-r",
                                "50",
                                "-f",
                                "raw",
                                "-o",
                                str(out),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    )
            time.sleep(max(0.0, t_end - time.perf_counter()))
            cpu1 = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
            gen1 = [cpu_seconds(p) for p in gen_pids]
            m1 = machine_cpu()
            gc_window = probe.mark() if probe else None
            rss = {"core": rss_kib(pids["core"][0]), "web": rss_kib(web_pid)}
            if probe and args.census:
                # What the window left for the GC to walk (the census counts only
                # objects outside the frozen generation).
                grown = census_per_session(
                    census, probe.census(Path(tmp) / "window.json"), len(brow)
                )
                memory += "\nafter the window, compared with before it:\n" + grown
            rss_web_trimmed = rss["web"]
            if probe:
                # What the live objects hold, without the login storm's freed memory
                # that the allocators keep (the RSS above is a high-water mark). After
                # the window: a full collection before it would change its GC pauses.
                probe.trim()
                rss_web_trimmed = rss_kib(web_pid)
            results = gather(conns, "result", args.drain + 120)
        finally:
            for p in profiles:
                p.wait(60)
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
            t_stop = time.perf_counter()
            topo.stop()
            print(f"# web + core stopped in {time.perf_counter() - t_stop:.1f} s", flush=True)

    acked: dict[int, str] = {}
    seen: collections.Counter[int] = collections.Counter()
    lat: dict[str, list[float]] = collections.defaultdict(list)
    req: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    ws_closed: collections.Counter[str] = collections.Counter()
    sent = resets = 0
    for r in results:
        acked.update(r["acked"])
        seen.update(r["seen"])
        for k, v in r["lat"].items():
            lat[k].extend(v)
        req.update(r["req"])
        errors.update(r["errors"])
        ws_closed.update(r["ws_closed"])
        sent += r["sent"]
        resets += r["resets"]
    all_lat = sorted(x for v in lat.values() for x in v)
    secs = args.seconds
    lost = sum(1 for mid in acked if seen.get(mid, 0) == 0)
    dupes = sum(c - 1 for c in seen.values() if c > 1)
    gen_cpu = [(b - a) / secs for a, b in zip(gen0, gen1, strict=True)]
    no_gc = {"count": [0, 0, 0], "max_ms": [0.0, 0.0, 0.0], "total_ms": [0.0, 0.0, 0.0]}
    return {
        "mode": mode,
        "target": target,
        "users": n,
        "desktops": len(desk),
        "browsers": len(brow),
        "setup_s": setup_s,
        "sent": sent,
        "acked": len(acked),
        "msgs_s": len(acked) / secs,
        "seconds": secs,
        "p50": pct(all_lat, 0.5),
        "p99": pct(all_lat, 0.99),
        "max": all_lat[-1] * 1000 if all_lat else float("nan"),
        "p50_by": {k: pct(sorted(v), 0.5) for k, v in sorted(lat.items())},
        "p99_by": {k: pct(sorted(v), 0.99) for k, v in sorted(lat.items())},
        "http_s": (req["http_poll"] + req["http_send"]) / secs,
        "http_poll_s": req["http_poll"] / secs,
        "ws_frames_s": req["ws_frame"] / secs,
        "core_req_s": (req["core_poll"] + req["core_send"]) / secs,
        "lost": lost,
        "dupes": dupes,
        "unacked_seen": sum(1 for mid in seen if mid not in acked),
        "resets": resets,
        "errors": dict(errors),
        "ws_closed": dict(ws_closed),
        "cpu_core": (cpu1["core"] - cpu0["core"]) / secs,
        "cpu_web": (cpu1["web"] - cpu0["web"]) / secs,
        "cpu_lb": (cpu1.get("lb", 0.0) - cpu0.get("lb", 0.0)) / secs,
        "cpu_gen": sum(gen_cpu),
        "cpu_gen_max": max(gen_cpu),
        "machine_busy": (m1[0] - m0[0]) / max(1, m1[1] - m0[1]),
        "gc_window": gc_window or no_gc,
        "gc_setup": gc_setup or no_gc,
        "rss_core_mib": rss["core"] / 1024,
        # CPU used on this machine by processes other than ours (other work sharing it)
        "cpu_other": (m1[0] - m0[0]) / max(1, m1[1] - m0[1]) * (os.cpu_count() or 1)
        - (sum(cpu1.values()) - sum(cpu0.values()) + sum(gen1) - sum(gen0)) / secs,
        "rss_web_mib": rss["web"] / 1024,
        "rss_web_base_mib": rss_web_base / 1024,
        # KiB of web RSS per browser session: all logged in and receiving, before the window
        "rss_per_browser_kib": (rss_web_sessions - rss_web_base) / max(1, len(brow)),
        # ... at the end of the window (the sessions' buffers now hold messages)
        "rss_per_browser_end_kib": (rss["web"] - rss_web_base) / max(1, len(brow)),
        # ... and then after a full collection and malloc_trim(0): the live part
        "rss_per_browser_trim_kib": (rss_web_trimmed - rss_web_base) / max(1, len(brow)),
        "memory": memory,
    }


def gc_text(g: dict[str, list]) -> str:
    """Longest pause per generation (ms) and the collections: ``1/3/41 (n 312/28/2)``."""
    mx = "/".join(f"{x:.0f}" for x in g["max_ms"])
    return f"{mx} (n {'/'.join(str(x) for x in g['count'])})"


def line(r: dict[str, Any]) -> str:
    by = " ".join(f"{k}:{v:.0f}" for k, v in r["p50_by"].items())
    err = sum(r["errors"].values())
    return (
        f"{r['mode']:8} {r['target']:7} n={r['users']:5} msg/s {r['msgs_s']:6.0f} "
        f"p50/p99/max {r['p50']:6.1f}/{r['p99']:7.1f}/{r['max']:7.1f} ms  "
        f"HTTP {r['http_s']:6.0f}/s ws frames {r['ws_frames_s']:5.0f}/s "
        f"core {r['core_req_s']:6.0f}/s  "
        f"cpu core {r['cpu_core']:.2f} web {r['cpu_web']:.2f} lb {r['cpu_lb']:.2f} "
        f"gen {r['cpu_gen']:.2f} "
        f"(busiest gen {r['cpu_gen_max']:.2f}) "
        f"(machine {r['machine_busy'] * 100:.0f}%, others {r['cpu_other']:.2f})  "
        f"rss core {r['rss_core_mib']:.0f} web {r['rss_web_mib']:.0f} MiB "
        f"(base {r['rss_web_base_mib']:.0f}; per browser {r['rss_per_browser_kib']:.1f} KiB, "
        f"{r['rss_per_browser_end_kib']:.1f} after the window, "
        f"{r['rss_per_browser_trim_kib']:.1f} then trimmed)  "
        f"lost {r['lost']} dup {r['dupes']} resets {r['resets']} err {err}  "
        f"web GC max ms gen0/1/2 window {gc_text(r['gc_window'])} "
        f"setup {gc_text(r['gc_setup'])}  p50 by kind {by}  setup {r['setup_s']:.0f}s"
    )


def per_message(r: dict[str, Any], key: str) -> str:
    """CPU µs per delivered message (each message counts once, whatever its recipients)."""
    delivered = r["acked"] - r["lost"]
    return f"{r[key] * r['seconds'] / delivered * 1e6:.0f}" if delivered else "–"


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| mode | target | users (D+B) | msg/s | p50 / p99 / max ms | p50 D→D, B→B ms | "
        "HTTP req/s | ws frames/s | core req/s (desktop) | "
        "CPU core / web / gen (busiest) / other (cores) | "
        "CPU µs per delivered message core / web / HAProxy | machine busy | "
        "RSS core / web MiB | web KiB per browser (trimmed) | "
        "web GC max ms gen0/1/2 window; setup | "
        "lost | dup | resets | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dd = r["p50_by"].get("DD", float("nan"))
        bb = r["p50_by"].get("BB", float("nan"))
        out.append(
            f"| {r['mode']} | {r['target']} | {r['users']} ({r['desktops']}+{r['browsers']}) | "
            f"{r['msgs_s']:.0f} | {r['p50']:.1f} / {r['p99']:.1f} / {r['max']:.1f} | "
            f"{dd:.1f}, {bb:.1f} | {r['http_s']:.0f} | {r['ws_frames_s']:.0f} | "
            f"{r['core_req_s']:.0f} | "
            f"{r['cpu_core']:.2f} / {r['cpu_web']:.2f} / {r['cpu_gen']:.2f} "
            f"({r['cpu_gen_max']:.2f}) / {r['cpu_other']:.2f} | "
            f"{per_message(r, 'cpu_core')} / {per_message(r, 'cpu_web')} / "
            f"{per_message(r, 'cpu_lb')} | "
            f"{r['machine_busy'] * 100:.0f}% | {r['rss_core_mib']:.0f} / {r['rss_web_mib']:.0f} | "
            f"{r['rss_per_browser_kib']:.1f} ({r['rss_per_browser_trim_kib']:.1f}) | "
            f"{gc_text(r['gc_window'])}; "
            f"{gc_text(r['gc_setup'])} | "
            f"{r['lost']} | {r['dupes']} | {r['resets']} | {sum(r['errors'].values())} |"
        )
    return "\n".join(out)


def ratios(rows: list[dict[str, Any]]) -> str:
    """ws against longpoll at each user count run in both modes."""
    by = {(r["mode"], r["users"]): r for r in rows if r["target"] == "gateway"}
    out = [
        "| users | p50 ms ws / longpoll | p99 ms ws / longpoll | web CPU ws / longpoll | "
        "web KiB per browser ws / longpoll | trimmed | web GC max ms ws / longpoll |",
        "|---|---|---|---|---|---|---|",
    ]
    for (mode, n), ws in by.items():
        lp = by.get(("longpoll", n))
        if mode != "ws" or lp is None:
            continue

        def q(key: str, w=ws, lp=lp) -> str:
            a, b = w[key], lp[key]
            return f"{a:.2f} / {b:.2f} = {a / b:.2f}" if b else f"{a:.2f} / {b:.2f}"

        gw, gl = max(ws["gc_window"]["max_ms"]), max(lp["gc_window"]["max_ms"])
        out.append(
            f"| {n} | {q('p50')} | {q('p99')} | {q('cpu_web')} | "
            f"{q('rss_per_browser_kib')} | {q('rss_per_browser_trim_kib')} | {gw:.0f} / {gl:.0f} |"
        )
    return "\n".join(out) if len(out) > 2 else ""


def summarize_profile(path: Path, top: int = 15) -> str:
    """Self and inclusive share of each function in a py-spy ``--format raw`` file."""
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for ln in path.read_text().splitlines():
        stack, _, count = ln.rpartition(" ")
        if not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [f.rsplit(":", 1)[0] for f in stack.split(";")]  # drop line numbers
        self_t[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    out = [f"{path.name}: {total} samples", "  self%  incl%  function"]
    for f, c in self_t.most_common(top):
        out.append(f"  {100 * c / total:5.1f}  {100 * incl[f] / total:5.1f}  {f}")
    out.append("  -- inclusive --")
    for f, c in incl.most_common(top + 10):
        out.append(f"  {100 * self_t[f] / total:5.1f}  {100 * c / total:5.1f}  {f}")
    return "\n".join(out)


_points = itertools.count(1)


def points(args, mode: str) -> list[tuple[str, str]]:
    """(target, store) of each point at one user count and mode."""
    targets = ["gateway", "bare"] if (mode == "pollmax" and args.bare) else ["gateway"]
    return [
        (t, store) for t in targets for store in args.store if t == "gateway" or store == "files"
    ]


def report_point(r: dict[str, Any]) -> None:
    print(line(r), flush=True)
    if r["ws_closed"]:
        print(f"    sockets closed by the server: {r['ws_closed']}", flush=True)
    if r["errors"]:
        for k, v in sorted(r["errors"].items(), key=lambda kv: -kv[1])[:8]:
            print(f"    error x{v}: {k}", flush=True)
    if r["memory"]:
        print(r["memory"], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--mode",
        nargs="+",
        choices=["poll", "longpoll", "ws", "pollmax"],
        default=["poll"],
        help="one or more; several run side by side at each user count",
    )
    ap.add_argument("--users", type=int, nargs="+", default=[200, 500, 1000])
    ap.add_argument(
        "--store",
        nargs="+",
        choices=["files", "postgres", "cluster"],
        default=["files"],
        help="files: 1 core + 1 web app on files; postgres: the same on a throwaway "
        "PostgreSQL; cluster: 2 cores + 2 web apps on it behind HAProxy (a fresh database "
        "per point)",
    )
    ap.add_argument(
        "--database-url",
        help="postgres and cluster points: a fresh database per point on this PostgreSQL "
        "server (the account may create databases) instead of a throwaway server",
    )
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--drain", type=float, default=3.0, help="receive-only seconds after")
    ap.add_argument("--rate", type=float, default=0.1, help="messages/s sent by each user")
    ap.add_argument("--procs", type=int, default=2, help="load-generator processes")
    ap.add_argument("--login-concurrency", type=int, default=50)
    ap.add_argument("--no-uvloop", action="store_true")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=120.0,
        help="wait up to this many s for other work on the machine to calm down",
    )
    ap.add_argument("--bare", action="store_true", help="pollmax: also run bare_aiohttp.py")
    ap.add_argument("--profile-dir", help="py-spy record core and web during the window")
    ap.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="run the web app under tracemalloc; print its allocations per browser session",
    )
    ap.add_argument(
        "--census",
        action="store_true",
        help="print the web app's GC-tracked objects per browser session, by type",
    )
    ap.add_argument("--summarize", nargs="*", help="print a summary of py-spy raw files and exit")
    args = ap.parse_args()
    if args.summarize:
        for p in args.summarize:
            print(summarize_profile(Path(p)))
        return
    print(
        f"# {os.cpu_count()} CPUs; generator: {args.procs} processes; rate {args.rate}/s per user",
        flush=True,
    )
    if args.tracemalloc:
        print("# the web app runs under tracemalloc: its timings are not comparable", flush=True)
    if args.census:
        print("# the census's collections stall the web app before the window", flush=True)
    rows = []
    with contextlib.ExitStack() as stack:
        on_pg = {"postgres", "cluster"} & set(args.store)
        args.pg = stack.enter_context(pg_server()) if on_pg and not args.database_url else None
        for n in args.users:
            for mode in args.mode:
                for target, store in points(args, mode):
                    r = run_point(args, mode, n, target, store)
                    r["target"] += {"postgres": "/pg", "cluster": "/2+2"}.get(store, "")
                    rows.append(r)
                    report_point(r)
    print()
    print(table(rows))

    if len(args.mode) > 1 and ratios(rows):
        print()
        print(ratios(rows))
    if args.mode == ["pollmax"] and args.bare:
        for i in range(0, len(rows) - 1, 2):
            g, b = rows[i], rows[i + 1]
            per_g = g["http_poll_s"] / max(g["cpu_web"], 1e-9)
            per_b = b["http_poll_s"] / max(b["cpu_web"], 1e-9)
            print(
                f"\nn={g['users']}: gateway GET /api/poll {g['http_poll_s']:.0f}/s "
                f"({g['cpu_web']:.2f} web cores), bare {b['http_poll_s']:.0f}/s "
                f"({b['cpu_web']:.2f} cores): ratio {g['http_poll_s'] / b['http_poll_s']:.2f}; "
                f"per web CPU-second {per_g:.0f} vs {per_b:.0f}: ratio {per_g / per_b:.2f}"
            )


if __name__ == "__main__":
    main()
