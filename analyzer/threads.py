"""``--threads N``: one thread count for torch, numba and onnxruntime, by default the CPUs
that are free now (issue 23).

numba's kernels take torch's count (:mod:`glam.engine.kernels`) and onnxruntime sessions
are created with it (:mod:`glam.importers.onnx.backend`), so setting torch's sets all three.

The default is :attr:`glam.machine.CpuBudget.free`: the CPUs this process may run on
(``os.sched_getaffinity``: ``taskset``, a container's cpuset), capped by a cgroup CPU quota
(``docker --cpus``), less the CPUs other processes keep busy (``/proc/stat`` sampled for a
tenth of a second). ``GLAM_THREADS=N`` in the environment sets the default instead (a CI
job that wants the same count on every run: LAM's float sums depend on it). More threads than free cores is much slower, not faster: compute
threads wait for each other at every operator, and one of them waits for a busy core. On
this project's 2-core machine with other jobs running, a Set5 folder took 65 s at the old
default (every CPU of the affinity set) against 12 s at ``--threads 1``; the demo's GL-AM
0.11 s became 4.03 s. :func:`oversubscription` still warns when ``--threads`` asks for more
than that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from glam.errors import UserInputError
from glam.machine import CpuBudget, cpu_budget

__all__ = ["ThreadChoice", "affinity_cpus", "apply_threads", "choose_threads", "oversubscription"]


def affinity_cpus() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` elsewhere)."""
    return cpu_budget(sample_seconds=0).affinity


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count and why (the phase log's ``threads`` line)."""

    threads: int
    budget: CpuBudget
    explicit: bool
    source: str = ""

    def describe(self) -> str:
        """``threads 1 (default: the free CPUs; 2 CPU(s) available, 1.0 busy ...)``."""
        why = ("--threads" if self.explicit else self.source or "default: the CPUs free now")
        return f"threads {self.threads} ({why}; {self.budget.describe()})"


def choose_threads(threads: int | None, budget: CpuBudget | None = None) -> ThreadChoice:
    """``threads`` when given, else ``GLAM_THREADS`` when set, else the free CPUs of
    ``budget`` (measured when ``None``).

    Raises
    ------
    UserInputError
        When ``threads`` (or ``GLAM_THREADS``) is below 1.
    """
    if threads is not None and threads < 1:
        raise UserInputError(
            f"--threads {threads} must be at least 1 (default: the CPUs that are free now)"
        )
    env = os.environ.get("GLAM_THREADS", "").strip()
    if threads is None and env:
        if not env.isdigit() or int(env) < 1:
            raise UserInputError(
                f"GLAM_THREADS={env!r} must be a whole number of at least 1 (unset it to use "
                "the CPUs that are free now)"
            )
        return ThreadChoice(int(env), budget or cpu_budget(sample_seconds=0), False,
                            "GLAM_THREADS")
    if budget is None:
        budget = cpu_budget()
    n = budget.free if threads is None else int(threads)
    return ThreadChoice(n, budget, threads is not None)


def oversubscription(threads: int, *, load: float | None = None, cpus: int | None = None,
                     budget: CpuBudget | None = None) -> str | None:
    """A warning when ``threads`` compute threads would share busy CPUs, else ``None``.

    Parameters
    ----------
    threads:
        The thread count about to be used.
    load:
        The 1-minute load average (default: ``budget``'s, else ``os.getloadavg()[0]``).
    cpus:
        CPUs available (default: ``budget``'s, else :func:`affinity_cpus`).
    budget:
        A measured :class:`~glam.machine.CpuBudget` (its free CPUs are used when known).
    """
    if budget is None:
        budget = cpu_budget(sample_seconds=0)
    cpus = budget.available if cpus is None else cpus
    load = budget.load if load is None else load
    if threads > cpus:
        return (
            f"--threads {threads} is more than the {cpus} CPU(s) this process may use; "
            f"threads will wait for each other (pass --threads {cpus} or fewer)"
        )
    if threads > 1 and budget.busy is not None and threads > budget.free:
        return (
            f"--threads {threads} is more than the {budget.free} CPU(s) free now "
            f"({budget.describe()}); threads will wait for busy cores (measured: 1.40 s "
            "against 0.045 s for one forward pass of rcan_small on a loaded 2-core machine); "
            "leave --threads out to use the free CPUs"
        )
    if threads > 1 and budget.busy is None and load is not None and load >= cpus:
        return (
            f"the machine is busy (1-minute load average {load:.1f} on {cpus} CPU(s)); "
            f"{threads} threads may run far slower than one (measured: 1.40 s against "
            "0.045 s for one forward pass of rcan_small on a loaded 2-core machine); "
            "pass --threads 1 if the analysis is slow"
        )
    return None


def apply_threads(threads: int | None, budget: CpuBudget | None = None) -> int:
    """Use ``threads`` (default: the free CPUs, :func:`choose_threads`) threads in torch,
    numba and onnxruntime; returns the count.

    Raises
    ------
    UserInputError
        When ``threads`` is below 1.
    """
    n = choose_threads(threads, budget).threads
    import torch

    torch.set_num_threads(n)
    return n
