"""The demo beside a busy neighbour: ``python -m bench --busy`` (issue 23).

A neighbour process spins on one CPU of this process's affinity set for the whole run.
Then ``glam demo``'s analysis (the bundled ``rcan_small_x2`` on the bundled astronaut, LAM
fold 50, after the demo's untimed warm-up) runs in a fresh process, once with the thread
count glam now chooses by default (the CPUs that are free: :func:`glam.threads.choose_threads`)
and once with the old default (every CPU of the affinity set), and the GL-AM and LAM times
the demo reports are printed side by side with LAM / GL-AM. The target: GL-AM at least 3x
faster than LAM at the default thread count with the neighbour running (not a timed test:
a ratio measured in one process).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

#: GL-AM must stay at least this many times faster than LAM with the neighbour running.
TARGET = 3.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--busy`` and its options on the benchmark's parser."""
    p.add_argument("--busy", action="store_true",
                   help="the demo's GL-AM and LAM beside a neighbour spinning on one CPU, at "
                        "the default thread count and at the old one (all CPUs)")
    p.add_argument("--busy-repeats", type=int, default=1,
                   help="demo runs per thread setting (--busy)")
    p.add_argument("--busy-worker", choices=("default", "all"), help=argparse.SUPPRESS)


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def neighbour() -> Iterator[int]:
    """A process spinning on the first CPU of this process's affinity set while the block
    runs; yields that CPU."""
    cpu = sorted(os.sched_getaffinity(0))[0]
    spinner = mp.get_context("fork").Process(target=_spin, daemon=True)
    spinner.start()
    try:
        os.sched_setaffinity(spinner.pid, {cpu})
        time.sleep(1.0)  # the neighbour is running before anything looks at the load
        yield cpu
    finally:
        spinner.kill()
        spinner.join()


def worker(mode: str) -> dict:
    """One demo analysis in this process: ``default`` threads or ``all`` (the affinity set)."""
    from glam.runs import run_demo
    from glam.threads import apply_threads, choose_threads

    choice = choose_threads(None)
    n = apply_threads(None if mode == "default" else choice.budget.affinity)
    with tempfile.TemporaryDirectory() as tmp:
        res = run_demo(Path(tmp) / "demo", threads=n)
    m = res.summary.metrics
    return {"mode": mode, "threads": n, "budget": choice.describe(),
            "glam_seconds": m["seconds_glam"], "lam_seconds": m["seconds_lam"],
            "lam_over_glam": m["seconds_lam"] / m["seconds_glam"],
            "load": os.getloadavg()[0]}


def run(args: argparse.Namespace) -> list[dict]:
    """Start the neighbour, time both settings in fresh processes, print and return rows."""
    cpus = sorted(os.sched_getaffinity(0))
    spinner = mp.get_context("fork").Process(target=_spin, daemon=True)
    spinner.start()
    rows: list[dict] = []
    try:
        os.sched_setaffinity(spinner.pid, {cpus[0]})
        time.sleep(1.0)  # the neighbour is running before glam looks
        print(f"busy neighbour on CPU {cpus[0]} of {len(cpus)}; load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        print(f"{'threads':18} {'n':>2} {'GL-AM s':>8} {'LAM s':>8} {'LAM/GL-AM':>10} {'load':>5}",
              flush=True)
        root = Path(__file__).resolve().parent.parent
        for _ in range(max(1, args.busy_repeats)):
            for mode in ("default", "all"):
                out = subprocess.run(
                    [sys.executable, "-m", "bench", "--busy-worker", mode], cwd=root,
                    capture_output=True, text=True, timeout=1800)
                if out.returncode != 0:
                    rows.append({"mode": mode, "error": out.stderr.strip().splitlines()[-1:]})
                    print(f"{mode}: failed: {out.stderr[-500:]}", flush=True)
                    continue
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                label = "default (free CPUs)" if mode == "default" else "old (all CPUs)"
                print(f"{label:18} {row['threads']:2d} {row['glam_seconds']:8.2f} "
                      f"{row['lam_seconds']:8.2f} {row['lam_over_glam']:10.1f} "
                      f"{row['load']:5.1f}", flush=True)
    finally:
        spinner.kill()
        spinner.join()
    ok = [r for r in rows if r.get("mode") == "default" and "error" not in r]
    if ok:
        worst = min(r["lam_over_glam"] for r in ok)
        verdict = "met" if worst >= TARGET else "MISSED"
        print(f"target GL-AM >= {TARGET:g}x faster than LAM at the default threads: {verdict} "
              f"(worst {worst:.1f}x)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"busy": rows}, indent=2))
    return rows
