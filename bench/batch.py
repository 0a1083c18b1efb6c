"""Throughput of ``glam batch`` against the serial loop: ``python -m bench --batch``.

The serial loop is what users ran before: one ``glam analyze MODEL images/`` process per
model, one after the other. ``glam batch --models ... --images images/`` runs the same
tasks on a local Ray cluster it starts itself, with ``--workers 1`` and ``2`` (or
``--batch-workers``). Each command runs as its own process and is timed end to end
(interpreter start, Ray start, model imports), since that is what a user waits for; the
summary gives tasks per second and the ratio batch / serial. Every batch archive is checked
against the serial one: the final maps of every run must be equal bit for bit.

With ``--device cuda`` (or ``auto`` where CUDA is present) the same commands run on the
GPU: ``glam batch`` then gives each worker ``--gpu-fraction`` of a GPU, so ``--batch-workers
1,2,4`` measures several analyses sharing one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_MODELS = ("carn", "rrdbnet", "rcan", "rnan", "san")


def make_images(directory: Path, n: int, size: int) -> list[Path]:
    """``n`` LR images, ``size`` x ``size`` crops of the bundled LR fixture images."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    srcs = sorted((ROOT / "fixtures" / "images").glob("*_lr_x4.png"))
    out = []
    for k in range(n):
        with Image.open(srcs[k % len(srcs)]) as im:
            w, h = im.size
            o = (k // len(srcs)) * 4 % max(1, min(w, h) - size)
            p = directory / f"img{k:02d}.png"
            im.convert("RGB").crop((o, o, o + size, o + size)).save(p)
            out.append(p)
    return out


def _glam(*args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "glam", *args], env=env,
                       capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"glam {' '.join(args)} exited {r.returncode}: {r.stderr[-2000:]}")
    return seconds


def _same_maps(a: Path, b: Path) -> bool:
    from glam.archive.hdf5 import open_archive

    with open_archive(a) as x, open_archive(b) as y:
        if sorted(x.runs()) != sorted(y.runs()):
            return False
        for name in x.runs():
            ra, rb = x.run(name), y.run(name)
            for fam in ("local", "global_"):
                for k, v in getattr(ra, fam).items():
                    if not np.array_equal(v, getattr(rb, fam)[k]):
                        return False
    return True


def run(args: argparse.Namespace) -> dict:
    """Time the serial loop and ``glam batch`` with each worker count; print and return."""
    models = [str(ROOT / "fixtures" / "models" / f"{m}_small_x2.{args.batch_kind}")
              for m in args.batch_models.split(",")]
    workers = [int(w) for w in args.batch_workers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="glam-bench-batch-"))
    try:
        make_images(tmp / "images", args.batch_images, args.batch_size)
        n_tasks = len(models) * args.batch_images
        dev = ["--device", args.device]
        serial = tmp / "serial.h5"
        t_serial = sum(_glam("analyze", m, str(tmp / "images"), "-o", str(serial), *dev)
                       for m in models)
        rows = [{"mode": "serial loop", "workers": 1, "seconds": t_serial}]
        for w in workers:
            zoo = tmp / f"zoo{w}.h5"
            t = _glam("batch", "--models", ",".join(models), "--images", str(tmp / "images"),
                      "-o", str(zoo), "--workers", str(w), *dev)
            rows.append({"mode": "glam batch", "workers": w, "seconds": t,
                         "identical": _same_maps(zoo, serial)})
        print(f"glam batch vs serial: {len(models)} models x {args.batch_images} images "
              f"({args.batch_size}x{args.batch_size} LR) = {n_tasks} tasks, device "
              f"{args.device}, {os.cpu_count()} CPUs", flush=True)
        print(f"{'mode':12} {'workers':>7} {'seconds':>8} {'tasks/s':>8} {'vs serial':>9} "
              f"{'identical':>9}")
        for r in rows:
            r["tasks_per_second"] = n_tasks / r["seconds"]
            r["speedup"] = t_serial / r["seconds"]
            same = r.get("identical")
            print(f"{r['mode']:12} {r['workers']:7d} {r['seconds']:8.1f} "
                  f"{r['tasks_per_second']:8.3f} {r['speedup']:9.2f} "
                  f"{'-' if same is None else ('yes' if same else 'NO'):>9}", flush=True)
        result = {"tasks": n_tasks, "models": models, "images": args.batch_images,
                  "size": args.batch_size, "device": args.device, "rows": rows}
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--batch`` case's options of ``python -m bench``."""
    p.add_argument("--batch", action="store_true",
                   help="measure glam batch (Ray) against the serial glam analyze loop instead")
    p.add_argument("--batch-models", default=",".join(FIXTURE_MODELS),
                   help="fixture architectures of the batch case")
    p.add_argument("--batch-kind", default="legacy.onnx",
                   help="fixture export of the batch case (legacy.onnx, script.pt, pt2, ...)")
    p.add_argument("--batch-images", type=int, default=8, help="images of the batch case")
    p.add_argument("--batch-size", type=int, default=32, help="LR image size of the batch case")
    p.add_argument("--batch-workers", default="1,2", help="worker counts of the batch case")
