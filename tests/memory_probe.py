"""Measure the peak resident-set growth of ``glam.analyze`` next to glam's estimate (run as
a script in a fresh process by tests/test_memory.py; also by hand to recalibrate
glam.memory's constants).

    python tests/memory_probe.py MODEL SIZE[,SIZE...] [lam] [tensors]

One JSON line per size: ``{"size", "measured", "estimate", "ratio"}`` (bytes). The process
first analyses a tiny input (numba's kernels and torch's first-call allocations are then
loaded, as they are when a command reaches its memory check after the import), gives freed
memory back to the OS (``malloc_trim``; glam's keep-freed-memory setting is switched off
by the caller through ``GLAM_KEEP_FREED_MEMORY=0`` so that each size starts from the same
footing), resets the kernel's peak counter (``/proc/self/clear_refs``) and reads ``VmHWM``
after the analysis.
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main(argv: list[str]) -> None:
    import glam.importers
    import torch
    from glam.api import analyze
    from glam.memory import FIXED_BYTES, estimate_memory

    path, sizes = argv[0], [int(s) for s in argv[1].split(",")]
    lam, store = "lam" in argv[2:], "tensors" if "tensors" in argv[2:] else "maps"
    torch.set_num_threads(1)
    libc = ctypes.CDLL("libc.so.6")
    model = glam.importers.load(path, input_range=1)
    c = model.conventions.in_channels
    analyze(model, torch.rand(1, c, 12, 12), device="cpu", keep_layers=False, lam=lam,
            lam_fold=2, lam_batch=2)
    for s in sizes:
        x = torch.rand(1, c, s, s, generator=torch.Generator().manual_seed(s))
        # the estimate is made before the analysis, as the commands make it
        est = estimate_memory(model, s, s, lam=lam, lam_batch=8, store=store,
                              parity_forward=False).total - FIXED_BYTES
        libc.malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        before = _status("VmRSS")
        analyze(model, x, device="cpu", keep_layers=False, lam=lam, lam_fold=8, lam_batch=8,
                store=store, on_layer=lambda r: None)
        measured = _status("VmHWM") - before
        print(json.dumps({"size": s, "measured": measured, "estimate": est,
                          "ratio": est / measured}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
