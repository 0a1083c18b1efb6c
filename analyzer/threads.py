"""``--threads N``: one thread count for torch, numba and onnxruntime, and a warning when
the machine is already busy (oversubscription).

The default is the number of CPUs this process may run on (``os.sched_getaffinity``: a
container's or ``taskset``'s limit, not the machine's core count). numba's kernels take
torch's count (:mod:`glam.engine.kernels`) and onnxruntime sessions are created with it
(:mod:`glam.importers.onnx.backend`), so setting torch's sets all three.

On a loaded machine more threads can be much slower: a 2-thread torch forward of the
``rcan_small`` fixture measured 1.40 s against 0.045 s with one thread on a 2-core machine
whose cores other processes kept busy (the threads wait for each other at every operator).
:func:`oversubscription` says so when the 1-minute load average already fills the CPUs.
"""

from __future__ import annotations

import os

from glam.errors import UserInputError

__all__ = ["affinity_cpus", "apply_threads", "oversubscription"]


def affinity_cpus() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def oversubscription(threads: int, *, load: float | None = None, cpus: int | None = None) -> str | None:
    """A warning when ``threads`` compute threads would share busy CPUs, else ``None``.

    Parameters
    ----------
    threads:
        The thread count about to be used.
    load:
        The 1-minute load average (default ``os.getloadavg()[0]``).
    cpus:
        CPUs available (default :func:`affinity_cpus`).
    """
    cpus = affinity_cpus() if cpus is None else cpus
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    if threads > cpus:
        return (
            f"--threads {threads} is more than the {cpus} CPU(s) this process may use; "
            f"threads will wait for each other (pass --threads {cpus} or fewer)"
        )
    if threads > 1 and load >= cpus:
        return (
            f"the machine is busy (1-minute load average {load:.1f} on {cpus} CPU(s)); "
            f"{threads} threads may run far slower than one (measured: 1.40 s against "
            "0.045 s for one forward pass of rcan_small on a loaded 2-core machine); "
            "pass --threads 1 if the analysis is slow"
        )
    return None


def apply_threads(threads: int | None) -> int:
    """Use ``threads`` (default: :func:`affinity_cpus`) threads in torch, numba and
    onnxruntime; returns the count.

    Raises
    ------
    UserInputError
        When ``threads`` is below 1.
    """
    if threads is not None and threads < 1:
        raise UserInputError(f"--threads {threads} must be at least 1 (default: the CPUs this process may use)")
    n = affinity_cpus() if threads is None else int(threads)
    import torch

    torch.set_num_threads(n)
    return n
