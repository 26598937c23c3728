"""The whole system under load: desktop clients on the core, browsers through the gateway.

A population of N simulated users: half are desktop-protocol clients (framed TCP to
the core, ``CoreClient``), half are browsers (HTTP to the web app through the
gateway to the core; each a cookie and two keep-alive connections of the lean
client in ``_http.py``, poll and send apart, as a browser has). Every
user polls (every 100 ms after an empty poll, like ``chat.js`` and the desktop
client, or long-polls with ``wait_ms=25000``) and sends messages to random peers
of either kind at ``--rate`` messages/s each. The text carries a
``time.perf_counter()`` stamp (CLOCK_MONOTONIC: one clock for every process of
the machine), so the recipient measures send→seen latency.

It prints, per point: send→seen p50/p99/max (and p50 by sender→recipient kind),
messages/s, HTTP and core requests/s, CPU and RSS of the core and of the web
process, lost and duplicated messages (both must be 0: every acknowledged
message must be seen exactly once by its recipient), and errors.

    python bench/system_load.py --mode poll --users 200 500 1000 --seconds 10
    python bench/system_load.py --mode longpoll --users 1000 5000 --seconds 10
    python bench/system_load.py --mode pollmax --users 200 --seconds 10   # gateway vs bare aiohttp

``pollmax`` is the throughput baseline: browsers only, each in a closed loop of
``GET /api/poll?cursor=<head>`` with no new events, first against the gateway,
then against ``bench/bare_aiohttp.py``.

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
import collections
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _load_worker import worker
from _setup import (
    cpu_seconds,
    machine_cpu,
    make_data_dir_fast,
    rss_kib,
    start_bare_aiohttp,
    start_core,
    start_web_gc_logged,
)

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


def run_point(args, mode: str, n: int, target: str = "gateway") -> dict[str, Any]:
    """One measured point: fresh core + web (or bare server), n users, --seconds."""
    if args.wait_quiet:
        busy = wait_quiet(args.wait_quiet)
        print(f"# machine busy before the point: {busy * 100:.0f}%", flush=True)
    profiles: list[subprocess.Popen] = []
    web_log = None
    with tempfile.TemporaryDirectory(prefix="system-load-") as tmp:
        tokens = make_data_dir_fast(Path(tmp), n)
        names = list(tokens)
        core, core_port = start_core(Path(tmp))
        if target == "bare":
            web, web_port = start_bare_aiohttp()
        else:
            web, web_port, web_log = start_web_gc_logged(core_port, "--idle-timeout", "3600")
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
            for c in conns:
                c.send(("go", None))
            gather(conns, "browsers_ready", 600)
            for c in conns:
                c.send(("go", None))
            gather(conns, "drained", 600)
            setup_s = time.perf_counter() - setup_t0
            t_start = time.perf_counter() + 0.5
            t_end = t_start + args.seconds
            for c in conns:
                c.send(("window", (t_start, t_end, args.drain)))
            time.sleep(max(0.0, t_start - time.perf_counter()))
            pids = {"core": core.pid, "web": web.pid, "gen": [p.pid for p in procs]}
            cpu0 = {k: cpu_seconds(v) for k, v in pids.items() if k != "gen"}
            gen0 = sum(cpu_seconds(p) for p in pids["gen"])
            m0 = machine_cpu()
            log_mark = len(web_log.read_text()) if web_log else 0
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
                                str(pids[role]),
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
            cpu1 = {k: cpu_seconds(v) for k, v in pids.items() if k != "gen"}
            gen1 = sum(cpu_seconds(p) for p in pids["gen"])
            m1 = machine_cpu()
            rss = {"core": rss_kib(core.pid), "web": rss_kib(web.pid)}
            gc_lines = web_log.read_text()[log_mark:].splitlines() if web_log else []
            gc_ms = [float(x.split("pause ")[1].split()[0]) for x in gc_lines if "gc gen" in x]
            results = gather(conns, "result", args.drain + 120)
        finally:
            for p in profiles:
                p.wait(60)
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
            for proc in (web, core):
                proc.terminate()
            t_stop = time.perf_counter()
            for name, proc in (("web", web), ("core", core)):
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    print(f"# {name} still running 60 s after SIGTERM: killed", flush=True)
                    proc.kill()
                    proc.wait(10)
            print(f"# web + core stopped in {time.perf_counter() - t_stop:.1f} s", flush=True)

    acked: dict[int, str] = {}
    seen: collections.Counter[int] = collections.Counter()
    lat: dict[str, list[float]] = collections.defaultdict(list)
    req: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    sent = resets = 0
    for r in results:
        acked.update(r["acked"])
        seen.update(r["seen"])
        for k, v in r["lat"].items():
            lat[k].extend(v)
        req.update(r["req"])
        errors.update(r["errors"])
        sent += r["sent"]
        resets += r["resets"]
    all_lat = sorted(x for v in lat.values() for x in v)
    secs = args.seconds
    lost = sum(1 for mid in acked if seen.get(mid, 0) == 0)
    dupes = sum(c - 1 for c in seen.values() if c > 1)
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
        "p50": pct(all_lat, 0.5),
        "p99": pct(all_lat, 0.99),
        "max": all_lat[-1] * 1000 if all_lat else float("nan"),
        "p50_by": {k: pct(sorted(v), 0.5) for k, v in sorted(lat.items())},
        "p99_by": {k: pct(sorted(v), 0.99) for k, v in sorted(lat.items())},
        "http_s": (req["http_poll"] + req["http_send"]) / secs,
        "http_poll_s": req["http_poll"] / secs,
        "core_req_s": (req["core_poll"] + req["core_send"]) / secs,
        "lost": lost,
        "dupes": dupes,
        "unacked_seen": sum(1 for mid in seen if mid not in acked),
        "resets": resets,
        "errors": dict(errors),
        "cpu_core": (cpu1["core"] - cpu0["core"]) / secs,
        "cpu_web": (cpu1["web"] - cpu0["web"]) / secs,
        "cpu_gen": (gen1 - gen0) / secs,
        "machine_busy": (m1[0] - m0[0]) / max(1, m1[1] - m0[1]),
        "web_gc_pauses": len(gc_ms),
        "web_gc_max_ms": max(gc_ms, default=0.0),
        "rss_core_mib": rss["core"] / 1024,
        # CPU used on this machine by processes other than ours (other work sharing it)
        "cpu_other": (m1[0] - m0[0]) / max(1, m1[1] - m0[1]) * (os.cpu_count() or 1)
        - ((cpu1["core"] - cpu0["core"]) + (cpu1["web"] - cpu0["web"]) + (gen1 - gen0)) / secs,
        "rss_web_mib": rss["web"] / 1024,
    }


def line(r: dict[str, Any]) -> str:
    by = " ".join(f"{k}:{v:.0f}" for k, v in r["p50_by"].items())
    err = sum(r["errors"].values())
    return (
        f"{r['mode']:8} {r['target']:7} n={r['users']:5} msg/s {r['msgs_s']:6.0f} "
        f"p50/p99/max {r['p50']:6.1f}/{r['p99']:7.1f}/{r['max']:7.1f} ms  "
        f"HTTP {r['http_s']:6.0f}/s core {r['core_req_s']:6.0f}/s  "
        f"cpu core {r['cpu_core']:.2f} web {r['cpu_web']:.2f} gen {r['cpu_gen']:.2f} "
        f"(machine {r['machine_busy'] * 100:.0f}%, others {r['cpu_other']:.2f})  "
        f"rss core {r['rss_core_mib']:.0f} "
        f"web {r['rss_web_mib']:.0f} MiB  lost {r['lost']} dup {r['dupes']} "
        f"resets {r['resets']} err {err}  web GC pauses>=20ms {r['web_gc_pauses']} "
        f"(max {r['web_gc_max_ms']:.0f} ms)  p50 by kind {by}  setup {r['setup_s']:.0f}s"
    )


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| mode | target | users (D+B) | msg/s | p50 / p99 / max ms | p50 D→D, B→B ms | "
        "HTTP req/s | core req/s (desktop) | CPU core / web / gen / other (cores) | machine busy | "
        "RSS core / web MiB | lost | dup | resets | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dd = r["p50_by"].get("DD", float("nan"))
        bb = r["p50_by"].get("BB", float("nan"))
        out.append(
            f"| {r['mode']} | {r['target']} | {r['users']} ({r['desktops']}+{r['browsers']}) | "
            f"{r['msgs_s']:.0f} | {r['p50']:.1f} / {r['p99']:.1f} / {r['max']:.1f} | "
            f"{dd:.1f}, {bb:.1f} | {r['http_s']:.0f} | {r['core_req_s']:.0f} | "
            f"{r['cpu_core']:.2f} / {r['cpu_web']:.2f} / {r['cpu_gen']:.2f} / "
            f"{r['cpu_other']:.2f} | "
            f"{r['machine_busy'] * 100:.0f}% | {r['rss_core_mib']:.0f} / {r['rss_web_mib']:.0f} | "
            f"{r['lost']} | {r['dupes']} | {r['resets']} | {sum(r['errors'].values())} |"
        )
    return "\n".join(out)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["poll", "longpoll", "pollmax"], default="poll")
    ap.add_argument("--users", type=int, nargs="+", default=[200, 500, 1000])
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
    rows = []
    for n in args.users:
        targets = ["gateway", "bare"] if (args.mode == "pollmax" and args.bare) else ["gateway"]
        for target in targets:
            r = run_point(args, args.mode, n, target)
            rows.append(r)
            print(line(r), flush=True)
            if r["errors"]:
                for k, v in sorted(r["errors"].items(), key=lambda kv: -kv[1])[:8]:
                    print(f"    error x{v}: {k}", flush=True)
    print()
    print(table(rows))
    if args.mode == "pollmax" and args.bare:
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
