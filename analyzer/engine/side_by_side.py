"""GL-AM's local and global pass side by side, each with its share of the CPU threads.

The two passes of :func:`glam.engine.glam.compute_glam` read the same forward graph and
write nothing the other reads. Each is a chain of small autograd calls and per-layer
kernels, which scale poorly across intra-op threads (paper RCAN: 1,232 engine calls; a
2-thread backward is only about 1.5x a 1-thread one); side by side, one per core, they
do not wait at each other's barriers. Measured on paper RCAN on a quiet 2-core machine:
GL-AM / fwd+bwd 1.74 one after the other, 1.54 side by side (``docs/performance.md``,
run 10). The global pass's layers come from one queue, and the local pass's thread takes
the rest of them once its own pass is done (:mod:`glam.engine.global_pass`): the local
pass is the shorter one where its tail runs on the ROI's crop (:mod:`glam.engine.local_tail`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from glam.engine import kernels

T = TypeVar("T")


def passes_side_by_side(device: torch.device, mode: str, store_grads: bool) -> bool:
    """Whether the local and the global pass run side by side (:func:`both_passes`): on
    CPU with at least two threads, the fused per-layer kernels (their threading layer safe
    for concurrent calls), records not streamed with raw tensors (``store="tensors"`` keeps
    every gradient until its record is written, which the streaming global pass avoids),
    and not switched off by ``GLAM_SIDE_BY_SIDE=0``."""
    if device.type != "cpu" or mode != "per-layer" or store_grads:
        return False
    if os.environ.get("GLAM_SIDE_BY_SIDE", "1") == "0" or torch.get_num_threads() < 2:
        return False
    return kernels.safe_for_concurrent_calls()


def both_passes(
    local: Callable[[], T], global_: Callable[[], None], help_global: Callable[[], None] | None = None
) -> T:
    """Run the local and the global pass at once, splitting this thread's CPU threads.

    The two passes read the same forward graph and write nothing the other reads, so they
    need no ordering: the global pass runs in a second thread while this one runs the local
    pass. Each pass is a chain of small autograd calls and per-layer kernels; side by side,
    each with its share of the threads, they keep the cores busy through the other's
    synchronisation points, where one pass after the other with all threads waits at every
    operator's barrier (see the module's docstring). Results are those of the same passes
    run one after the other at the same per-pass thread counts.

    ``help_global``, when given, runs here once the local pass is done, at the global
    pass's thread count (so that a layer's values do not depend on which thread computed
    it): it takes global layers that the other thread has not started
    (:func:`glam.engine.global_pass.help_global_pass`).
    """
    threads = torch.get_num_threads()
    mine, theirs = threads - threads // 2, threads // 2

    def in_thread() -> None:
        torch.set_num_threads(theirs)  # per thread: OpenMP's thread count is thread-local
        global_()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="glam-global") as pool:
        done = pool.submit(in_thread)
        torch.set_num_threads(mine)
        try:
            result = local()
            if help_global is not None:
                torch.set_num_threads(theirs)
                help_global()
        finally:
            torch.set_num_threads(threads)
            # a failure in the local pass still waits for the global one before raising
            error = done.exception()
    if error is not None:
        raise error
    return result
